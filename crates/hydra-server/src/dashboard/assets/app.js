// Hydra dashboard: the fleet, live over GET /api/v1/events, with drain/undrain, move, explain
// and what-if; each head's body now; captures and their segments; the control plane's replicas.
// The admin token is asked once and kept in sessionStorage, never in a URL: the event stream is
// read with fetch() (which can send the Authorization header), not EventSource. Nothing is
// fetched before a token is given, and nothing but the token form is shown until an admin-only
// call accepted it (a node token would read the replicas' addresses).
"use strict";

const TOKEN_KEY = "hydra-admin-token";
const nodes = new Map();
// The fleet table's row of each node, so a change replaces one row without a document search.
const rows = new Map();
// Above this many nodes the venues start folded, so the first view stays quick.
const COLLAPSE_ABOVE = 500;
const openVenues = new Set();
let heartbeatTimeoutMs = 60000;
let connection = 0;
// Each head's first body now: {id, wg_only} or {id: null} (none) or {error}; absent: not asked.
const bodyNow = new Map();
// Online workers with a known agent: what a capture can read.
let captureNodes = [];

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(method, path, body) {
  const response = await fetch("/api/v1" + path, {
    method,
    headers: Object.assign({ Authorization: "Bearer " + token() }, body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) { askToken("The token was refused; enter it again."); throw Object.assign(new Error("unauthorized"), { auth: true }); }
  // Every call of this page needs the admin token: a node's own token is asked again.
  if (response.status === 403) { askToken("This is not the admin token; enter the admin token."); throw Object.assign(new Error("forbidden"), { auth: true }); }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.message ? data.message : "HTTP " + response.status);
  return data;
}

function setLive(text) { document.getElementById("live").textContent = text; }

// A failed call, said in the live line; a refused token has already said why.
function failed(prefix, error) { if (!error.auth) setLive(prefix + error.message); }

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  connection++;
  clearAdminViews();
  const panel = document.getElementById("token-panel");
  panel.hidden = false;
  if (message) setLive(message);
  document.getElementById("token-input").focus();
}

function shownStatus(node) {
  if (node.status === "offline") return "offline";
  if (node.status === "unreachable") return "unreachable";
  if (node.drained) return "drained";
  return "online";
}

function ago(rfc3339) {
  if (!rfc3339) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(rfc3339)) / 1000));
  return seconds < 120 ? seconds + " s ago" : Math.round(seconds / 60) + " min ago";
}

function renderFleet() {
  const root = document.getElementById("districts");
  rows.clear();
  const byDistrict = new Map();
  for (const node of [...nodes.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    if (!byDistrict.has(node.district)) byDistrict.set(node.district, new Map());
    const venues = byDistrict.get(node.district);
    if (!venues.has(node.venue)) venues.set(node.venue, []);
    venues.get(node.venue).push(node);
  }
  const fragment = document.createDocumentFragment();
  if (nodes.size === 0) fragment.append(el("p", {}, "No node is enrolled yet."));
  for (const district of [...byDistrict.keys()].sort()) {
    const section = el("section", { "aria-label": "District " + district, "data-district": district });
    section.append(el("h3", {}, "District " + district));
    const venues = byDistrict.get(district);
    for (const venue of [...venues.keys()].sort()) {
      const heading = el("h4", {}, "Venue " + venue + " ",
        el("button", { type: "button", "aria-label": "What if parked: venue " + venue, onclick: () => whatIf("venue:" + venue) }, "What if parked"));
      const table = el("table", { "data-venue": venue });
      table.append(el("caption", {}, "Nodes of venue " + venue));
      table.append(el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Node"), el("th", { scope: "col" }, "Roles"), el("th", { scope: "col" }, "Status"),
        el("th", { scope: "col", class: "wide" }, "Sessions"), el("th", { scope: "col", class: "wide" }, "VRAM"),
        el("th", { scope: "col" }, "Last heartbeat"), el("th", { scope: "col" }, "Body now"), el("th", { scope: "col" }, "Actions"))));
      const body = el("tbody");
      const members = venues.get(venue);
      const fill = () => {
        for (const node of members) {
          const row = nodeRow(node);
          rows.set(node.id, row);
          body.append(row);
        }
      };
      table.append(body);
      if (nodes.size <= COLLAPSE_ABOVE) {
        fill();
        section.append(heading, el("div", { class: "scroll" }, table));
      } else {
        // A big fleet shows each venue folded, with its counts; rows are built when opened.
        const key = district + "/" + venue;
        const count = (status) => members.filter((node) => shownStatus(node) === status).length;
        const details = el("details", { "data-venue-details": key },
          el("summary", {}, venue + ": " + members.length + " nodes, " + count("online") + " online, " +
            count("offline") + " offline, " + count("drained") + " drained"),
          el("div", { class: "scroll" }, table));
        details.addEventListener("toggle", () => {
          if (details.open) { openVenues.add(key); if (!body.firstChild) fill(); } else openVenues.delete(key);
        });
        if (openVenues.has(key)) { details.open = true; fill(); }
        section.append(heading, details);
      }
    }
    fragment.append(section);
  }
  root.replaceChildren(fragment);
}

