(function () {
  "use strict";
  var U = window.BinderyUrlpath;
  var form = document.getElementById("launch-form");
  var output = document.getElementById("link");

  function current() {
    var repo = form.elements.repo.value;
    if (!repo.trim()) return null;
    return U.launchLink(repo, form.elements.ref.value, form.elements.path.value,
      form.elements.kind.value);
  }

  function update() {
    var link = current();
    output.textContent = "";
    if (!link) {
      output.textContent = "Enter a repository URL.";
      return;
    }
    var a = document.createElement("a");
    a.href = link;
    a.textContent = new URL(link, location.href).href;
    output.appendChild(a);
  }

  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", function (event) {
    var link = current();
    if (!link) return;
    event.preventDefault();
    location.assign(link);
  });
  update();
})();
