// IT status page: fills the page from /api/status and refreshes it every few seconds.
// Everything is built with DOM calls (no innerHTML from data), served by the gateway itself. Codes from the
// core (states, kinds, component and error names) are shown through the page's word tables (#status-texts);
// times, durations and sizes through the shared CG helpers (cg.js). The health badge shows the server's health
// model (doc.health); the page adds one judgement of its own: no good refresh for data-stale-s -> red.
(function () {
  "use strict";
  var root = document.getElementById("status-root");
  if (!root || !window.CG) { return; }
  var CG = window.CG;
  var T = JSON.parse(document.getElementById("status-texts").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var staleMs = 1000 * Number(root.dataset.staleS || 60);
  var lastGood = Date.now();
  var lastDoc = null;
  var windowHours = "";  // "": chosen by the server from the activity

  function fill(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_, key) { return values[key] == null ? "" : values[key]; });
  }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }
  function setText(id, text) { document.getElementById(id).textContent = text; }
  function format(el, value) {
    var f = el.dataset.format;
    el.classList.remove("bad", "good");
    if (f === "duration") { return value == null ? CG.text("none") : CG.duration(value); }
    if (f === "time") { return CG.time(value, { empty: CG.text("never") }); }
    if (f === "bool" || f === "bool-bad") {
      var good = f === "bool" ? value === true : value === false;
      el.classList.add(good ? "good" : "bad");
      return value ? CG.text("yes") : CG.text("no");
    }
    if (value == null || value === "") { return CG.text("none"); }
    return String(value);
  }
  function fillTable(id, rows, columns) {
    var table = document.getElementById(id);
    var body = table.querySelector("tbody");
    body.textContent = "";
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      columns.forEach(function (c) {
        var v = c(r);
        if (v && typeof v === "object") { CG.cell(tr, v.text, v); } else { CG.cell(tr, v); }
      });
      body.appendChild(tr);
    });
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = columns.length; td.className = "muted"; td.textContent = CG.text("none");
      td.setAttribute("data-label", "");
      tr.appendChild(td); body.appendChild(tr);
    }
    CG.labelCells(table);
  }
  function code(text) { return { text: text, code: true }; }

  function problemText(p) {
    var base = CG.name(T.problems, p.kind);
    var detail = "";
    if (p.kind === "broker_down") {
      detail = CG.name(T.linkStates, p.subject) + " " + fill(T.downFor, { duration: CG.duration(p.value) });
    } else if (p.kind === "component_failing" || p.kind === "component_restarted") {
      detail = CG.name(T.components, p.subject);
      if (p.kind === "component_restarted") { detail += ", " + fill(T.restarts, { n: p.value }); }
    } else if (p.kind === "outbox_late") {
      detail = CG.duration(p.value);
    } else if (p.kind === "disk_low" || p.kind === "disk_full") {
      detail = CG.gb(p.value);
    }
    return detail ? base + ": " + detail : base;
  }
  function setBadge(level, problems) {
    var badge = document.getElementById("overall");
    badge.textContent = CG.name(T.levels, level);
    badge.className = "badge " + level;
    badge.dataset.level = level;
    var list = document.getElementById("health-problems");
    list.textContent = "";
    problems.forEach(function (p) {
      var li = document.createElement("li");
      li.textContent = problemText(p);
      li.className = p.level;
      li.dataset.problem = p.kind;
      list.appendChild(li);
    });
  }
  function renderModel(model) {
    var version = document.getElementById("model-version");
    var detail = document.getElementById("model-detail");
    detail.textContent = "";
    if (!model) {  // no retina component: no model is needed
      version.textContent = CG.text("none");
      detail.className = "muted";
      return;
    }
    if (!model.model_version) {
      version.textContent = "";
      detail.textContent = T.modelMissing;
      detail.className = "amber";
      return;
    }
    version.textContent = model.model_version;
    detail.className = "muted";
    var th = model.thresholds || {};
    var parts = Object.keys(th).sort().map(function (k) {
      return CG.name(T.thresholds, k) + " " + Number(th[k]).toFixed(2);
    });
    if (parts.length) { detail.textContent = " · " + parts.join(" · "); }
  }
  function renderLink(s) {
    var broker = s.broker || {};
    var state = document.getElementById("broker-state");
    state.textContent = CG.name(T.linkStates, broker.state || "not running");
    state.className = broker.connected ? "good" : "bad";
    setText("broker-down", broker.connected || broker.down_for_s == null ? "" :
      fill(T.downFor, { duration: CG.duration(broker.down_for_s) }));
    var q = s.queue || {};
    var drain = document.getElementById("drain-rate");
    drain.dataset.state = q.drain_state || "";
    drain.textContent = fill(T.drain[q.drain_state] || T.drain.measuring, { rate: q.drain_per_min });
  }
  function renderDisk(disk) {
    setText("disk-free", fill(T.diskFree, { free: CG.gb(disk.free_bytes), total: CG.gb(disk.total_bytes) }));
    var bar = document.getElementById("disk-bar");
    var total = Number(disk.total_bytes) || 1;
    bar.max = total;
    bar.value = total - (Number(disk.free_bytes) || 0);
    bar.high = total * 0.9;
    bar.optimum = 0;
  }
  function chart(queue) {
    var samples = queue.samples || [];
    var box = document.getElementById("queue-chart");
    box.textContent = "";
    document.querySelectorAll(".chart-windows button").forEach(function (b) {
      var shown = b.dataset.window === "" ? windowHours === "" : Number(b.dataset.window) === queue.window_hours &&
        windowHours !== "";
      b.setAttribute("aria-pressed", shown ? "true" : "false");
    });
    if (!samples.length) { box.textContent = T.emptyChart; return; }
    var W = 600, H = 160, P = 28;
    var max = Math.max(1, Math.max.apply(null, samples.map(function (s) { return s.unsent; })));
    // The x axis spans the whole window, so a gap in sampling (daemon stopped) shows as a gap.
    var t1 = Date.parse(samples[samples.length - 1].at);
    var t0 = t1 - Number(queue.window_hours || 1) * 3600 * 1000;
    var span = Math.max(1, t1 - t0);
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    var axis = document.createElementNS(SVG, "path");
    axis.setAttribute("d", "M" + P + " 8 V" + (H - P) + " H" + (W - 8));
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    var points = samples.map(function (s) {
      var x = P + Math.max(0, Date.parse(s.at) - t0) / span * (W - P - 8);
      var y = (H - P) - s.unsent / max * (H - P - 8);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "series");
    svg.appendChild(line);
    function label(x, y, text, anchor) {
      var el = document.createElementNS(SVG, "text");
      el.setAttribute("x", x); el.setAttribute("y", y);
      if (anchor) { el.setAttribute("text-anchor", anchor); }
      el.textContent = text;
      svg.appendChild(el);
    }
    label(2, 14, String(max));
    label(2, H - P, "0");
    label(P, H - 8, CG.time(new Date(t0).toISOString(), { date: false }));
    label(W - 8, H - 8, CG.time(new Date(t1).toISOString(), { date: false }), "end");
    box.appendChild(svg);
  }
  function render(s) {
    lastDoc = s;
    document.querySelectorAll("#status-root [data-field]").forEach(function (el) {
      el.textContent = format(el, get(s, el.dataset.field));
    });
    var health = s.health || { level: "green", problems: [] };
    setBadge(health.level, health.problems || []);
    renderModel(s.model);
    renderLink(s);
    renderDisk(s.disk || {});
    var kinds = Object.keys(s.outbox.by_kind).sort().map(function (k) {
      var v = s.outbox.by_kind[k];
      return [k, v.pending || 0, v.sent || 0, v.acked || 0, v.parked || 0];
    });
    fillTable("outbox-table", kinds, [
      function (r) { return CG.name(T.outboxKinds, r[0]); },
      function (r) { return r[1]; }, function (r) { return r[2]; }, function (r) { return r[3]; },
      function (r) { return r[4]; }]);
    fillTable("devices-table", s.devices || [], [
      function (d) { return code(d.device_id); },
      function (d) { return CG.name(T.deviceKinds, d.kind); },
      function (d) { return CG.name(T.transports, d.transport); },
      function (d) { return CG.name(T.deviceStates, d.state); },
      function (d) { return CG.time(d.last_sync, { empty: CG.text("never") }); },
      function (d) { return errorName(d.last_error); }]);
    fillTable("components-table", Object.keys(s.components || {}).sort().map(function (k) {
      return [k, s.components[k]];
    }), [
      function (r) { return CG.name(T.components, r[0]); },
      function (r) { return { text: r[1].healthy ? T.healthy : T.unhealthy, className: r[1].healthy ? "good" : "bad" }; },
      function (r) { return r[1].restarts || 0; },
      function (r) {
        var c = r[1];
        if (!c.last_failure) { return ""; }
        var e = errorName(c.last_failure);
        if (c.last_failure_bug) { e.text += " (" + T.bug + ")"; }
        return e;
      },
      function (r) { return r[1].last_failure_at ? CG.time(r[1].last_failure_at) : ""; }]);
    fillTable("dead-letters-table", (s.downlink && s.downlink.recent) || [], [
      function (d) { return CG.time(d.received_at); },
      function (d) { return code(d.topic); },
      function (d) { return code(d.field); },
      function (d) { return { text: T.contractReason, detail: d.reason }; },
      function (d) { return d.size_bytes; }]);
    fillTable("errors-table", s.recent_errors || [], [
      function (e) { return CG.time(e.at); },
      function (e) { return { text: CG.name(T.eventLevels, e.level), className: e.level === "error" ? "bad" : "amber" }; },
      function (e) { return eventText(e); }]);
    chart(s.queue || {});
  }
  function errorName(type) {
    if (!type) { return ""; }
    var known = T.errorTypes[type];
    // An error type the page has no words for is shown as what it is: a code.
    return known ? { text: known, detail: type } : code(type);
  }
  function eventText(e) {
    var text = T.events[e.kind];
    if (!text) { return code(e.kind); }
    var d = e.detail || {};
    if (e.kind === "broker_link") {
      var err = T.errorTypes[d.error] || d.error;
      return { text: text + ": " + err, detail: e.message };
    }
    if (d.component) { text += ": " + CG.name(T.components, d.component); }
    return { text: text, detail: e.message };
  }
  function staleCheck() {
    var stale = Date.now() - lastGood > staleMs;
    var line = document.getElementById("refresh-state");
    line.hidden = !stale;
    if (stale) {
      line.textContent = fill(T.stale, { time: CG.time(new Date(lastGood).toISOString()) });
      setBadge("red", []);
    }
    return stale;
  }
  function refresh() {
    var url = root.dataset.api + (windowHours ? "?window=" + encodeURIComponent(windowHours) : "");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("logged out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (s) { lastGood = Date.now(); render(s); staleCheck(); })
      .catch(function () { staleCheck(); });
  }
  document.querySelectorAll(".chart-windows button").forEach(function (b) {
    b.addEventListener("click", function () { windowHours = b.dataset.window; refresh(); });
  });
  render(JSON.parse(document.getElementById("status-data").textContent));
  window.setInterval(refresh, 1000 * Number(root.dataset.refreshS || 10));
  // The stale check runs on its own clock: a fetch that never returns must not keep the badge green.
  window.setInterval(staleCheck, 1000);
  window.CGStatus = { last: function () { return lastDoc; } };
}());
