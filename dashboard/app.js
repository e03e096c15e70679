// Read-only incident queue for the demo: log in for a token, poll the API every 2 s.
"use strict";
let token = sessionStorage.getItem("token");
const clients = new Map();
const $ = (id) => document.getElementById(id);
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } });
  if (response.status === 401) { logout(); throw new Error("logged out"); }
  if (!response.ok) throw new Error(`${response.status}`);
  return response.json();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/v1/auth/token", { method: "POST", body: new URLSearchParams(new FormData(event.target)) });
  if (!response.ok) { $("login-error").textContent = "Wrong username or password."; return; }
  token = (await response.json()).access_token;
  sessionStorage.setItem("token", token);
  start();
});

function logout() {
  if (token) fetch("/api/v1/auth/logout", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  token = null; sessionStorage.removeItem("token");
  $("queue").hidden = true; $("login").hidden = false; $("logout").hidden = true; $("who").textContent = "";
}
$("logout").addEventListener("click", logout);

async function clientName(id) {
  if (id === null) return "(device not assigned)";
  if (!clients.has(id)) clients.set(id, api(`/api/v1/clients/${id}`).then((c) => `${escape(c.full_name)} (care ${c.care_level})`).catch(() => `client ${id}`));
  return clients.get(id);
}

function waiting(since) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
  const css = seconds < 60 ? "wait-green" : seconds <= 180 ? "wait-amber" : "wait-red";
  return `<span class="${css}">${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}</span>`;
}

async function refresh() {
  if (!token) return;
  try {
    const incidents = await api("/api/v1/incidents?status=open&status=acknowledged");
    $("banner").hidden = true;
    const rows = await Promise.all(incidents.map(async (i) =>
      `<tr class="p${i.priority}" data-id="${i.id}"><td>${i.id}</td><td>${i.priority}</td><td>${i.kind}</td>` +
      `<td>${await clientName(i.client_id)}</td><td>${waiting(i.opened_at)}</td><td>${i.signal_count}</td><td>${i.status}</td></tr>`));
    $("rows").innerHTML = rows.join("");
    $("count").textContent = `(${incidents.length})`;
    $("empty").hidden = incidents.length > 0;
    document.title = incidents.length ? `(${incidents.length}) alarmcentre` : "alarmcentre";
  } catch (error) {
    if (token) $("banner").hidden = false;
  }
}

$("rows").addEventListener("click", async (event) => {
  const row = event.target.closest("tr");
  if (!row) return;
  const incident = await api(`/api/v1/incidents/${row.dataset.id}`);
  $("detail").textContent = incident.timeline.map((e) => `${e.at}  ${e.kind}  ${e.actor}  ${JSON.stringify(e.details)}`).join("\n");
});

async function start() {
  try {
    const me = await api("/api/v1/auth/me");
    $("who").textContent = `${me.full_name || me.username} (${me.role})`;
  } catch { return; }
  $("login").hidden = true; $("queue").hidden = false; $("logout").hidden = false;
  refresh();
}

setInterval(refresh, 2000);
if (token) start();
