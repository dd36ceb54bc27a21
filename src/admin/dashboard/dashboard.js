// The dashboard: polls /_lb/health once a second and draws it. Every value from the JSON goes
// into the page as text, never as markup. Requests per second are the change in a member's
// request count between two polls; a member seen for the first time has no rate yet.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 3000;

let previous = new Map(); // addr -> { requests, at }: the last poll's counts
let lastUpdate = null; // Date of the last poll that answered
let failing = false;

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

function clock(d) {
  return d.toISOString().slice(11, 19) + " UTC";
}

function ago(iso, now) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

// A timestamp as "05:59:24 UTC (2 s ago)", or only "2 s ago" where space is short; the
// full time is in the element's datetime and title either way.
function when(iso, now, short) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return el("time", String(iso));
  const text = short ? ago(iso, now) : clock(t) + " (" + ago(iso, now) + ")";
  return el("time", text, { datetime: String(iso), title: t.toISOString() });
}

function rate(b, at) {
  const p = previous.get(b.addr);
  if (!p) return "-";
  const dt = (at - p.at) / 1000;
  const dr = b.requests - p.requests;
  if (dt < 0.2 || dr < 0) return "-";
  const r = dr / dt;
  return r < 10 ? r.toFixed(1) : Math.round(r).toString();
}

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const cell = c instanceof Node ? c : null;
    const td = i === 0 ? el("th", cell ? null : c, { scope: "row" }) : el("td", cell ? null : c);
    if (cell) td.append(cell);
    tr.append(td);
  });
  return tr;
}

function members(h, at, now) {
  const rows = (h.backends || []).map((b) => {
    const state = el("span", b.state, { class: "state", "data-state": b.state });
    const tr = row([
      b.addr,
      state,
      b.routed ? "yes" : "no",
      b.instance || "-",
      rate(b, at),
      b.inflight,
      b.sessions,
      b.last_check_ms === null || b.last_check_ms === undefined ? "-" : b.last_check_ms,
      when(b.since, now, true),
      b.last_error || "",
    ]);
    tr.dataset.addr = b.addr;
    tr.dataset.state = b.state;
    [4, 5, 6, 7].forEach((i) => tr.children[i].classList.add("num"));
    return tr;
  });
  if (rows.length === 0) rows.push(empty(10, "No members: the sweep has found no backend."));
  $("members").tBodies[0].replaceChildren(...rows);
  previous = new Map((h.backends || []).map((b) => [b.addr, { requests: b.requests, at }]));
}

function empty(span, text) {
  const tr = document.createElement("tr");
  tr.append(el("td", text, { colspan: span }));
  return tr;
}

function departures(h, now) {
  const rows = (h.recently_left || []).map((d) => {
    const tr = row([d.addr, when(d.at, now), d.reason]);
    tr.dataset.addr = d.addr;
    return tr;
  });
  if (rows.length === 0) rows.push(empty(3, "None."));
  $("departures").tBodies[0].replaceChildren(...rows);
}

function facts(id, pairs) {
  const items = [];
  for (const [k, v] of pairs) {
    items.push(el("dt", k));
    const dd = el("dd", v instanceof Node ? null : v);
    if (v instanceof Node) dd.append(v);
    items.push(dd);
  }
  $(id).replaceChildren(...items);
}

