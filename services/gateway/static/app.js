// The gateway's dashboard: an operator's console for one campaign. Sign in once (the token
// comes from the address `colmena launch` prints, `#token=...`, or from the sign-in box and
// stays in this tab's sessionStorage), then watch the campaign: status tiles, charts of its
// recent history, task servers, results by method, a live task table with search, the dead
// letters (requeue, purge) and a submission form. Plain JavaScript, no dependencies;
// everything shown is set with textContent.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "colmena-token";
const THEME_KEY = "colmena-theme";
const MAX_ROWS = 1000;
const state = {
  token: "",
  client: "",
  monitor: false,
  socket: null,
  timers: [],
  reconnect: null,
  rows: new Map(),
  deadListed: 0,
  deadListedAt: 0,
  history: { points: [], now: 0, started: 0, interval: 2, methods: {} },
};

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------ helpers
class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(API + path, {
      ...options,
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    });
  } catch (error) {
    throw new ApiError(0, "the gateway is not reachable");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    let detail = response.statusText || "error";
    if (body && typeof body.detail === "string") detail = body.detail;
    else if (body && body.detail) detail = JSON.stringify(body.detail);
    throw new ApiError(response.status, detail);
  }
  return body;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function cell(row, text, className, title) {
  const td = element("td", text, className);
  if (title) td.title = title;
  row.appendChild(td);
  return td;
}

function clock(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds === 0) return "0";
  if (seconds < 0.001) return `${Math.round(seconds * 1e6)} µs`;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function showAlert(id, text) {
  const box = $(id);
  box.textContent = text;
  box.hidden = !text;
}

function setIndicator(id, text, kind) {
  const badge = $(id);
  badge.textContent = text;
  badge.className = `indicator ${kind || ""}`;
}

const sum = (values) => Object.values(values || {}).reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------------------- sign-in
function tokenFromAddress() {
  // `colmena launch` prints http://host:port/#token=...: take it, then remove it from the
  // address (and the browser's history) so it is not shared or bookmarked by accident
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  if (token !== null) history.replaceState(null, "", location.pathname + location.search);
  return token;
}

function showLogin(message) {
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("whoami").hidden = true;
  $("login-panel").hidden = false;
  showAlert("login-error", message || "");
  $("token").focus();
}

async function signIn(token) {
  stopAll("connecting", "warn");
  clearResults();
  state.token = token;
  let status;
  try {
    status = await api("/status");
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      setIndicator("connection", "not signed in", "bad");
      showLogin(`The gateway refused this token (${error.message}).`);
      return;
    }
    status = null; // the token may be right: show the console and what went wrong
    showAlert("status-error", `Status unavailable (${error.message})`);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-panel").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  if (status) applyStatus(status);
  try {
    applyHistory(await api("/monitor/history"), true);
    state.monitor = true;
  } catch (error) {
    // 403: not a monitoring client. Anything else passes: the history is asked again soon
    state.monitor = error.status !== 403;
    if (state.monitor) showAlert("status-error", `History unavailable (${error.message})`);
    $("not-monitor").textContent =
      `Client ${state.client || ""} sees its own results only. The campaign's charts, ` +
      "methods and dead letters need a monitoring client (COLMENA_GATEWAY_MONITORS).";
  }
  document.body.classList.toggle("monitor", state.monitor);
  $("whoami").textContent = `client ${state.client}${state.monitor ? " · monitor" : ""}`;
  $("not-monitor").hidden = state.monitor;
  $("mode").querySelector("option[value=campaign]").disabled = !state.monitor;
  $("mode").value = state.monitor ? "campaign" : "watch";
  state.timers.push(setInterval(refreshStatus, 2000));
  if (state.monitor) {
    state.timers.push(setInterval(refreshHistory, 2000));
    // Listing dead letters takes them from their queue for a moment: do it when their count
    // changes (at most every 5 s), every 30 s, and when asked
    state.timers.push(setInterval(refreshDeadLetters, 30000));
    refreshDeadLetters();
  }
  openStream();
}

function stopAll(text, kind) {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  clearTimeout(state.reconnect);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  setIndicator("connection", text || "disconnected", kind);
}

