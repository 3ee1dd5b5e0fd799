// IT status page: fills the page from /api/status and refreshes it every few seconds.
// Everything is built with DOM calls (no innerHTML from data), served by the gateway itself.
(function () {
  "use strict";
  var root = document.getElementById("status-root");
  if (!root) { return; }
  var t = root.dataset;
  var SVG = "http://www.w3.org/2000/svg";

  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }
  function duration(s) {
    if (s == null) { return t.tNone; }
    s = Math.round(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) { return d + "d " + h + "h"; }
    if (h) { return h + "h " + m + "m"; }
    if (m) { return m + "m " + (s % 60) + "s"; }
    return s + "s";
  }
  function time(iso) {
    if (!iso) { return t.tNever; }
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  function format(el, value) {
    var f = el.dataset.format;
    el.classList.remove("bad", "good");
    if (f === "duration") { return duration(value); }
    if (f === "time") { return time(value); }
    if (f === "bool" || f === "bool-bad") {
      var good = f === "bool" ? value === true : value === false;
      el.classList.add(good ? "good" : "bad");
      return value ? t.tYes : t.tNo;
    }
    if (f === "model") {
      if (!value) { return t.tNone; }
      return value.model_version || value.version || value.name || value.error || JSON.stringify(value);
    }
    if (value == null || value === "") { return t.tNone; }
    return String(value);
  }
  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text == null || text === "" ? "–" : String(text);
    if (cls) { td.className = cls; }
    row.appendChild(td);
  }
  function fillTable(id, rows, columns) {
    var body = document.querySelector("#" + id + " tbody");
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      columns.forEach(function (c) { cell(tr, typeof c === "function" ? c(r) : r[c]); });
      body.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = columns.length; td.className = "muted"; td.textContent = t.tNone;
      tr.appendChild(td); body.appendChild(tr);
    }
  }
  function chart(samples) {
    var box = document.getElementById("queue-chart");
    box.textContent = "";
    if (!samples.length) { box.textContent = t.tEmpty; return; }
    var W = 600, H = 160, P = 28;
    var max = Math.max(1, Math.max.apply(null, samples.map(function (s) { return s.unsent; })));
    // The x axis spans the whole window, so a gap in sampling (daemon stopped) shows as a gap.
    var t1 = Date.parse(samples[samples.length - 1].at);
    var t0 = t1 - Number(root.dataset.hours || 6) * 3600 * 1000;
    var span = Math.max(1, t1 - t0);
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    var axis = document.createElementNS(SVG, "path");
    axis.setAttribute("d", "M" + P + " 8 V" + (H - P) + " H" + (W - 8));
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    var points = samples.map(function (s) {
      var x = P + (Date.parse(s.at) - t0) / span * (W - P - 8);
      var y = (H - P) - s.unsent / max * (H - P - 8);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "series");
    svg.appendChild(line);
    [[max, 14], [0, H - P]].forEach(function (lv) {
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", 2); label.setAttribute("y", lv[1]);
      label.textContent = String(lv[0]);
      svg.appendChild(label);
    });
    var from = document.createElementNS(SVG, "text");
    from.setAttribute("x", P); from.setAttribute("y", H - 8);
    from.textContent = new Date(t0).toLocaleTimeString();
    svg.appendChild(from);
    var when = document.createElementNS(SVG, "text");
    when.setAttribute("x", W - 8); when.setAttribute("y", H - 8); when.setAttribute("text-anchor", "end");
    when.textContent = new Date(t1).toLocaleTimeString();
    svg.appendChild(when);
    box.appendChild(svg);
  }
  function render(s) {
    document.querySelectorAll("#status-root [data-field]").forEach(function (el) {
      el.textContent = format(el, get(s, el.dataset.field));
    });
    var healthy = Object.keys(s.components || {}).every(function (k) { return s.components[k].healthy; });
    var badge = document.getElementById("overall");
    badge.textContent = healthy ? t.tOk : t.tBad;
    badge.className = "badge " + (healthy ? "good" : "bad");
    var kinds = Object.keys(s.outbox.by_kind).sort().map(function (k) {
      var v = s.outbox.by_kind[k];
      return [k, v.pending || 0, v.sent || 0, v.acked || 0, v.parked || 0];
    });
    fillTable("outbox-table", kinds, [0, 1, 2, 3, 4]);
    fillTable("devices-table", s.devices || [], ["device_id", "kind", "transport", "state",
      function (d) { return d.last_sync ? time(d.last_sync) : t.tNever; }, "last_error"]);
    fillTable("components-table", Object.keys(s.components || {}).sort().map(function (k) {
      var c = s.components[k];
      var failure = c.last_failure ? c.last_failure + (c.last_failure_bug ? " (bug)" : "") : "";
      return [k, c.healthy ? t.tOk : t.tBad, c.restarts || 0, failure,
        c.last_failure_at ? time(c.last_failure_at) : ""];
    }), [0, 1, 2, 3, 4]);
    fillTable("dead-letters-table", (s.downlink && s.downlink.recent) || [],
      [function (d) { return time(d.received_at); }, "topic", "field", "reason", "size_bytes"]);
    fillTable("errors-table", s.recent_errors || [], [function (e) { return time(e.at); }, "level", "kind", "message"]);
    chart((s.queue && s.queue.samples) || []);
  }
  function refresh() {
    fetch(root.dataset.api, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (s) { render(s); document.getElementById("refresh-state").textContent = ""; })
      .catch(function () { document.getElementById("refresh-state").textContent = t.tStale; });
  }
  render(JSON.parse(document.getElementById("status-data").textContent));
  window.setInterval(refresh, 1000 * Number(root.dataset.refreshS || 10));
}());