function nodeRow(node) {
  const status = shownStatus(node);
  const actions = el("div", { class: "actions" });
  actions.append(el("button", {
    type: "button", "data-action": node.drained ? "undrain" : "drain",
    "aria-label": (node.drained ? "Undrain " : "Drain ") + node.id,
    onclick: () => setDrained(node.id, !node.drained),
  }, node.drained ? "Undrain" : "Drain"));
  actions.append(el("button", { type: "button", "data-action": "move", "aria-label": "Move " + node.id, onclick: () => openMove(node) }, "Move"));
  return el("tr", { "data-node-id": node.id },
    el("th", { scope: "row" }, node.name === node.id ? node.id : node.name + " (" + node.id + ")"),
    el("td", {}, node.roles.join(", ")),
    el("td", { "data-field": "status", class: "status-" + status }, status),
    el("td", { class: "wide" }, node.active_sessions),
    el("td", { class: "wide" }, node.vram_mb == null ? "-" : node.vram_mb + " MB"),
    el("td", {}, ago(node.last_heartbeat)),
    el("td", { "data-field": "body-now" }, node.roles.includes("head") ? bodyNowButton(node.id) : "-"),
    el("td", {}, actions));
}

// A head's body now, as a button that opens its explain trace.
function bodyNowButton(headId) {
  const known = bodyNow.get(headId);
  if (!known) wantBodies(headId);
  const text = !known ? "…" : known.error ? "unknown" : known.id === null ? "none" : known.id + (known.wg_only ? " (WireGuard only)" : "");
  return el("button", { type: "button", "data-action": "explain", "aria-label": "Why " + text + " for head " + headId, onclick: () => explain(headId) }, text);
}

// The heads whose body is asked for next, a few at a time, so a big fleet's first view is not
// held up and the server gets a bounded number of questions.
const bodiesWanted = new Set();
let bodiesRunning = false;
function wantBodies(headId) {
  bodiesWanted.add(headId);
  if (!bodiesRunning) { bodiesRunning = true; setTimeout(askBodies, 0); }
}
async function askBodies() {
  while (bodiesWanted.size && token()) {
    const batch = [...bodiesWanted].slice(0, 8);
    for (const id of batch) bodiesWanted.delete(id);
    await Promise.all(batch.map(async (headId) => {
      try {
        const answer = await api("GET", "/bodies/eligible?head_id=" + encodeURIComponent(headId));
        const first = answer.bodies[0];
        bodyNow.set(headId, first ? { id: first.id, wg_only: !!first.wg_only } : { id: null });
      } catch (error) { bodyNow.set(headId, { error: error.message }); }
      if (rows.has(headId)) queueRender(headId);
    }));
  }
  bodiesRunning = false;
}

// Any node change can change a head's body: the shown heads are asked again, at most every 5 s.
let bodiesStale = null;
function bodiesChanged() {
  if (bodiesStale) return;
  bodiesStale = setTimeout(() => {
    bodiesStale = null;
    for (const [id, node] of nodes) if (rows.has(id) && node.roles.includes("head")) wantBodies(id);
  }, 5000);
}