function signOut() {
  stopAll("signed out");
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  $("token").value = "";
  clearResults();
  showLogin("");
}

// ----------------------------------------------------------------------------- status
async function refreshStatus() {
  try {
    applyStatus(await api("/status"));
    showAlert("status-error", "");
  } catch (error) {
    if (error.status === 401) {
      stopAll("refused", "bad");
      showLogin(`The gateway no longer accepts this token (${error.message}).`);
      return;
    }
    showAlert("status-error", `Status unavailable (${error.message})`);
    setIndicator("broker-state", "broker ?", "warn");
  }
}

function applyStatus(status) {
  state.client = status.client;
  $("campaign").textContent = status.campaign;
  document.title = `${status.campaign} · Colmena`;
  $("whoami").textContent = `client ${status.client}${state.monitor ? " · monitor" : ""}`;
  $("whoami").hidden = false;
  $("broker-state").replaceChildren("broker ", element("b", status.broker_connected ? "connected" : "unreachable"));
  $("broker-state").className = `indicator ${status.broker_connected ? "ok" : "bad"}`;
  $("servers-count").textContent = status.servers.length;
  const capacity = status.servers.reduce((total, s) => total + (s.capacity || 0), 0);
  $("in-flight").textContent = status.tasks_in_flight;
  $("capacity").textContent = capacity ? `${capacity} workers` : "";
  $("queued").textContent = sum(status.tasks_queued);
  $("waiting").textContent = sum(status.results_waiting);
  $("waiting-for").textContent = `for client ${status.client}`;
  $("dead").textContent = status.dead_letters;
  const listable = Math.min(status.dead_letters, 100); // the list shows the oldest 100
  if (state.monitor && listable !== state.deadListed && Date.now() - state.deadListedAt > 5000) {
    refreshDeadLetters();
  }
  $("dead-tile").classList.toggle("alarm", status.dead_letters > 0);
  const body = $("servers").querySelector("tbody");
  body.replaceChildren();
  const now = Date.now() / 1000;
  for (const server of status.servers) {
    const row = document.createElement("tr");
    cell(row, server.server_id, "mono nowrap");
    cell(row, server.hostname || "");
    cell(row, server.methods.join(", "));
    cell(row, `${server.in_flight ?? "?"} / ${server.capacity ?? "?"}`, "num");
    cell(row, `${Math.max(0, Math.round(now - server.last_seen))} s ago`, "num muted");
    body.appendChild(row);
  }
  if (!status.servers.length) {
    const row = document.createElement("tr");
    cell(row, "No task server has sent a heartbeat recently.", "muted").colSpan = 5;
    body.appendChild(row);
  }
  const list = $("methods");
  list.replaceChildren();
  for (const method of status.methods) {
    const option = document.createElement("option");
    option.value = method.name;
    list.appendChild(option);
  }
  if (!state.monitor) $("completed").textContent = state.rows.size;
}

// ---------------------------------------------------------------------------- history
async function refreshHistory() {
  try {
    applyHistory(await api(`/monitor/history?since=${state.history.now}`), false);
  } catch (error) {
    if (error.status !== 401) showAlert("status-error", `History unavailable (${error.message})`);
  }
}

function applyHistory(answer, first) {
  const history = state.history;
  if (first) history.points = [];
  history.points.push(...answer.points);
  const oldest = answer.now - 3600;
  while (history.points.length && history.points[0].time < oldest) history.points.shift();
  history.now = answer.now;
  history.started = answer.started;
  history.interval = answer.interval;
  history.methods = answer.methods;
  if ($("mode").value === "campaign" || first) {
    for (const result of answer.recent) addResult(result, result.seen);
  }
  let ok = 0;
  let failed = 0;
  for (const counts of Object.values(answer.methods)) {
    ok += counts.success;
    failed += counts.failure;
  }
  $("completed").textContent = ok + failed;
  $("outcomes").replaceChildren(
    element("span", `${ok} ok`, "ok"), " · ", element("span", `${failed} failed`, failed ? "bad" : ""));
  const recent = history.points.filter((p) => p.time > answer.now - 60);
  const done = recent.reduce((total, p) => total + p.succeeded + p.failed, 0);
  $("rate").textContent = recent.length ? (done / (recent.length * history.interval)).toFixed(1) : "–";
  drawMethods();
  drawCharts();
}