function render(h, at, now) {
  const counts = {};
  for (const b of h.backends || []) counts[b.state] = (counts[b.state] || 0) + 1;
  const others = ["joining", "draining", "leaving"]
    .filter((s) => counts[s])
    .map((s) => counts[s] + " " + s);
  const head = h.healthy > 0
    ? h.healthy + (h.healthy === 1 ? " healthy backend" : " healthy backends")
    : "no healthy backend";
  setText($("status"), [head].concat(others).join(", "));
  $("status").dataset.state = h.healthy > 0 ? "ok" : "down";

  members(h, at, now);
  departures(h, now);

  const s = h.last_sweep;
  facts("sweep", s
    ? [["Addresses", s.addresses], ["Found", s.found], ["Duration (ms)", s.duration_ms],
       ["Finished", when(s.finished, now)]]
    : [["Sweep", "none yet"]]);

  const u = h.upstream || {};
  const moved = Object.entries(h.sessions_moved || {}).filter(([, v]) => typeof v === "number");
  facts("counters", [
    ["Upstream connects", u.connects], ["Reused", u.reused], ["Idle", u.idle],
    ["Unexpected bytes", u.unexpected],
    ["Sessions moved", moved.reduce((n, [, v]) => n + v, 0) +
      moved.filter(([, v]) => v > 0).map(([k, v]) => ", " + k + ": " + v).join("")],
    ["Diverted by bounded load", h.bounded_load_diverted],
  ]);

  autoscale(h.autoscale, now);
}

// Autoscaling: the counts against the limits, the load against the target, the last decision
// and the containers it acts on; "off" when the config has no autoscale block.
function autoscale(a, now) {
  if (a === null || typeof a !== "object") {
    facts("autoscale", [["Autoscaling", "off"]]);
    $("scaled").hidden = true;
    return;
  }
  const d = a.last_decision;
  const s = a.last_start;
  facts("autoscale", [
    ["Service", a.service + (a.mode ? " (" + a.mode + ")" : "")],
    ["Engine", a.engine],
    ["Containers", [a.running + " running", a.starting + " starting", a.draining + " draining",
      a.stopping + " stopping"].join(", ") + "; desired " + a.desired +
      " (min " + a.min + ", max " + a.max + ")"],
    ["In flight", a.inflight + " (target " + a.target_inflight + " per backend)" +
      (a.held > 0 ? ", " + a.held + " held" : "")],
    ["Now", a.reason],
    ["Last change", d ? d.action + " " + d.from + " \u2192 " + d.to + ": " + d.reason : "none"],
    ["Changed", d ? when(d.at, now) : "-"],
    ["Last start", s ? s.container + ": answered after " +
      (s.start_to_answer_ms === null ? "-" : s.start_to_answer_ms + " ms") +
      ", routed after " + s.start_to_routed_ms + " ms" : "none yet"],
    ["Backing off until", a.backoff_until ? when(a.backoff_until, now) : "-"],
    ["Engine errors", a.errors],
  ]);
  const rows = (a.containers || []).map((c) => {
    const tr = row([c.name, el("span", c.state, { class: "state", "data-state": c.state }),
      c.addr || "-", c.id, c.since ? when(c.since, now, true) : "-"]);
    tr.dataset.state = c.state;
    return tr;
  });
  if (rows.length === 0) rows.push(empty(5, "No running container of the service."));
  $("scaled").tBodies[0].replaceChildren(...rows);
  $("scaled").hidden = false;
}

async function poll() {
  const started = performance.now();
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    // 503 ("no healthy backend") is still the document: only a failed fetch or a body that is
    // not JSON counts as a lost connection.
    const resp = await fetch("/_lb/health", { cache: "no-store", signal: abort.signal });
    const h = await resp.json();
    const date = Date.parse(resp.headers.get("date") || "");
    // The balancer's clock, from its Date header, so "ago" does not depend on this machine's.
    const now = Number.isNaN(date) ? Date.now() : date;
    render(h, performance.now(), now);
    failing = false;
    lastUpdate = new Date();
    $("connection").dataset.state = "live";
    setText($("connection"), "Live: updated " + clock(lastUpdate) + ", every " + POLL_MS / 1000 + " s.");
    document.body.classList.remove("stale");
  } catch (e) {
    if (!failing) previous = new Map();
    failing = true;
    $("connection").dataset.state = "lost";
    setText($("connection"), "Connection lost, retrying. " +
      (lastUpdate ? "Last update " + clock(lastUpdate) + "." : "No update yet."));
    setText($("status"), "connection lost, retrying");
    $("status").dataset.state = "lost";
    document.body.classList.add("stale");
  } finally {
    clearTimeout(timer);
    setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }
}

poll();