async function setDrained(id, drained) {
  try {
    const node = await api("POST", "/nodes/" + encodeURIComponent(id) + "/drain", { drained });
    nodes.set(node.id, node);
    renderFleet();
    setLive((drained ? "Drained " : "Undrained ") + id);
  } catch (error) { failed("Cannot change " + id + ": ", error); }
}

let moving = null;
function openMove(node) {
  moving = node.id;
  document.getElementById("move-node").textContent = "Move " + node.id + " (now " + node.district + "/" + node.venue + ")";
  document.getElementById("move-district").value = node.district;
  document.getElementById("move-venue").value = node.venue;
  document.getElementById("move-dialog").showModal();
}

const REASONS = {
  not_a_body: "not a body",
  offline: "offline (no recent heartbeat)",
  drained: "drained",
  other_owner: "other owner, not in allowed_orgs",
  named_unreachable: "named unreachable by the head",
  learned_unreachable: "reported unreachable on both paths by the head (remembered)",
  quickroute_open: "quickroute has a body in the head's venue",
};

function keyText(key) {
  switch (key.key) {
    case "latency": return "latency " + key.rtt_ms + " ms (" + Math.round(key.age_ms / 1000) + " s old)";
    case "unmeasured": return "unmeasured";
    case "own": return key.own ? "own" : "shared";
    case "cost_tier": return key.cost_tier;
    case "idle": return key.idle ? "idle" : "busy";
    case "vram_mb": return key.vram_mb + " MB VRAM";
    default: return key.key;
  }
}

async function explain(headId) {
  const panel = document.getElementById("explain-panel");
  try {
    const answer = await api("GET", "/bodies/eligible?head_id=" + encodeURIComponent(headId) + "&explain=true");
    const first = answer.bodies.length ? answer.bodies[0].id : "none";
    document.getElementById("explain-summary").textContent =
      "Head " + headId + ": policy " + answer.policy + ", first body " + first + ".";
    const body = document.querySelector("#explain-table tbody");
    body.replaceChildren(...answer.explain.map((entry) => el("tr", { "data-explain-id": entry.id },
      el("th", { scope: "row" }, entry.id),
      el("td", {}, entry.venue),
      el("td", {}, entry.rank ? "kept #" + entry.rank : "left out"),
      el("td", { "data-field": "why" }, entry.rank ? (entry.wg_only ? "WireGuard only, " : "") + entry.keys.map(keyText).join(", ") : REASONS[entry.reason] || entry.reason))));
    panel.hidden = false;
    panel.setAttribute("tabindex", "-1");
    panel.focus();
  } catch (error) { failed("Cannot explain head " + headId + ": ", error); }
}

async function whatIf(without) {
  try {
    const answer = await api("GET", "/bodies/what-if?without=" + encodeURIComponent(without));
    document.getElementById("what-if-summary").textContent = "Without " + answer.without + ": " +
      (answer.shortfall.length ? answer.shortfall.length + " head(s) left with nothing." : "every head keeps a body.") +
      (answer.sessions_needing_worker.length ? " " + answer.sessions_needing_worker.length + " session(s) would need a new worker." : "");
    document.getElementById("what-if-list").replaceChildren(...answer.heads.map((head) => el("li", {},
      "Head " + head.head_id + ": now " + (head.body_now || "none") + ", without " +
      (head.head_removed ? "(head removed)" : (head.body_without || "none")) + (head.shortfall ? " (shortfall)" : ""))));
    const panel = document.getElementById("what-if-panel");
    panel.hidden = false;
    panel.setAttribute("tabindex", "-1");
    panel.focus();
  } catch (error) { failed("Cannot answer what-if: ", error); }
}

