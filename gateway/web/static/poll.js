// Desk pages: poll a progress URL (no patient data in its answer) and reload the page when finished.
(function () {
  "use strict";
  var box = document.querySelector("[data-poll-url]");
  if (!box) { return; }
  var text = document.getElementById("progress-text");
  var bar = document.getElementById("progress-bar");
  function tick() {
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (p) {
        if (p.finished) { window.location.reload(); return; }
        if (text && p.done != null) {
          text.textContent = p.total ? p.done + " " + box.dataset.tOf + " " + p.total : String(p.done);
        }
        if (bar && p.total) { bar.max = p.total; bar.value = p.done || 0; }
        window.setTimeout(tick, 500);
      })
      .catch(function () { window.setTimeout(tick, 2000); });
  }
  window.setTimeout(tick, 300);
}());
