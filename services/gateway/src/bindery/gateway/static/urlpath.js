// Mirror of bindery/gateway/urlpath.py: keep the two in step.
// The browser goes into a session with its credentials, so only to a relative path inside the
// session: absolute URLs, //host, backslashes, javascript: and .. that leaves it are refused.
(function (root) {
  "use strict";
  var DEFAULT_URLPATH = "lab";
  var HANDOFF_PATH = ".bindery/handoff";
  var MAX_URLPATH_LENGTH = 2048;
  var SCHEME = /^[a-z][a-z0-9+.\-]*:/i;
  var CONTROL = /[\x00-\x1f\x7f]/;

  function unquote(value) {
    try {
      return decodeURIComponent(value);
    } catch (e) {
      // Malformed escapes: decode the ASCII ones, which are all that the checks look at.
      return value.replace(/%([0-7][0-9a-f])/gi, function (_, hex) {
        return String.fromCharCode(parseInt(hex, 16));
      });
    }
  }

  function safeUrlpath(value) {
    if (typeof value !== "string" || value.length > MAX_URLPATH_LENGTH) return null;
    if (value.charAt(0) === "/") value = value.slice(1);
    if (value.trim() === "") return null;
    var forms = [value];
    for (var i = 0; i < 3; i++) {
      var decoded = unquote(forms[forms.length - 1]);
      if (decoded === forms[forms.length - 1]) break;
      forms.push(decoded);
    }
    for (var j = 0; j < forms.length; j++) {
      var form = forms[j];
      if (CONTROL.test(form) || form.indexOf("\\") !== -1 || form !== form.trim()) return null;
      if (form.charAt(0) === "/" || SCHEME.test(form)) return null;
      var segments = form.split("?")[0].split("#")[0].split("/");
      for (var k = 0; k < segments.length; k++) {
        var s = segments[k].trim();
        if (s === ".." || s === ".") return null;
      }
    }
    if (value.indexOf("#") !== -1) return null;
    return value;
  }

  // As BinderHub's LaunchSpec: labpath -> doc/tree/<path>, else filepath -> tree/<path>, else urlpath.
  function requestedUrlpath(params) {
    var legacy = [["labpath", "doc/tree/"], ["filepath", "tree/"]];
    for (var i = 0; i < legacy.length; i++) {
      if (params.has(legacy[i][0])) {
        var path = params.get(legacy[i][0]).replace(/^\/+/, "").replace(/\/$/, "");
        return safeUrlpath(legacy[i][1] + encodeURI(path)) || DEFAULT_URLPATH;
      }
    }
    return safeUrlpath(params.get("urlpath") || null) || DEFAULT_URLPATH;
  }

  // The session's handoff address (on its own origin in subdomain mode): it trades the one-time
  // `code` for the session's cookie and goes on to `urlpath` inside the session.
  function handoffTarget(sessionUrl, urlpath, code, here) {
    var session = new URL(sessionUrl, here);
    if (session.protocol !== "http:" && session.protocol !== "https:") return null;
    var base = session.pathname;
    if (base.charAt(base.length - 1) !== "/") base += "/";
    var path = safeUrlpath(urlpath) || DEFAULT_URLPATH;
    return session.origin + base + HANDOFF_PATH + "?code=" + encodeURIComponent(code) +
      "&next=" + encodeURIComponent(path);
  }

  // `repo` is the provider's repository part (a URL for git, owner/name for gh).
  function launchLink(repo, ref, path, kind, provider, encodeRepo, refEnabled) {
    provider = provider || "git";
    repo = repo.trim();
    var spec = encodeRepo === false ? repo : encodeURIComponent(repo);
    if (refEnabled !== false) spec += "/" + encodeURIComponent(ref.trim() || "HEAD");
    var link = "/v2/" + provider + "/" + spec;
    path = path.trim();
    if (path) {
      var urlpath = kind === "url" ? path : "lab/tree/" + path.replace(/^\/+/, "");
      link += "?urlpath=" + encodeURIComponent(urlpath);
    }
    return link;
  }

  root.BinderyUrlpath = {
    DEFAULT_URLPATH: DEFAULT_URLPATH,
    safeUrlpath: safeUrlpath,
    requestedUrlpath: requestedUrlpath,
    handoffTarget: handoffTarget,
    launchLink: launchLink,
  };
})(typeof window !== "undefined" ? window : globalThis);