async function refreshSessions(rethrow) {
  try {
    // One after the other: the workers' answer is the admin check before anything else is read.
    const workers = await api("GET", "/workers");
    const sessions = await api("GET", "/sessions");
    captureNodes = workers.workers.filter((worker) => worker.status === "online" && worker.agent_url).map((worker) => worker.id);
    renderCaptureForm();
    document.querySelector("#workers-table tbody").replaceChildren(...workers.workers.map((worker) => el("tr", { "data-worker-id": worker.id },
      el("th", { scope: "row" }, worker.id), el("td", {}, worker.venue),
      el("td", {}, worker.drained ? "drained" : worker.status + (worker.healthy ? "" : " (unhealthy)")),
      el("td", {}, worker.active_sessions + "/" + worker.max_sessions), el("td", {}, Math.round(worker.load * 100) + "%"))));
    document.querySelector("#sessions-table tbody").replaceChildren(...sessions.sessions.map((session) => {
      const live = session.status === "starting" || session.status === "running";
      return el("tr", { "data-session-id": session.session_id },
        el("th", { scope: "row" }, session.session_id), el("td", {}, session.worker_id),
        el("td", {}, session.body_id || session.body_ip), el("td", {}, session.status), el("td", {}, ago(session.updated_at)),
        el("td", {}, live ? el("button", { type: "button", "aria-label": "End session " + session.session_id, onclick: () => endSession(session.session_id) }, "End") : "-"));
    }));
  } catch (error) {
    failed("Cannot list sessions: ", error);
    if (rethrow) throw error;
  }
}

async function endSession(id) {
  try { await api("DELETE", "/sessions/" + encodeURIComponent(id)); setLive("Ended session " + id); refreshSessions(); }
  catch (error) { failed("Cannot end session " + id + ": ", error); }
}

let sessionsQueued = false;
function queueSessions() {
  if (sessionsQueued) return;
  sessionsQueued = true;
  setTimeout(() => { sessionsQueued = false; refreshSessions(); }, 300);
}

// Changes are drawn once per frame: a structural change (snapshot, enrol, remove, move) redraws
// the fleet; anything else replaces only the rows that changed, so 10,000 nodes under 100
// changes a second stay responsive.
let renderQueued = false;
let fullRender = false;
const changedRows = new Set();
function queueRender(id) {
  if (id === undefined) fullRender = true; else changedRows.add(id);
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (fullRender) {
      fullRender = false;
      changedRows.clear();
      renderFleet();
      return;
    }
    for (const id of changedRows) {
      const node = nodes.get(id);
      const row = rows.get(id);
      if (node && row) {
        const fresh = nodeRow(node);
        row.replaceWith(fresh);
        rows.set(id, fresh);
      }
    }
    changedRows.clear();
  });
}

function apply(name, data) {
  switch (name) {
    case "snapshot":
      heartbeatTimeoutMs = data.heartbeat_timeout_ms;
      nodes.clear();
      for (const node of data.nodes) nodes.set(node.id, node);
      queueRender();
      break;
    case "node_enrolled":
      queueSessions();
      nodes.set(data.id, data);
      queueRender();
      break;
    case "node_changed": {
      bodiesChanged();
      const before = nodes.get(data.id);
      nodes.set(data.id, data);
      const moved = !before || before.district !== data.district || before.venue !== data.venue;
      queueRender(moved ? undefined : data.id);
      break;
    }
    case "node_removed":
      queueSessions();
      nodes.delete(data.id);
      queueRender();
      break;
    case "node_status": {
      const node = nodes.get(data.id);
      if (node) { node.status = data.status; queueRender(data.id); bodiesChanged(); }
      // A worker going on or off line changes what a capture can read.
      queueSessions();
      break;
    }
    case "session":
      queueSessions();
      break;
    case "lagged":
      setLive("Live (resynced after missing " + data.missed + " events)");
      break;
  }
}

