(function () {
  "use strict";
  var U = window.BinderyUrlpath;
  var statusEl = document.getElementById("status");
  var phaseEl = document.getElementById("phase");
  var failureEl = document.getElementById("failure");
  var logEl = document.getElementById("log");
  var repoEl = document.getElementById("repo");

  // provider/spec exactly as in our own address (still percent-encoded).
  var rest = location.pathname.replace(/^.*?\/v2\//, "");
  var params = new URLSearchParams(location.search);
  var urlpath = U.requestedUrlpath(params);
  var parts = rest.split("/");
  try {
    repoEl.textContent = decodeURIComponent(parts.length > 2 ? parts.slice(1, -1).join("/") : parts[1] || rest);
  } catch (e) {
    repoEl.textContent = rest;
  }

  var done = false;
  var buildUrl = "/build/" + rest + (params.get("build_only") === "true" ? "?build_only=true" : "");
  var source = new EventSource(buildUrl);

  function setPhase(phase) {
    phaseEl.textContent = phase;
    phaseEl.setAttribute("data-phase", phase);
    document.title = phase + " · Bindery";
  }

  function appendLog(text) {
    var atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
    logEl.appendChild(document.createTextNode(text));
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
  }

  function fail(message) {
    done = true;
    source.close();
    setPhase("failed");
    statusEl.textContent = "The launch failed.";
    failureEl.textContent = message;
    failureEl.hidden = false;
  }

  source.onmessage = function (event) {
    var data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (data.phase) setPhase(data.phase);
    if (data.message) appendLog(data.message);
    if (data.phase === "failed") {
      fail(data.message || "The launch failed.");
    } else if (data.phase === "ready") {
      done = true;
      source.close();
      if (!data.url || !data.token) {
        statusEl.textContent = "Done: the image is built.";
        return;
      }
      var target = U.redirectTarget(data.url, urlpath, data.token, location.href);
      if (!target) {
        fail("Refusing to open a location outside the session.");
        return;
      }
      statusEl.textContent = "Ready: opening your session...";
      location.replace(target);
    } else {
      statusEl.textContent = "Working: " + data.phase + ".";
    }
  };

  source.onerror = function () {
    if (done) return;
    if (source.readyState === EventSource.CLOSED) {
      fail("Lost the connection to Bindery. Reload the page to try again.");
    } else {
      statusEl.textContent = "Connection lost, reconnecting (the launch goes on)...";
    }
  };
})();
