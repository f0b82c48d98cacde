// Progressive enhancement only: every page works without this file.
// A page whose <body> has data-refresh="N" reloads its <main> every N seconds while the
// tab is visible, unless the reader is typing in a form.
(function () {
  var seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  setInterval(function () {
    if (document.hidden || document.activeElement && document.activeElement.form) return;
    fetch(location.href, {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html) return;
      var next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
      if (next) document.querySelector("main").replaceWith(next);
    }).catch(function () {});
  }, seconds * 1000);
})();
