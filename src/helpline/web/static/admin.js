/*
 * Helpline dashboard: fetches /admin/api/* (the HttpOnly session cookie authenticates) and draws plain SVG charts
 * with createElementNS. Every value from the server is written with textContent or a form field's value, never as
 * markup. The knowledge-document editor saves with PUT /admin/api/documents/{id}, echoing the page's CSRF token
 * (the logout form's hidden field) in X-CSRF-Token.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var WIDTH = 520;
  var HEIGHT = 200;
  var PAD = { left: 44, right: 12, top: 12, bottom: 34 };
  var COLOURS = ["#1d6b3a", "#b35c00", "#2c5fa8", "#8a3b9e", "#6b6b6b", "#a8322c"];

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    return node;
  }

  function svg(tag, attributes, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, String(attributes[name]));
    });
    if (text !== undefined) {
      node.textContent = String(text);
    }
    return node;
  }

  function percent(value) {
    return (Math.round(value * 1000) / 10).toFixed(1) + "%";
  }

  function money(value) {
    return "$" + Number(value || 0).toFixed(4);
  }

  function hourLabel(iso) {
    return iso.slice(11, 16);
  }

  function status(text) {
    document.getElementById("status").textContent = text;
  }

  async function getJson(url) {
    var response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (response.status === 401) {
      window.location.assign("/admin");
      throw new Error("signed out");
    }
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    return response.json();
  }

  /* ---------- charts ---------- */

  function frame(container, label) {
    var chart = svg("svg", { viewBox: "0 0 " + WIDTH + " " + HEIGHT, role: "img", "aria-label": label, class: "svg-chart" });
    chart.appendChild(svg("title", {}, label));
    container.replaceChildren(chart);
    return chart;
  }

  function axes(chart, maxValue, labels) {
    var bottom = HEIGHT - PAD.bottom;
    chart.appendChild(svg("line", { x1: PAD.left, y1: bottom, x2: WIDTH - PAD.right, y2: bottom, class: "axis" }));
    chart.appendChild(svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: bottom, class: "axis" }));
    chart.appendChild(svg("text", { x: PAD.left - 6, y: PAD.top + 10, "text-anchor": "end", class: "tick" }, maxValue));
    chart.appendChild(svg("text", { x: PAD.left - 6, y: bottom, "text-anchor": "end", class: "tick" }, 0));
    var step = Math.max(1, Math.ceil(labels.length / 8));
    var slot = (WIDTH - PAD.left - PAD.right) / Math.max(labels.length, 1);
    labels.forEach(function (label, index) {
      if (index % step === 0) {
        var x = PAD.left + slot * index + slot / 2;
        chart.appendChild(svg("text", { x: x, y: HEIGHT - 12, "text-anchor": "middle", class: "tick" }, label));
      }
    });
  }

  function empty(container, label) {
    var chart = frame(container, label + ": no traffic yet");
    chart.appendChild(svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "No traffic yet"));
  }

  function barChart(container, label, labels, values, barClass) {
    if (!values.length) {
      return empty(container, label);
    }
    var chart = frame(container, label);
    var max = Math.max.apply(null, values.concat([1]));
    axes(chart, max, labels);
    var slot = (WIDTH - PAD.left - PAD.right) / values.length;
    var plot = HEIGHT - PAD.top - PAD.bottom;
    values.forEach(function (value, index) {
      var height = (value / max) * plot;
      var bar = svg("rect", {
        x: PAD.left + slot * index + slot * 0.15, y: HEIGHT - PAD.bottom - height,
        width: slot * 0.7, height: height, class: barClass || "bar-rect",
      });
      bar.appendChild(svg("title", {}, labels[index] + ": " + value));
      chart.appendChild(bar);
    });
  }

  function lineChart(container, label, labels, series) {
    if (!labels.length) {
      return empty(container, label);
    }
    var chart = frame(container, label);
    var all = [1];
    series.forEach(function (item) { all = all.concat(item.values); });
    var max = Math.max.apply(null, all);
    axes(chart, max, labels);
    var slot = (WIDTH - PAD.left - PAD.right) / labels.length;
    var plot = HEIGHT - PAD.top - PAD.bottom;
    series.forEach(function (item, seriesIndex) {
      var points = item.values.map(function (value, index) {
        return [PAD.left + slot * index + slot / 2, HEIGHT - PAD.bottom - (value / max) * plot];
      });
      var colour = COLOURS[seriesIndex % COLOURS.length];
      chart.appendChild(svg("polyline", { points: points.map(function (p) { return p.join(","); }).join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
      points.forEach(function (point, index) {
        var dot = svg("circle", { cx: point[0], cy: point[1], r: 3, fill: colour });
        dot.appendChild(svg("title", {}, item.name + " " + labels[index] + ": " + item.values[index] + " ms"));
        chart.appendChild(dot);
      });
    });
    container.appendChild(legend(series.map(function (item) { return item.name; })));
  }

  function legend(names) {
    var list = el("ul", "legend");
    names.forEach(function (name, index) {
      var item = el("li");
      var swatch = svg("svg", { width: 12, height: 12, "aria-hidden": "true" });
      swatch.appendChild(svg("rect", { width: 12, height: 12, fill: COLOURS[index % COLOURS.length] }));
      item.append(swatch, document.createTextNode(" " + name));
      list.appendChild(item);
    });
    return list;
  }

  /** A horizontal stacked bar of shares (0..1) with a legend listing each share as text. */
  function shareChart(container, label, shares) {
    var names = Object.keys(shares);
    if (!names.length) {
      return empty(container, label);
    }
    var chart = frame(container, label);
    chart.setAttribute("viewBox", "0 0 " + WIDTH + " 40");
    var x = 0;
    names.forEach(function (name, index) {
      var width = shares[name] * WIDTH;
      var part = svg("rect", { x: x, y: 4, width: width, height: 32, fill: COLOURS[index % COLOURS.length] });
      part.appendChild(svg("title", {}, name + ": " + percent(shares[name])));
      chart.appendChild(part);
      x += width;
    });
    container.appendChild(legend(names.map(function (name) { return name + " " + percent(shares[name]); })));
  }

  /* ---------- figures ---------- */

  function tile(list, name, value) {
    var box = el("div", "tile");
    box.append(el("dt", "", name), el("dd", "", value));
    list.appendChild(box);
  }

  function renderTiles(stats) {
    var list = document.getElementById("tiles");
    list.replaceChildren();
    var feedback = stats.feedback || { up: 0, down: 0 };
    var rated = feedback.up + feedback.down;
    tile(list, "Requests (24 h)", stats.requests);
    tile(list, "Conversations (all time)", stats.conversations);
    tile(list, "Sessions", stats.sessions);
    tile(list, "Handoff rate", percent(stats.handoff_rate || 0));
    tile(list, "Thumbs up / down", feedback.up + " / " + feedback.down + (rated ? " (" + percent(feedback.up / rated) + " up)" : ""));
    tile(list, "Model cost", money(stats.cost_usd));
    tile(list, "Saved by the cache", money(stats.cost_saved_usd));
    tile(list, "Knowledge documents", stats.documents);
    tile(list, "Failover events (24 h)", (stats.failovers || {}).total || 0);
  }

  function renderAlerts(alerts) {
    var list = document.getElementById("alerts");
    list.replaceChildren();
    var entries = Array.isArray(alerts) ? alerts : Object.keys(alerts || {}).map(function (name) {
      var value = alerts[name];
      return { name: name, state: typeof value === "object" && value !== null ? value.state || JSON.stringify(value) : value };
    });
    if (!entries.length) {
      list.appendChild(el("li", "", "No alert rules reported."));
    }
    entries.forEach(function (entry) {
      var state = String(entry.state || entry.status || "unknown");
      list.appendChild(el("li", "alert alert-" + state.replace(/[^a-z]/gi, "").toLowerCase(), (entry.name || entry.alert || "alert") + ": " + state));
    });
  }

  function renderCharts(stats) {
    var series = stats.series || [];
    var labels = series.map(function (row) { return hourLabel(row.hour); });
    barChart(document.getElementById("chart-requests"), "Requests per hour", labels, series.map(function (row) { return row.requests; }));
    lineChart(document.getElementById("chart-latency"), "Latency per hour", labels, [
      { name: "p50", values: series.map(function (row) { return row.p50_ms; }) },
      { name: "p95", values: series.map(function (row) { return row.p95_ms; }) },
    ]);
    shareChart(document.getElementById("chart-cache"), "Cache tiers", (stats.cache || {}).hit_rate || {});
    shareChart(document.getElementById("chart-providers"), "Provider share", stats.providers || {});
    renderFailovers(stats.failovers || { total: 0, series: [], by_provider: {}, primary: "" });
  }

  /** Failover events per hour: cache misses answered by a provider other than the first of the chain. */
  function renderFailovers(failovers) {
    var series = failovers.series || [];
    barChart(
      document.getElementById("chart-failovers"), "Failover events per hour",
      series.map(function (row) { return hourLabel(row.hour); }),
      series.map(function (row) { return row.failovers; }),
      "bar-rect failover-rect"
    );
    var byProvider = failovers.by_provider || {};
    var answeredBy = Object.keys(byProvider).map(function (name) { return name + " " + byProvider[name]; });
    document.getElementById("failovers-note").textContent =
      plural(failovers.total || 0, "failover event") + " in 24 h" +
      (answeredBy.length ? " (answered by " + answeredBy.join(", ") + ")" : "") +
      ": cache misses answered by a provider other than " + (failovers.primary || "the first") + ", the first of the chain.";
  }

  /* ---------- conversation browser ---------- */

  function row(conversation) {
    var tr = el("tr");
    [
      conversation.created_at.replace("T", " ").slice(0, 19),
      conversation.message,
      conversation.reply,
      conversation.provider,
      conversation.cache,
      conversation.action,
      conversation.latency_ms + " ms",
    ].forEach(function (value, index) {
      tr.appendChild(el("td", index === 1 || index === 2 ? "text" : "", value));
    });
    return tr;
  }

  async function loadConversations() {
    var form = document.getElementById("filters");
    var params = new URLSearchParams(new FormData(form));
    params.set("limit", "50");
    var body = await getJson("/admin/api/conversations?" + params.toString());
    fillTable(document.querySelector("#conversations tbody"), body.conversations, row, "No conversations match.", 7);
  }

  /* One row per item, or a single row saying that nothing matched. */
  function fillTable(tbody, items, makeRow, emptyText, columns) {
    tbody.replaceChildren();
    items.forEach(function (item) { tbody.appendChild(makeRow(item)); });
    if (!items.length) {
      var empty = el("tr");
      var cell = el("td", "", emptyText);
      cell.colSpan = columns;
      empty.appendChild(cell);
      tbody.appendChild(empty);
    }
  }

  async function loadStats() {
    var stats = await getJson("/admin/api/stats");
    renderTiles(stats);
    renderCharts(stats);
    renderAlerts(stats.alerts);
    document.body.dataset.requests = String(stats.requests);
  }

  /* ---------- knowledge-document editor ---------- */

  function csrfToken() {
    var field = document.querySelector("form.logout input[name='csrf']");
    return field ? field.value : "";
  }

  function editorStatus(text) {
    document.getElementById("editor-status").textContent = text;
  }

  function field(id) {
    return document.getElementById(id);
  }

  function documentRow(entry) {
    var tr = el("tr");
    var idCell = el("td");
    var open = el("button", "link-button", entry.id);
    open.type = "button";
    open.dataset.documentId = entry.id;
    open.addEventListener("click", function () {
      openDocument(entry.id).catch(function (error) { editorStatus("Could not open " + entry.id + ": " + error.message); });
    });
    idCell.appendChild(open);
    tr.append(idCell, el("td", "", entry.kind), el("td", "text", entry.title));
    return tr;
  }

  async function loadDocuments() {
    var params = new URLSearchParams(new FormData(document.getElementById("doc-filters")));
    var body = await getJson("/admin/api/documents?" + params.toString());
    fillTable(document.querySelector("#documents tbody"), body.documents, documentRow, "No documents match.", 3);
    document.getElementById("doc-filters").dataset.count = String(body.documents.length);
  }

  function showEditor(heading, values, isNew) {
    var form = field("doc-editor");
    field("editor-title").textContent = heading;
    field("doc-id").value = values.id;
    field("doc-id").readOnly = !isNew;
    field("doc-delete").hidden = isNew;
    field("doc-kind").value = values.kind;
    field("doc-title").value = values.title;
    field("doc-text").value = values.text;
    field("doc-metadata").value = JSON.stringify(values.metadata || {}, null, 2);
    form.dataset.documentId = values.id;
    form.hidden = false;
    (isNew ? field("doc-id") : field("editor-title")).focus();
  }

  async function openDocument(id) {
    var doc = await getJson("/admin/api/documents/" + encodeURIComponent(id));
    showEditor("Edit " + doc.id, doc, false);
    editorStatus("Editing " + doc.id + " (" + doc.kind + ", updated " + doc.updated_at.replace("T", " ").slice(0, 19) + " UTC).");
  }

  function newDocument() {
    showEditor("New document", { id: "", kind: "faq", title: "", text: "", metadata: {} }, true);
    editorStatus("New document: choose an id, then save.");
  }

  function closeEditor() {
    field("doc-editor").hidden = true;
    var opener = document.querySelector("#documents button[data-document-id='" + CSS.escape(field("doc-id").value) + "']");
    (opener || field("doc-new")).focus();
  }

  function readMetadata() {
    var text = field("doc-metadata").value.trim();
    var value;
    try {
      value = text ? JSON.parse(text) : {};
    } catch (error) {
      return null;
    }
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
  }

  function plural(count, word) {
    return count + " " + word + (count === 1 ? "" : "s");
  }

  async function putDocument(id, payload) {
    return writeDocument(id, {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  async function writeDocument(id, init) {
    init.credentials = "same-origin";
    init.headers = Object.assign({ accept: "application/json", "x-csrf-token": csrfToken() }, init.headers || {});
    var response = await fetch("/admin/api/documents/" + encodeURIComponent(id), init);
    if (response.status === 401) {
      window.location.assign("/admin");
      throw new Error("signed out");
    }
    var body = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      throw new Error((body.error && body.error.message) || "HTTP " + response.status);
    }
    return body;
  }

  async function saveDocument() {
    if (!field("doc-editor").reportValidity()) {
      return;
    }
    var id = field("doc-id").value.trim();
    var metadata = readMetadata();
    if (metadata === null) {
      editorStatus("Not saved: the metadata must be a JSON object, like {} or {\"section\": \"Returns\"}.");
      field("doc-metadata").focus();
      return;
    }
    editorStatus("Saving " + id + "…");
    var payload = { kind: field("doc-kind").value, title: field("doc-title").value, text: field("doc-text").value, metadata: metadata };
    try {
      var saved = await putDocument(id, payload);
      field("doc-id").readOnly = true;
      field("editor-title").textContent = "Edit " + saved.id;
      editorStatus((saved.created ? "Created " : "Saved ") + saved.id + ": removed " + plural(saved.removed, "cached answer") + " that drew on it.");
      await loadDocuments();
    } catch (error) {
      editorStatus("Not saved: " + error.message);
    }
  }

  async function deleteDocument() {
    var id = field("doc-id").value.trim();
    if (!window.confirm("Delete " + id + "? The bot stops using it and every cached answer that drew on it goes.")) {
      return;
    }
    editorStatus("Deleting " + id + "…");
    try {
      var deleted = await writeDocument(id, { method: "DELETE" });
      field("doc-editor").hidden = true;
      editorStatus("Deleted " + deleted.id + ": removed " + plural(deleted.removed, "cached answer") + " that drew on it.");
      await loadDocuments();
      field("doc-new").focus();
    } catch (error) {
      editorStatus("Not deleted: " + error.message);
    }
  }

  function startEditor() {
    document.getElementById("doc-filters").addEventListener("submit", function (event) {
      event.preventDefault();
      loadDocuments().catch(function (error) { editorStatus("Could not load documents: " + error.message); });
    });
    field("doc-new").addEventListener("click", newDocument);
    field("doc-cancel").addEventListener("click", closeEditor);
    field("doc-delete").addEventListener("click", deleteDocument);
    field("doc-editor").addEventListener("submit", function (event) {
      event.preventDefault();
      saveDocument();
    });
  }

  async function start() {
    document.getElementById("filters").addEventListener("submit", function (event) {
      event.preventDefault();
      loadConversations().catch(function (error) { status("Could not load conversations: " + error.message); });
    });
    try {
      startEditor();
      await Promise.all([loadStats(), loadConversations(), loadDocuments()]);
      status("Updated " + new Date().toLocaleTimeString());
      document.body.dataset.ready = "true";
    } catch (error) {
      status("Could not load the dashboard: " + error.message);
    }
  }

  start();
})();
