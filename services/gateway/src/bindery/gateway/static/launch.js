// The launch page: follows /build/<provider>/<spec> over a websocket (EventSource if websockets
// fail), shows phases as steps and a progress bar, the build log in a terminal (xterm.js), the
// state in the favicon and title, a failure a person can act on, then opens the session.
// A dropped connection resumes the same launch (launch_id + after + the resume secret only this
// page was given); a reload replays it whole. The session opens through its one-time handoff
// code, so no token ever sits in the address bar or the history.
(function () {
  "use strict";
  var U = window.BinderyUrlpath;
  var $ = function (id) { return document.getElementById(id); };

  // Where each phase sits: its step in the list and how far along the bar it is.
  var PHASES = {
    waiting: [0, 3], fetching: [1, 15], building: [2, 35], pushing: [2, 60], built: [3, 70],
    pulling: [3, 75], launching: [4, 85], ready: [5, 100]
  };
  // How long a ready launch that showed warnings waits before opening the session.
  var WARNING_PAUSE_MS = 5000;
  var REASONS = {
    invalid_spec: ["This link does not name a repository",
      "Check the repository URL and the ref in the link."],
    banned: ["This repository cannot be launched here",
      "The operators of this Bindery do not allow it. Run it elsewhere, or ask them why."],
    ref_not_found: ["Branch, tag or commit not found",
      "Check the ref in the link: it must exist in the repository (names are case-sensitive)."],
    repo_unreachable: ["The repository could not be reached",
      "Check the URL, and that the repository is public."],
    clone_failed: ["The repository could not be fetched",
      "Check that the repository can be cloned without a password, then try again."],
    step_failed: ["The build failed",
      "A step of building the environment failed: the log's last lines say which. Fix the " +
      "repository's configuration (requirements.txt, environment.yml, apt.txt, postBuild...) " +
      "and launch again."],
    oom: ["Out of memory",
      "The build or the session used more memory than it may. Install or load less, or split " +
      "the work."],
    timeout: ["The build took too long",
      "Building this environment exceeded the time limit: pin fewer or lighter dependencies."],
    too_large: ["The repository or image is too large",
      "Remove large files from the repository (data belongs elsewhere) and launch again."],
    no_capacity: ["No room right now",
      "Every session is in use. Try again in a few minutes."],
    start_failed: ["The session did not start",
      "The environment was built but Jupyter did not start in it: check the repository's " +
      "`start` script, then try again."],
    abandoned: ["The launch was cancelled",
      "Nobody watched it for a while, so its session was not started. Launch it again."],
    rate_limited: ["Too many launches",
      "Your network started too many launches in a short time: wait a minute, then try again."],
    too_many_launches: ["You have too many sessions running",
      "Each visitor may run only a few sessions at once here. Shut down one you no longer use " +
      "(File > Shut Down in JupyterLab), then launch again."],
    internal: ["Something went wrong in Bindery",
      "This is not your repository's fault. Try again in a minute."]
  };

  var rest = location.pathname.replace(/^.*?\/v2\//, "");
  var params = new URLSearchParams(location.search);
  var urlpath = U.requestedUrlpath(params);
  var buildOnly = params.get("build_only") === "true";
  var storageKey = "bindery-launch:" + location.pathname + location.search;

  var parts = rest.split("/");
  try {
    $("repo").textContent = decodeURIComponent(
      parts[0] === "git" || parts.length < 3 ? parts.slice(1, -1).join("/") || rest
        : parts.slice(1).join("/"));
  } catch (e) {
    $("repo").textContent = rest;
  }

  // --- the log -------------------------------------------------------------------------
  var logText = "";
  var write = (function () {
    var host = $("log");
    if (window.Terminal) {
      var term = new window.Terminal({
        convertEol: true, disableStdin: true, scrollback: 20000, fontSize: 13,
        screenReaderMode: true, cursorBlink: false,
        theme: { background: "#111111", foreground: "#eeeeee" }
      });
      var fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
      if (fit) term.loadAddon(fit);
      term.open(host);
      var resize = function () { if (fit) { try { fit.fit(); } catch (e) { /* hidden */ } } };
      resize();
      window.addEventListener("resize", resize);
      $("log-details").addEventListener("toggle", resize);
      window.binderyTerminal = term;
      return function (text) { term.write(text); };
    }
    var pre = document.createElement("pre");
    pre.className = "log-fallback";
    host.appendChild(pre);
    return function (text) { pre.appendChild(document.createTextNode(text)); };
  })();

  function appendLog(text) {
    logText += text;
    if (logText.length > 2000000) logText = logText.slice(-1000000);
    write(text);
  }

  // --- the state -----------------------------------------------------------------------
  function setFavicon(state) {
    $("favicon").setAttribute("href", "/static/favicon-" + state + ".svg");
  }

  function setPhase(phase) {
    var where = PHASES[phase];
    document.title = phase + " · Bindery";
    document.body.setAttribute("data-phase", phase);
    if (!where) return;
    var bar = $("progress");
    if (where[1] > bar.value) {
      bar.value = where[1];
      bar.textContent = where[1] + "%";
    }
    var steps = $("steps").children;
    for (var i = 0; i < steps.length; i++) {
      var state = i < where[0] || phase === "ready" ? "done" : i === where[0] ? "current" : "todo";
      if (phase === "built" && i === 2) state = "done";
      steps[i].setAttribute("data-state", state);
      if (state === "current") steps[i].setAttribute("aria-current", "step");
      else steps[i].removeAttribute("aria-current");
    }
  }

  function lastLines(text, count) {
    var lines = text.replace(/\s+$/, "").split("\n");
    return lines.slice(-count).join("\n");
  }

  var done = false;

  function fail(reason, message) {
    done = true;
    stop();
    sessionStorage.removeItem(storageKey);
    setFavicon("failed");
    document.title = "failed · Bindery";
    document.body.setAttribute("data-phase", "failed");
    var known = REASONS[reason] || REASONS.internal;
    $("status").textContent = "The launch failed: " + known[0].toLowerCase() + ".";
    $("failure-title").textContent = known[0];
    $("failure-advice").textContent = known[1];
    $("failure-message").textContent = message || "";
    var tail = lastLines(logText, 15);
    if (tail && tail.indexOf(message || "\u0000") === -1) {
      $("failure-log").textContent = tail;
      $("failure-log-block").hidden = false;
    }
    $("retry").setAttribute("href", location.pathname + location.search);
    $("failure").hidden = false;
  }

  function ready(data) {
    done = true;
    stop();
    sessionStorage.removeItem(storageKey);
    setPhase("ready");
    setFavicon("ready");
    if (!data.url) {
      $("status").textContent = "Done: the image is built" +
        (data.imageName ? " (" + data.imageName + ")" : "") + ".";
      return;
    }
    if (!data.handoff) {
      $("status").textContent = "The session is ready, but only the browser tab that started " +
        "this launch can open it.";
      return;
    }
    var target = U.handoffTarget(data.url, urlpath, data.handoff, location.href);
    if (!target) {
      fail("internal", "Refusing to open a location outside the session.");
      return;
    }
    if ($("warnings").hidden) {
      $("status").textContent = "Ready: opening your session...";
      location.replace(target);
      return;
    }
    // Leaving at once would take the warnings away unread; the handoff code lasts 60 s.
    $("status").textContent = "Ready: opening your session in a few seconds (see the warning).";
    setTimeout(function () { location.replace(target); }, WARNING_PAUSE_MS);
  }

  function status(data) {
    if (data.stalled) {
      // A stage nobody runs right now (the gateway's note): the person sees why nothing moves,
      // until the launch's next step replaces it.
      $("status").textContent = data.message.trim();
    } else if (data.phase === "waiting" && data.queue_limit === "starting") {
      // It has its place: only the machine's other starts come first.
      $("status").textContent = "Starting soon: position " + data.queue_position +
        " in line on its machine.";
    } else if (data.phase === "waiting" && data.queue_position) {
      $("status").textContent = "Waiting for a free slot: position " + data.queue_position +
        " in the queue.";
    } else if (data.phase === "pulling") {
      $("status").textContent = "Copying the environment to the machine that runs it...";
    } else {
      $("status").textContent = "Working: " + data.phase + ".";
    }
  }

  // The event id is `<launch id>:<n>[:<resume secret>]`; the secret is kept for reloads.
  var lastId = null;
  var saved = (sessionStorage.getItem(storageKey) || "").split(":");
  var launchId = saved[0] || null, resumeSecret = saved[1] || "";

  function handle(data) {
    if (data.id) {
      lastId = data.id;
      var id = data.id.split(":");
      if (id[0] !== launchId || (id[2] || "") !== resumeSecret) {
        launchId = id[0];
        resumeSecret = id[2] || "";
        sessionStorage.setItem(storageKey, launchId + ":" + resumeSecret);
      }
    }
    if (data.message && data.phase !== "failed" && data.phase !== "ready") appendLog(data.message);
    if (data.warning) {
      // Something of the repository was not built as it asks (e.g. another Python): it must
      // not scroll away with the log.
      var item = document.createElement("li");
      item.textContent = data.message.trim();
      $("warnings").appendChild(item);
      $("warnings").hidden = false;
    }
    if (data.phase === "failed") {
      fail(data.reason, data.message);
    } else if (data.phase === "ready") {
      if (data.message) appendLog(data.message);
      ready(data);
    } else if (data.phase) {
      setPhase(data.phase);
      status(data);
    }
  }

  // --- the connection ------------------------------------------------------------------
  var socket = null, source = null, retries = 0, received = false;

  function stop() {
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
    if (source) { source.close(); source = null; }
  }

  function query() {
    var q = new URLSearchParams();
    if (buildOnly) q.set("build_only", "true");
    if (launchId) {
      q.set("launch_id", launchId);
      q.set("after", lastId ? lastId.split(":")[1] : "-1");
      if (resumeSecret) q.set("resume", resumeSecret);
    }
    var s = q.toString();
    return s ? "?" + s : "";
  }

  function reconnect() {
    if (done) return;
    retries += 1;
    $("status").textContent = "Connection lost, reconnecting (the launch goes on)...";
    setTimeout(connect, Math.min(10000, 500 * Math.pow(2, retries)));
  }

  function connectSocket() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/build/" + rest + query());
    socket.onmessage = function (event) {
      received = true;
      retries = 0;
      try { handle(JSON.parse(event.data)); } catch (e) { /* not ours */ }
    };
    socket.onclose = function () {
      socket = null;
      if (done) return;
      if (!received && retries >= 1) {
        useEventSource = true; // websockets blocked on the way: use the event stream
      }
      reconnect();
    };
  }

  function connectEventSource() {
    source = new EventSource("/build/" + rest + query());
    source.onmessage = function (event) {
      received = true;
      retries = 0;
      var data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      data.id = event.lastEventId || data.id;
      handle(data);
    };
    source.onerror = function () {
      if (done) return;
      source.close();
      source = null;
      reconnect();
    };
  }

  var useEventSource = !window.WebSocket;
  function connect() {
    if (done) return;
    if (useEventSource) connectEventSource(); else connectSocket();
  }

  setPhase("waiting");
  connect();
})();