function drawMethods() {
  const body = $("methods-table").querySelector("tbody");
  body.replaceChildren();
  const entries = Object.entries(state.history.methods);
  const most = Math.max(1, ...entries.map(([, c]) => c.success + c.failure));
  for (const [name, counts] of entries) {
    const row = document.createElement("tr");
    row.dataset.method = name;
    cell(row, name, "mono");
    cell(row, counts.success, "num ok");
    cell(row, counts.failure, counts.failure ? "num bad" : "num muted");
    const bar = element("div", null, "bar");
    const good = element("span", null, "bar-ok");
    const bad = element("span", null, "bar-bad");
    good.style.width = `${(100 * counts.success) / most}%`; // CSSOM, allowed by the CSP
    bad.style.width = `${(100 * counts.failure) / most}%`;
    bar.append(good, bad);
    const td = cell(row, null, "bar-col");
    td.appendChild(bar);
    body.appendChild(row);
  }
  if (!entries.length) {
    const row = document.createElement("tr");
    cell(row, "No results yet.", "muted").colSpan = 4;
    body.appendChild(row);
  }
}

function drawCharts() {
  if (!state.monitor || $("console").hidden) return;
  const history = state.history;
  const to = history.now;
  const span = Number($("window").value);
  // The window, or the whole history when it is shorter (at least ten points wide)
  const shortest = 10 * history.interval;
  const first = history.points.length ? history.points[0].time - history.interval : to - shortest;
  const from = Math.max(to - span, Math.min(first, to - shortest));
  const points = history.points;
  const per = (key) => points.map((p) => [p.time, p[key] / history.interval]);
  const okColour = getComputedStyle(document.documentElement).getPropertyValue("--ok").trim();
  const badColour = getComputedStyle(document.documentElement).getPropertyValue("--bad").trim();
  Charts.draw($("chart-throughput"), {
    kind: "bars", from, to, interval: history.interval,
    series: [
      { name: "succeeded", color: okColour, values: per("succeeded") },
      { name: "failed", color: badColour, values: per("failed") },
    ],
    format: (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1)),
    empty: "No results in this window",
  });
  Charts.draw($("chart-latency"), {
    kind: "line", from, to,
    series: [
      { name: "median", values: points.map((p) => [p.time, p.latency_p50]) },
      { name: "95th percentile", values: points.map((p) => [p.time, p.latency_p95]) },
      { name: "running (median)", values: points.map((p) => [p.time, p.running_p50]) },
    ],
    format: duration,
    empty: "No results in this window",
  });
  const servers = new Set();
  for (const p of points) for (const id of Object.keys(p.servers)) servers.add(id);
  Charts.draw($("chart-utilisation"), {
    kind: "line", from, to, max: 100,
    series: [...servers].sort().map((id) => ({
      name: id,
      values: points.map((p) => {
        const s = p.servers[id];
        // In flight counts the tasks a server holds, running or about to: at most all busy
        return [p.time, s && s.capacity ? (100 * Math.min(s.in_flight || 0, s.capacity)) / s.capacity : null];
      }),
    })),
    format: (v) => `${Math.round(v)}%`,
    empty: "No task server in this window",
  });
  const queues = new Set();
  for (const p of points) for (const name of Object.keys(p.queues || {})) queues.add(name);
  // Busy queues first, so that the legend names them
  const peak = (name) => Math.max(0, ...points.map((p) => (p.queues && p.queues[name]) || 0));
  const ordered = [...queues].sort((a, b) => peak(b) - peak(a) || a.localeCompare(b));
  Charts.draw($("chart-queues"), {
    kind: "line", from, to,
    series: ordered.map((name) => ({
      name,
      values: points.map((p) => [p.time, p.queues && name in p.queues ? p.queues[name] : null]),
    })),
    format: (v) => String(Math.round(v)),
    integer: true,
    empty: "Queue depths not read yet",
  });
}

