// Navigation badge: the number of referral decisions nobody has acknowledged yet, kept current on a page
// left open (a desk PC shows the same page for long). The answer is a count only, no patient data.
(function () {
  "use strict";
  var badge = document.getElementById("referral-badge");
  if (!badge || !badge.dataset.countUrl) { return; }
  var every = Math.max(1, Number(badge.dataset.refreshS) || 60) * 1000;
  function tick() {
    fetch(badge.dataset.countUrl, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        // Logged out or no longer allowed (e.g. in another tab): stop asking.
        if (r.status === 401 || r.status === 403) { return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (doc) {
        if (doc === null) { return; }
        var n = Number(doc.unseen) || 0;
        badge.textContent = String(n);
        badge.hidden = n === 0;
        window.setTimeout(tick, every);
      })
      .catch(function () { window.setTimeout(tick, every * 2); });
  }
  window.setTimeout(tick, every);
}());
