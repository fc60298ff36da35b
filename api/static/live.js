/* The live dashboard: log in once, then follow /api/v1/metrics/stream (server-sent events). */
"use strict";

const SPAN_MS = 5 * 60 * 1000; // charts show the last five minutes
const STALE_MS = 3000; // no message for this long: the feed is considered lost
const $ = (id) => document.getElementById(id);

const state = {
  source: null,
  restricted: false,
  lastMessage: 0,
  series: { rate: [], error_pct: [], p95_s: [], revenue: [] },
};

function setStatus(kind, text) {
  const el = $("status");
  el.className = `status ${kind}`;
  el.textContent = text;
}

function show(section) {
  $("login").hidden = section !== "login";
  $("dashboard").hidden = section !== "dashboard";
  $("filters").hidden = section !== "dashboard";
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function revenueText(byCurrency) {
  const parts = Object.entries(byCurrency || {}).map(
    ([currency, amount]) => `${amount.toLocaleString(undefined, { maximumFractionDigits: 2 })}${currency ? " " + currency : ""}`,
  );
  return parts.length ? parts.join(" · ") : "0";
}

function revenueTotal(byCurrency) {
  return Object.values(byCurrency || {}).reduce((a, b) => a + b, 0);
}

function trim(points) {
  const from = Date.now() - SPAN_MS - 10000;
  while (points.length && points[0][0] < from) points.shift();
}

function push(name, t, value) {
  const points = state.series[name];
  points.push([t, value]);
  trim(points);
}

function redraw() {
  drawSeries($("chart-rate"), state.series.rate, SPAN_MS, (v) => v.toFixed(1));
  drawSeries($("chart-errors"), state.series.error_pct, SPAN_MS, (v) => v.toFixed(1) + "%");
  drawSeries($("chart-p95"), state.series.p95_s, SPAN_MS, (v) => (v * 1000).toFixed(0) + " ms");
  drawSeries($("chart-revenue"), state.series.revenue, SPAN_MS, (v) => v.toFixed(0));
}

function setOptions(select, values, current, allLabel) {
  const wanted = ["", ...values];
  if (current && !wanted.includes(current)) wanted.push(current);
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\u0000") === wanted.join("\u0000")) return;
  select.replaceChildren(
    ...wanted.map((v) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = v || allLabel;
      return option;
    }),
  );
  select.value = current || "";
}

function renderAlerts(alerts, count) {
  const list = $("alerts");
  list.replaceChildren(
    ...alerts.map((a) => {
      const li = document.createElement("li");
      li.className = a.severity;
      li.dataset.fingerprint = a.fingerprint;
      const title = document.createElement("strong");
      title.textContent = a.rule_name;
      const st = document.createElement("span");
      st.className = "state";
      st.textContent = `${a.state} · ${a.severity}`;
      const detail = document.createElement("div");
      detail.className = "muted";
      const where = [a.tenant_id && `tenant ${a.tenant_id}`, a.labels && a.labels.service, a.labels && a.labels.endpoint]
        .filter(Boolean)
        .join(" · ");
      detail.textContent = [a.summary, where].filter(Boolean).join(" — ");
      li.append(title, st, detail);
      return li;
    }),
  );
  $("alert-count").textContent = String(count);
  $("alert-count").className = count ? "badge active" : "badge";
  $("no-alerts").hidden = count > 0;
}

function onSnapshot(event) {
  const s = JSON.parse(event.data);
  state.lastMessage = Date.now();
  const r = s.requests;
  $("rate").textContent = fmt(r.rate, 2);
  $("error-rate").textContent = fmt(r.error_pct, 1);
  $("p95").textContent = r.p95_s === null ? "–" : fmt(r.p95_s * 1000, 0);
  $("revenue").textContent = revenueText(s.revenue_today);
  renderAlerts(s.alerts, s.active_alerts);
  $("updated").textContent = new Date(s.at * 1000).toLocaleTimeString();
  const t = s.at * 1000;
  push("rate", t, r.rate);
  push("error_pct", t, r.error_pct);
  push("p95_s", t, r.p95_s);
  push("revenue", t, revenueTotal(s.revenue_today));
  setOptions($("tenant"), s.tenants, $("tenant").value, "all tenants");
  setOptions($("service"), s.services, $("service").value, "all services");
  if (s.stale) setStatus("stale", "live feed interrupted (Redis)");
  else setStatus("live", "live");
  redraw();
}

function onHistory(event) {
  const h = JSON.parse(event.data);
  for (const name of Object.keys(state.series)) state.series[name] = [];
  for (const p of h.points) {
    push("rate", p.at * 1000, p.rate);
    push("error_pct", p.at * 1000, p.error_pct);
    push("p95_s", p.at * 1000, p.p95_s);
  }
}

function streamUrl() {
  const q = new URLSearchParams();
  if ($("tenant").value && !state.restricted) q.set("tenant_id", $("tenant").value);
  if ($("service").value) q.set("service", $("service").value);
  const query = q.toString();
  return "/api/v1/metrics/stream" + (query ? "?" + query : "");
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(streamUrl());
  state.source = source;
  source.addEventListener("history", onHistory);
  source.addEventListener("snapshot", onSnapshot);
  source.onerror = () => {
    if (state.source !== source) return;
    setStatus("reconnecting", "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      // The server answered with an error (restarting, or the session ended): start over.
      source.close();
      state.source = null;
      setTimeout(start, 1000);
    }
  };
}

async function start() {
  let response;
  try {
    response = await fetch("/live/session", { credentials: "same-origin" });
  } catch (err) {
    setStatus("reconnecting", "reconnecting…");
    setTimeout(start, 1000);
    return;
  }
  if (response.status === 401) {
    if (state.source) state.source.close();
    state.source = null;
    setStatus("connecting", "logged out");
    show("login");
    return;
  }
  if (!response.ok) {
    setStatus("reconnecting", "reconnecting…");
    setTimeout(start, 1000);
    return;
  }
  const who = await response.json();
  state.restricted = who.tenant_id !== null;
  $("who").textContent = `${who.role}${who.tenant_id ? " · tenant " + who.tenant_id : ""}${who.name ? " · " + who.name : ""}`;
  if (state.restricted) {
    setOptions($("tenant"), [who.tenant_id], who.tenant_id, "all tenants");
    $("tenant").disabled = true;
  }
  show("dashboard");
  connect();
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  let response;
  try {
    response = await fetch("/live/session", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: $("key").value }),
      credentials: "same-origin",
    });
  } catch (err) {
    $("login-error").textContent = "The server cannot be reached; try again.";
    return;
  }
  $("key").value = "";
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("login-error").textContent = (body.error && body.error.message) || `HTTP ${response.status}`;
    return;
  }
  start();
}

async function logout() {
  await fetch("/live/session", { method: "DELETE", credentials: "same-origin" }).catch(() => null);
  if (state.source) state.source.close();
  state.source = null;
  show("login");
  setStatus("connecting", "logged out");
}

function refilter() {
  for (const name of Object.keys(state.series)) state.series[name] = [];
  connect();
}

// A feed that went silent (a half-open connection) is shown as such and re-opened.
setInterval(() => {
  if (state.source && state.lastMessage && Date.now() - state.lastMessage > STALE_MS) {
    setStatus("reconnecting", "reconnecting…");
    state.lastMessage = Date.now();
    connect();
  }
  if (!$("dashboard").hidden) redraw();
}, 1000);

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("tenant").addEventListener("change", refilter);
  $("service").addEventListener("change", refilter);
  start();
});