// ----------------------------------------------------------------------------- tasks
function addResult(result, seen) {
  // One row per task: a result delivered again, or a task's later (intermediate or final)
  // result, takes the place of the row shown
  const shown = state.rows.get(result.task_id);
  const row = document.createElement("tr");
  row.dataset.taskId = result.task_id;
  row.className = result.success ? "result" : "result failed-row";
  const timings = result.timings || {};
  cell(row, clock(seen || timings.time_result_sent || Date.now() / 1000), "muted nowrap");
  cell(row, result.task_id.slice(0, 8), "mono", result.task_id);
  cell(row, result.method || "", "mono");
  cell(row, result.client ? `${result.client} / ${result.topic}` : result.topic);
  const outcome = cell(row, null);
  outcome.appendChild(element("span", result.success ? "success" : "failed", result.success ? "badge ok" : "badge bad"));
  cell(row, duration(timings.time_running), "num");
  const latency = timings.time_result_sent && timings.time_created ? timings.time_result_sent - timings.time_created : null;
  cell(row, duration(latency), "num");
  let text;
  if (!result.success) text = result.failure || "failed";
  else if (result.value_format === "pickle") text = "(pickled value, not shown)";
  else text = JSON.stringify(result.value);
  const value = cell(row, text.split("\n")[0], result.success ? "value" : "value failure", text);
  value.addEventListener("click", () => {
    value.textContent = value.textContent === text ? text.split("\n")[0] : text;
    value.classList.toggle("expanded");
  });
  row.dataset.search = [result.task_id, result.method, result.topic, result.client,
    result.success ? "success" : "failed", text, JSON.stringify(result.task_info || {})].join(" ").toLowerCase();
  row.hidden = !matches(row);
  if (shown) shown.replaceWith(row);
  else $("results").querySelector("tbody").prepend(row);
  state.rows.set(result.task_id, row);
  if (state.rows.size > MAX_ROWS) {
    const oldest = $("results").querySelector("tbody").lastElementChild;
    state.rows.delete(oldest.dataset.taskId);
    oldest.remove();
  }
  countRows();
}

function matches(row) {
  if ($("failures-only").checked && !row.classList.contains("failed-row")) return false;
  const terms = $("search").value.toLowerCase().split(/\s+/).filter(Boolean);
  return terms.every((term) => row.dataset.search.includes(term));
}

function filterRows() {
  for (const row of state.rows.values()) row.hidden = !matches(row);
  countRows();
}

function countRows() {
  let shown = 0;
  for (const row of state.rows.values()) if (!row.hidden) shown += 1;
  const total = state.rows.size;
  $("result-count").textContent = shown === total ? String(total) : `${shown} of ${total}`;
  $("results-empty").hidden = shown > 0;
  $("results-empty").textContent = total ? "No task matches the search." : "No results yet.";
}

function clearResults() {
  state.rows.clear();
  $("results").querySelector("tbody").replaceChildren();
  countRows();
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
  setIndicator("connection", "connecting", "warn");
  socket.onopen = () => setIndicator("connection", "live", "ok");
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type !== "result") return;
    addResult(message.result, Date.now() / 1000);
    if ($("mode").value === "receive") {
      socket.send(JSON.stringify({ type: "ack", task_ids: [message.result.task_id] }));
    }
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    if (event.code === 1008) {
      setIndicator("connection", `stream refused: ${event.reason || "policy"}`, "bad");
      return;
    }
    setIndicator("connection", "reconnecting", "warn");
    state.reconnect = setTimeout(openStream, 2000);
  };
}

function changeMode() {
  clearTimeout(state.reconnect);
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  clearResults();
  openStream();
}

