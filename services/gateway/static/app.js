// The gateway dashboard: campaign status, a submission form, and live results over a
// WebSocket. Plain JavaScript, no dependencies; everything shown is set with textContent.
"use strict";

const API = "/api/v1";
const state = { token: "", socket: null, statusTimer: null, shown: new Set(), reconnect: null };

const $ = (id) => document.getElementById(id);

function headers() {
  return { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" };
}

function setConnection(text, kind) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = `state ${kind || ""}`;
}

async function api(path, options = {}) {
  const response = await fetch(API + path, { ...options, headers: headers() });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = body && body.detail ? JSON.stringify(body.detail) : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

async function refreshStatus() {
  try {
    const status = await api("/status");
    $("status-error").hidden = true;
    $("campaign").textContent = status.campaign;
    $("broker").textContent = status.broker_connected ? "connected" : "unreachable";
    $("in-flight").textContent = status.tasks_in_flight;
    const sum = (values) => Object.values(values).reduce((a, b) => a + b, 0);
    $("queued").textContent = sum(status.tasks_queued);
    $("waiting").textContent = sum(status.results_waiting);
    $("dead").textContent = status.dead_letters;
    const body = $("servers").querySelector("tbody");
    body.replaceChildren();
    for (const server of status.servers) {
      const row = document.createElement("tr");
      cell(row, server.server_id);
      cell(row, server.hostname || "");
      cell(row, server.methods.join(", "));
      cell(row, `${server.in_flight ?? "?"} / ${server.capacity ?? "?"}`);
      body.appendChild(row);
    }
    const list = $("methods");
    list.replaceChildren();
    for (const method of status.methods) {
      const option = document.createElement("option");
      option.value = method.name;
      list.appendChild(option);
    }
  } catch (error) {
    $("status-error").textContent = `Status unavailable (${error.message})`;
    $("status-error").hidden = false;
    if (String(error.message).startsWith("401")) disconnect("invalid token", "error");
  }
}

function showResult(result) {
  if (state.shown.has(result.task_id)) return; // delivered at least once: drop duplicates
  state.shown.add(result.task_id);
  const row = document.createElement("tr");
  row.dataset.taskId = result.task_id;
  row.className = "result";
  cell(row, result.task_id.slice(0, 8));
  cell(row, result.method || "");
  cell(row, result.client ? `${result.topic} (${result.client})` : result.topic);
  cell(row, result.success ? "success" : "failed", result.success ? "ok" : "failed");
  let text;
  if (!result.success) text = result.failure || "failed";
  else if (result.value_format === "pickle") text = "(pickled value, not shown)";
  else text = JSON.stringify(result.value);
  cell(row, text, "value");
  $("results").querySelector("tbody").prepend(row);
  $("result-count").textContent = state.shown.size;
}

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const mode = $("mode").value;
  const token = encodeURIComponent(state.token);
  if (mode === "receive") return `${scheme}://${location.host}${API}/results/ws?ack=client&token=${token}`;
  const scope = mode === "campaign" ? "campaign" : "own";
  return `${scheme}://${location.host}${API}/monitor/ws?scope=${scope}&token=${token}`;
}

function openStream() {
  const socket = new WebSocket(streamUrl());
  state.socket = socket;
  socket.onopen = () => setConnection("live", "open");
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type !== "result") return;
    showResult(message.result);
    if ($("mode").value === "receive") {
      socket.send(JSON.stringify({ type: "ack", task_ids: [message.result.task_id] }));
    }
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    if (event.code === 1008) {
      disconnect(event.reason || "refused", "error");
      return;
    }
    setConnection("reconnecting", "error");
    state.reconnect = setTimeout(openStream, 2000);
  };
}

function disconnect(text, kind) {
  clearInterval(state.statusTimer);
  clearTimeout(state.reconnect);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  setConnection(text || "disconnected", kind);
}

function connect(event) {
  event.preventDefault();
  disconnect("connecting");
  state.token = $("token").value.trim();
  sessionStorage.setItem("colmena-token", state.token);
  refreshStatus();
  state.statusTimer = setInterval(refreshStatus, 2000);
  openStream();
}

async function submit(event) {
  event.preventDefault();
  let args;
  try {
    args = JSON.parse($("args").value || "[]");
    if (!Array.isArray(args)) throw new Error("arguments must be a JSON list");
  } catch (error) {
    $("submitted").textContent = `Invalid arguments: ${error.message}`;
    return;
  }
  const task = { method: $("method").value, args, topic: $("topic").value || "default" };
  try {
    const answer = await api("/tasks", { method: "POST", body: JSON.stringify(task) });
    $("submitted").textContent = `Submitted task ${answer.task_id}`;
    $("submitted").dataset.taskId = answer.task_id;
  } catch (error) {
    $("submitted").textContent = `Not submitted: ${error.message}`;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("colmena-token") || "";
  $("login").addEventListener("submit", connect);
  $("submit").addEventListener("submit", submit);
});
