// The home page: detects the provider from the pasted URL (patterns from /api/repoproviders,
// the same catalogue the gateway checks launches against), keeps the launch link and the
// Markdown and reStructuredText badges up to date as one types, and copies them.
(function () {
  "use strict";
  var U = window.BinderyUrlpath;
  var form = document.getElementById("launch-form");
  var select = document.getElementById("provider");
  var detectedEl = document.getElementById("detected");
  var out = {
    link: document.getElementById("link"),
    md: document.getElementById("badge-md"),
    rst: document.getElementById("badge-rst")
  };
  // Used until /api/repoproviders answers (or if it cannot): any URL is a git repository.
  var GIT = { id: "git", displayName: "Git repository", repo: { urlEncode: true },
    ref: { enabled: true }, detect: { regexes: [] } };
  var providers = [GIT];

  function compile(regex) {
    try { return new RegExp(regex); } catch (e) { return null; }
  }

  function detect(value) {
    for (var i = 0; i < providers.length; i++) {
      var p = providers[i];
      var regexes = (p.detect && (p.detect.regexes || (p.detect.regex ? [p.detect.regex] : []))) || [];
      for (var j = 0; j < regexes.length; j++) {
        var re = compile(regexes[j]);
        var m = re && re.exec(value);
        if (m && m.groups && m.groups.repo) return { provider: p, groups: m.groups };
      }
    }
    return null;
  }

  function byId(id) {
    for (var i = 0; i < providers.length; i++) if (providers[i].id === id) return providers[i];
    return null;
  }

  function current() {
    var raw = form.elements.repo.value.trim();
    if (!raw) return null;
    var chosen = byId(select.value);
    var found = chosen ? null : detect(raw);
    var provider = chosen || (found ? found.provider : GIT);
    var groups = found ? found.groups : {};
    var repo = found ? groups.repo : raw;
    var refEnabled = !provider.ref || provider.ref.enabled !== false;
    var ref = form.elements.ref.value.trim() || groups.ref || "HEAD";
    var path = form.elements.path.value;
    var kind = form.elements.kind.value;
    if (!path.trim() && groups.filepath) { path = groups.filepath; kind = "file"; }
    else if (!path.trim() && groups.urlpath) { path = "lab/tree/" + groups.urlpath; kind = "url"; }
    return {
      provider: provider,
      detected: !chosen && !!found,
      link: U.launchLink(repo, ref, path, kind, provider.id,
        !!(provider.repo && provider.repo.urlEncode), refEnabled)
    };
  }

  function update() {
    var state = current();
    if (!state) {
      out.link.textContent = "Enter a repository URL.";
      out.md.textContent = out.rst.textContent = "";
      detectedEl.textContent = "";
      return;
    }
    detectedEl.textContent = (state.detected ? "Detected: " : "Provider: ") +
      state.provider.displayName + ".";
    var link = location.origin + state.link;
    var badge = location.origin + "/badge_logo.svg";
    out.link.textContent = link;
    out.md.textContent = "[![Launch in Bindery](" + badge + ")](" + link + ")";
    out.rst.textContent = ".. image:: " + badge + "\n   :target: " + link;
  }

  function copy(text, what) {
    var said = document.getElementById("copied");
    function done() { said.textContent = what + " copied."; }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else {
      fallback(text);
      done();
    }
  }

  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "absolute";
    area.style.left = "-9999px";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
  }

  var buttons = document.querySelectorAll("button.copy");
  for (var i = 0; i < buttons.length; i++) {
    buttons[i].addEventListener("click", function (event) {
      var target = document.getElementById(event.currentTarget.getAttribute("data-copy"));
      if (current()) copy(target.textContent, event.currentTarget.getAttribute("aria-label")
        .replace(/^Copy the /, "The "));
    });
  }

  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", function (event) {
    var state = current();
    if (!state) return;
    event.preventDefault();
    location.assign(state.link);
  });

  fetch("/api/repoproviders").then(function (r) { return r.ok ? r.json() : []; })
    .then(function (list) {
      if (!Array.isArray(list) || !list.length) return;
      providers = list;
      var keep = select.value;
      while (select.options.length > 1) select.remove(1);
      list.forEach(function (p) {
        var option = document.createElement("option");
        option.value = p.id;
        option.textContent = p.displayName;
        select.appendChild(option);
      });
      select.value = keep;
      update();
    }).catch(function () { /* the git fallback stays */ });
  update();
})();
