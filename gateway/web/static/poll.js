// Desk pages: follow a desk request's progress (no patient data in it) and reload the page when finished.
// Pushed: an EventSource on the box's data-events-url gets each change as the core posts it (gateway.web.push).
// Polled: where events cannot flow (no EventSource, all stream slots busy: the server answers 503, or no
// data-events-url), ask data-poll-url every half second as before.
// While the meter announces how many records it holds: "n of N" and a bar; before that, "n read".
(function () {
  "use strict";
  var box = document.querySelector("[data-poll-url]");
  if (!box) { return; }
  var text = document.getElementById("progress-text");
  var state = document.getElementById("progress-state");
  var bar = document.getElementById("progress-bar");
  var done = false;
  function show(p) {
    if (done) { return; }
    if (p.finished) { done = true; window.location.reload(); return; }
    if (p.state === "running") {
      if (state && box.dataset.tDownloading) { state.textContent = box.dataset.tDownloading; }
      if (text && box.dataset.tCount) {
        text.textContent = (p.total ? box.dataset.tCount : box.dataset.tRead)
          .replace("{done}", String(p.done || 0)).replace("{total}", String(p.total));
      }
    }
    if (bar && p.total) { bar.max = p.total; bar.value = p.done || 0; }
  }
  function tick() {
    if (done) { return; }
    fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (p) { show(p); if (!done) { window.setTimeout(tick, 500); } })
      .catch(function () { window.setTimeout(tick, 2000); });
  }
  if (box.dataset.eventsUrl && window.EventSource) {
    var source = new EventSource(box.dataset.eventsUrl);
    box.dataset.push = "connecting";
    source.addEventListener("open", function () { box.dataset.push = "open"; });
    source.addEventListener("progress", function (event) {
      var p = JSON.parse(event.data);
      if (p.finished) { source.close(); }
      show(p);
    });
    source.addEventListener("error", function () {
      // A refused stream (503) or an error answer closes the source for good: poll instead. A dropped
      // connection leaves it CONNECTING: the browser reconnects by itself (Last-Event-ID; fresh snapshot).
      if (source.readyState === EventSource.CLOSED && !done && box.dataset.push !== "polling") {
        box.dataset.push = "polling";
        tick();
      }
    });
  } else {
    box.dataset.push = "polling";
    window.setTimeout(tick, 300);
  }
}());
