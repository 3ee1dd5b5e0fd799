// Desk pages: poll a progress URL (no patient data in its answer) and reload the page when finished.
// While the meter announces how many records it holds: "n of N" and a bar; before that, "n read".
(function () {
  "use strict";
  var box = document.querySelector("[data-poll-url]");
  if (!box) { return; }
  var text = document.getElementById("progress-text");
  var state = document.getElementById("progress-state");
  var bar = document.getElementById("progress-bar");
  function tick() {
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (p) {
        if (p.finished) { window.location.reload(); return; }
        if (p.state === "running") {
          if (state) { state.textContent = box.dataset.tDownloading; }
          if (text) {
            text.textContent = (p.total ? box.dataset.tCount : box.dataset.tRead)
              .replace("{done}", String(p.done || 0)).replace("{total}", String(p.total));
          }
        }
        if (bar && p.total) { bar.max = p.total; bar.value = p.done || 0; }
        window.setTimeout(tick, 500);
      })
      .catch(function () { window.setTimeout(tick, 2000); });
  }
  window.setTimeout(tick, 300);
}());
