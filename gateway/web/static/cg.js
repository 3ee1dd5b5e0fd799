// Shared helpers of every page (loaded by base.html before the page's own script): window.CG.
//
//   CG.time(iso, {date: false, empty: "–"})  the clinic's time, labelled: "2026-11-23 10:40 UTC+8"; the same
//                                           text as gateway.clock.clinic_time (the templates' |localtime);
//                                           {tz: "Europe/Berlin"} for another zone (tests)
//   CG.duration(seconds)                    "2 min 16 s" / "2分16秒" (units from the page's language)
//   CG.gb(bytes)                            "74.2 GB"
//   CG.text(key)                            a shared word in the page's language ("none", "never", ...)
//   CG.name(table, code)                    a code's words from a table the page script received (see
//                                           status.js); an unknown code comes back as itself
//   CG.labelCells(table)                    give each cell of a table.cards its column's heading, which the
//                                           stacked (phone) layout shows above the value
//   CG.cell(row, text, opts)                append a <td> (text or "–"; opts.code: an id, translate="no";
//                                           opts.className; opts.detail: the raw code/message, kept as data)
//
// The clinic's zone comes from <html data-tz>, the words from <script id="cg-texts"> (base.html).
(function () {
  "use strict";
  var root = document.documentElement;
  var tz = root.dataset.tz || "UTC";
  var compact = /^zh/.test(root.lang || "");
  var texts = {};
  var node = document.getElementById("cg-texts");
  if (node) {
    try { texts = JSON.parse(node.textContent); } catch (e) { texts = {}; }
  }
  var formats = {};
  function formatsFor(zone) {
    if (!formats[zone]) {
      formats[zone] = {
        clock: new Intl.DateTimeFormat("en-GB", {
          timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
          hourCycle: "h23"
        }),
        offset: new Intl.DateTimeFormat("en-US", { timeZone: zone, timeZoneName: "shortOffset" })
      };
    }
    return formats[zone];
  }

  function text(key) { return texts[key] == null ? key : texts[key]; }

  function zoneLabel(date, zone) {
    // "GMT+8", "GMT-2:30", "GMT" -> the offset label gateway.clock.zone_label writes
    var part = formatsFor(zone).offset.formatToParts(date).filter(function (p) {
      return p.type === "timeZoneName";
    })[0];
    var label = part ? part.value.replace(/^GMT/, "UTC") : "UTC";
    return /^UTC([+-]0+(:00)?)?$/.test(label) ? "UTC" : label;
  }

  function time(value, opts) {
    opts = opts || {};
    if (value == null || value === "") { return opts.empty == null ? "\u2013" : opts.empty; }
    var date = new Date(value);
    if (isNaN(date.getTime())) { return String(value); }
    var zone = opts.tz || tz;
    var p = {};
    formatsFor(zone).clock.formatToParts(date).forEach(function (x) { p[x.type] = x.value; });
    var hhmm = p.hour + ":" + p.minute;
    var day = p.year + "-" + p.month + "-" + p.day;
    return (opts.date === false ? hhmm : day + " " + hhmm) + " " + zoneLabel(date, zone);
  }

  function duration(seconds) {
    if (seconds == null || isNaN(seconds)) { return text("none"); }
    var s = Math.max(0, Math.round(Number(seconds)));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    var units = texts.units || { d: "d", h: "h", min: "min", s: "s" };
    var parts = d ? [[d, "d"], [h, "h"]] : h ? [[h, "h"], [m, "min"]] : m ? [[m, "min"], [r, "s"]] : [[r, "s"]];
    var gap = compact ? "" : " ";
    return parts.map(function (x) { return x[0] + gap + units[x[1]]; }).join(compact ? "" : " ");
  }

  function gb(bytes) {
    if (bytes == null) { return text("none"); }
    return (Number(bytes) / 1e9).toFixed(1) + " GB";
  }

  function name(table, code) {
    if (code == null || code === "") { return ""; }
    return table && table[code] != null ? table[code] : String(code);
  }

  function labelCells(table) {
    var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    table.querySelectorAll("tbody tr").forEach(function (tr) {
      Array.prototype.forEach.call(tr.children, function (td, i) {
        if (!td.hasAttribute("data-label") && heads[i]) { td.setAttribute("data-label", heads[i]); }
      });
    });
  }

  function cell(row, value, opts) {
    opts = opts || {};
    var td = document.createElement("td");
    var shown = value == null || value === "" ? "\u2013" : String(value);
    if (opts.code && shown !== "\u2013") {
      var code = document.createElement("code");
      code.setAttribute("translate", "no");
      code.textContent = shown;
      td.appendChild(code);
    } else {
      td.textContent = shown;
    }
    if (opts.className) { td.className = opts.className; }
    // The raw text behind a translated cell (an English message, an error type) is kept as data for IT's
    // developer tools, not shown: a Chinese page shows no English.
    if (opts.detail) { td.setAttribute("data-detail", opts.detail); }
    row.appendChild(td);
    return td;
  }

  window.CG = { time: time, duration: duration, gb: gb, text: text, name: name, labelCells: labelCells,
                cell: cell, zone: tz };
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.cards").forEach(labelCells);
  });
}());