// ----------------------------------------------------------------------- dead letters
async function refreshDeadLetters() {
  state.deadListedAt = Date.now();
  let answer;
  try {
    answer = await api("/status/dead-letters?limit=100");
  } catch (error) {
    showDeadNote(`Dead letters unavailable (${error.message})`, true);
    return;
  }
  const letters = answer.dead_letters;
  state.deadListed = letters.length;
  const body = $("dead-letters").querySelector("tbody");
  body.replaceChildren();
  for (const letter of letters) {
    const row = document.createElement("tr");
    cell(row, clock(letter.time), "muted nowrap");
    cell(row, letter.reason, "mono");
    cell(row, letter.method || "", "mono");
    cell(row, letter.task_id ? letter.task_id.slice(0, 8) : "", "mono", letter.task_id || "");
    cell(row, letter.queue || letter.routing_keys.join(", "), "mono");
    cell(row, letter.error || "", letter.error ? "failure" : "");
    const actions = cell(row, null, "actions");
    if (letter.task_id) { // undecodable letters have no task: only "purge all" removes them
      row.dataset.taskId = letter.task_id;
      for (const action of ["requeue", "purge"]) {
        const button = element("button", action, action === "purge" ? "small danger" : "small");
        button.type = "button";
        button.addEventListener("click", () => deadLetterAction(action, [letter.task_id]));
        actions.appendChild(button);
      }
    }
    body.appendChild(row);
  }
  $("dead-count").textContent = letters.length >= 100 ? "100+" : String(letters.length);
  $("dead-empty").hidden = letters.length > 0;
  $("dead-requeue").disabled = !letters.length;
  $("dead-purge").disabled = !letters.length;
}

function showDeadNote(text, bad) {
  const note = $("dead-note");
  note.textContent = text;
  note.hidden = !text;
  note.className = bad ? "alert" : "note";
}

async function deadLetterAction(action, taskIds) {
  const what = taskIds ? `the dead letter of task ${taskIds[0]}` : `the ${$("dead-count").textContent} dead letter(s)`;
  const question = action === "purge"
    ? `Delete ${what} of campaign ${$("campaign").textContent}? It cannot be undone.`
    : `Send ${what} back to be delivered again (requests to their method's queue, results to their client)?`;
  if (!window.confirm(question)) return;
  try {
    const body = JSON.stringify(taskIds ? { task_ids: taskIds } : {});
    const answer = await api(`/monitor/dead-letters/${action}`, { method: "POST", body });
    const done = action === "purge" ? answer.purged : answer.requeued;
    let text = `${action === "purge" ? "Purged" : "Requeued"} ${done} dead letter(s).`;
    if (action === "requeue" && answer.remaining) {
      text += ` ${answer.remaining} stay: messages that cannot be decoded go nowhere (purge them).`;
    }
    showDeadNote(text, false);
  } catch (error) {
    showDeadNote(`Could not ${action} the dead letters (${error.message})`, true);
  }
  refreshDeadLetters();
  refreshStatus();
}

// ----------------------------------------------------------------------------- submit
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
    $("submitted").textContent = `Not submitted (${error.message})`;
  }
}

// ------------------------------------------------------------------------------ theme
function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  $("theme").textContent = `Theme: ${theme === "light" || theme === "dark" ? theme : "auto"}`;
  drawCharts();
}

function cycleTheme() {
  const order = ["auto", "light", "dark"];
  const next = order[(order.indexOf(localStorage.getItem(THEME_KEY) || "auto") + 1) % order.length];
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
}

// ------------------------------------------------------------------------------- start
window.addEventListener("DOMContentLoaded", () => {
  applyTheme(localStorage.getItem(THEME_KEY) || "auto");
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawCharts);
  $("theme").addEventListener("click", cycleTheme);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", signOut);
  $("submit").addEventListener("submit", submit);
  $("search").addEventListener("input", filterRows);
  $("failures-only").addEventListener("change", filterRows);
  $("mode").addEventListener("change", changeMode);
  $("window").addEventListener("change", drawCharts);
  $("dead-refresh").addEventListener("click", refreshDeadLetters);
  $("dead-requeue").addEventListener("click", () => deadLetterAction("requeue"));
  $("dead-purge").addEventListener("click", () => deadLetterAction("purge"));
  for (const canvas of document.querySelectorAll("canvas.chart")) {
    const readout = element("p", null, "readout");
    readout.hidden = true;
    canvas.after(readout);
    Charts.attachReadout(canvas, readout);
  }
  new ResizeObserver(() => drawCharts()).observe($("charts"));
  window.addEventListener("hashchange", () => { // the launcher's address opened again
    const given = tokenFromAddress();
    if (given) signIn(given);
  });
  const token = tokenFromAddress() || sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showLogin("");
});