// Reads the event stream; reconnects (bounded backoff) when it ends.
async function listen() {
  const mine = ++connection;
  let delay = 500;
  while (mine === connection && token()) {
    try {
      const response = await fetch("/api/v1/events", { headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" } });
      if (response.status === 401 || response.status === 403) { askToken("The token was refused; enter it again."); return; }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setLive("Live");
      delay = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        // The token was asked again meanwhile: this stream's events are no longer shown.
        if (mine !== connection) { reader.cancel(); return; }
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (data) apply(name, JSON.parse(data));
        }
      }
    } catch (error) {
      failed("Disconnected, retrying: ", error);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

// The views that need the admin token: emptied and hidden whenever the token is asked again.
function clearAdminViews() {
  for (const id of ["captures-panel", "segments-panel", "replicas-panel", "explain-panel", "what-if-panel"]) document.getElementById(id).hidden = true;
  for (const selector of ["#workers-table tbody", "#sessions-table tbody", "#captures-table tbody", "#segments-table tbody", "#replicas-table tbody"]) {
    document.querySelector(selector).replaceChildren();
  }
  document.getElementById("replicas-summary").textContent = "";
  nodes.clear();
  bodyNow.clear();
  captureNodes = [];
  document.getElementById("districts").replaceChildren();
}

// Workers first: an admin-only call, so a wrong token is asked again before anything else
// (replicas, captures) is read with it.
async function start() {
  document.getElementById("token-panel").hidden = true;
  try { await refreshSessions(true); } catch (error) { return; }
  listen();
  refreshCaptures();
  refreshReplicas();
  if (!polling) polling = setInterval(poll, 5000);
}

// What sends no event is read again every 5 s: the replicas (mastership moves on its own) and
// the workers (a worker's report, which makes its agent known to captures).
let polling = null;
function poll() {
  if (!token() || !document.getElementById("token-panel").hidden) return;
  refreshReplicas();
  queueSessions();
}

async function refreshCaptures() {
  try {
    const answer = await api("GET", "/captures");
    renderCaptures(answer.captures);
  } catch (error) { failed("Cannot list captures: ", error); }
}

const capturesShown = new Map();
let segmentsOf = null;
function renderCaptures(captures) {
  capturesShown.clear();
  for (const capture of captures) capturesShown.set(capture.capture_id, capture);
  document.getElementById("captures-panel").hidden = false;
  document.querySelector("#captures-table tbody").replaceChildren(...captures.map((capture) => el("tr", { "data-capture-id": capture.capture_id },
    el("th", { scope: "row" }, capture.capture_id),
    el("td", { "data-field": "status" }, capture.status + (capture.termination_reason ? " (" + capture.termination_reason + ")" : "")),
    el("td", { "data-field": "nodes" }, capture.node_segments.length),
    el("td", { "data-field": "lines" }, capture.line_count),
    el("td", {}, ago(capture.created_at)),
    el("td", {}, el("div", { class: "actions" },
      el("button", { type: "button", "data-action": "segments", "aria-label": "Segments of capture " + capture.capture_id, onclick: () => showSegments(capture.capture_id) }, "Segments"),
      capture.status === "running" ? el("button", { type: "button", "data-action": "stop", "aria-label": "Stop capture " + capture.capture_id, onclick: () => stopCapture(capture.capture_id) }, "Stop") : "")))));
  if (segmentsOf && capturesShown.has(segmentsOf)) showSegments(segmentsOf, false);
  // Captures send no events: a running one is read again every 3 s.
  if (captures.some((capture) => capture.status === "running")) queueCaptures(3000);
}

let capturesQueued = null;
function queueCaptures(delay) {
  if (capturesQueued) return;
  capturesQueued = setTimeout(() => { capturesQueued = null; if (token()) refreshCaptures(); }, delay);
}

// The field's panel: "Fan-out segments (N nodes)", each node's address, status, line count and
// termination reason.
function showSegments(captureId, focus = true) {
  const capture = capturesShown.get(captureId);
  if (!capture) return;
  segmentsOf = captureId;
  const count = capture.node_segments.length;
  document.getElementById("segments-title").textContent = "Fan-out segments (" + count + (count === 1 ? " node)" : " nodes)");
  document.getElementById("segments-summary").textContent = "Capture " + captureId + ": " + capture.status +
    (capture.fan_out ? ", fanned out" : ", one node") + ", " + capture.line_count + " lines.";
  document.querySelector("#segments-table tbody").replaceChildren(...capture.node_segments.map((segment) => el("tr", { "data-segment-node": segment.node_id },
    el("th", { scope: "row" }, segment.node_id),
    el("td", { "data-field": "address" }, segment.address || "-"),
    el("td", { "data-field": "status" }, segment.status),
    el("td", { "data-field": "lines" }, segment.line_count),
    el("td", { "data-field": "reason" }, segment.termination_reason || "-"))));
  const panel = document.getElementById("segments-panel");
  panel.hidden = false;
  if (focus) { panel.setAttribute("tabindex", "-1"); panel.focus(); }
}

async function stopCapture(id) {
  try { await api("POST", "/captures/" + encodeURIComponent(id) + "/stop"); setLive("Stopped capture " + id); }
  catch (error) { failed("Cannot stop capture " + id + ": ", error); }
  refreshCaptures();
}

// The start form: one node, or (shown only when more than one node can be captured) every one.
function renderCaptureForm() {
  const select = document.getElementById("capture-node");
  const chosen = select.value;
  select.replaceChildren(...captureNodes.map((id) => el("option", { value: id }, id)));
  if (captureNodes.includes(chosen)) select.value = chosen;
  const many = captureNodes.length > 1;
  document.getElementById("fan-out-choice").hidden = !many;
  const fanOut = document.getElementById("capture-fan-out");
  if (!many) fanOut.checked = false;
  select.disabled = fanOut.checked;
  document.getElementById("capture-start").disabled = captureNodes.length === 0;
  document.getElementById("capture-nodes-note").textContent = captureNodes.length === 0
    ? "No online node with a known agent to capture." : captureNodes.length + (captureNodes.length === 1 ? " node" : " nodes") + " can be captured.";
}

async function refreshReplicas() {
  try {
    const [replicas, master] = await Promise.all([api("GET", "/replicas"), api("GET", "/check-master")]);
    document.getElementById("replicas-summary").textContent = "Master: " + (master.master_id || (replicas.find((replica) => replica.is_master) || {}).id || "none") +
      (master.term == null ? " (one replica on SQLite: no lease, no term)" : ", term " + master.term) + ".";
    document.querySelector("#replicas-table tbody").replaceChildren(...replicas.map((replica) => el("tr", { "data-replica-id": replica.id },
      el("th", { scope: "row" }, replica.id),
      el("td", { "data-field": "url" }, replica.base_url),
      el("td", { "data-field": "role" }, replica.is_master ? "master" : "follower"),
      el("td", { "data-field": "healthy" }, replica.is_healthy ? "healthy" : "unhealthy"),
      el("td", { "data-field": "lag" }, replica.lag_ms == null ? "on its own /health" : replica.lag_ms + " ms"))));
    document.getElementById("replicas-panel").hidden = false;
  } catch (error) { failed("Cannot list replicas: ", error); }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  start();
});

document.getElementById("capture-fan-out").addEventListener("change", renderCaptureForm);
document.getElementById("capture-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fanOut = document.getElementById("capture-fan-out").checked && captureNodes.length > 1;
  const duration = Number(document.getElementById("capture-duration").value);
  const request = fanOut ? { fan_out: true, duration } : { node_id: document.getElementById("capture-node").value, duration };
  try {
    const capture = await api("POST", "/captures", request);
    setLive("Started capture " + capture.capture_id + " on " + capture.node_segments.length + (capture.node_segments.length === 1 ? " node" : " nodes"));
    segmentsOf = capture.capture_id;
  } catch (error) { failed("Cannot start the capture: ", error); }
  refreshCaptures();
});

document.getElementById("move-cancel").addEventListener("click", () => document.getElementById("move-dialog").close());
document.getElementById("move-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const district = document.getElementById("move-district").value;
  const venue = document.getElementById("move-venue").value;
  document.getElementById("move-dialog").close();
  if (!moving || !window.confirm("Move " + moving + " to " + district + "/" + venue + "?")) return;
  try {
    const node = await api("POST", "/nodes/" + encodeURIComponent(moving) + "/district", { district, venue });
    nodes.set(node.id, node);
    renderFleet();
    setLive("Moved " + node.id + " to " + district + "/" + venue);
  } catch (error) { failed("Cannot move " + moving + ": ", error); }
});

// Last-heartbeat ages tick even when nothing changes.
setInterval(() => { if (nodes.size && nodes.size < 2000) queueRender(); }, 5000);

if (token()) start(); else askToken();
