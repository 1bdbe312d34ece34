// Hydra dashboard: the fleet, live over GET /api/v1/events, with drain/undrain, move, explain
// and what-if. The admin token is asked once and kept in sessionStorage, never in a URL: the
// event stream is read with fetch() (which can send the Authorization header), not EventSource.
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
  if (response.status === 401) { askToken("The token was refused; enter it again."); throw new Error("unauthorized"); }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.message ? data.message : "HTTP " + response.status);
  return data;
}

function setLive(text) { document.getElementById("live").textContent = text; }

function askToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
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
        el("th", { scope: "col" }, "Last heartbeat"), el("th", { scope: "col" }, "Actions"))));
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
  if (node.roles.includes("head")) {
    actions.append(el("button", { type: "button", "data-action": "explain", "aria-label": "Why this body for head " + node.id, onclick: () => explain(node.id) }, "Why"));
  }
  return el("tr", { "data-node-id": node.id },
    el("th", { scope: "row" }, node.name === node.id ? node.id : node.name + " (" + node.id + ")"),
    el("td", {}, node.roles.join(", ")),
    el("td", { "data-field": "status", class: "status-" + status }, status),
    el("td", { class: "wide" }, node.active_sessions),
    el("td", { class: "wide" }, node.vram_mb == null ? "-" : node.vram_mb + " MB"),
    el("td", {}, ago(node.last_heartbeat)),
    el("td", {}, actions));
}

async function setDrained(id, drained) {
  try {
    const node = await api("POST", "/nodes/" + encodeURIComponent(id) + "/drain", { drained });
    nodes.set(node.id, node);
    renderFleet();
    setLive((drained ? "Drained " : "Undrained ") + id);
  } catch (error) { setLive("Cannot change " + id + ": " + error.message); }
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
  } catch (error) { setLive("Cannot explain head " + headId + ": " + error.message); }
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
  } catch (error) { setLive("Cannot answer what-if: " + error.message); }
}

async function refreshSessions() {
  try {
    const [workers, sessions] = await Promise.all([api("GET", "/workers"), api("GET", "/sessions")]);
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
  } catch (error) { setLive("Cannot list sessions: " + error.message); }
}

async function endSession(id) {
  try { await api("DELETE", "/sessions/" + encodeURIComponent(id)); setLive("Ended session " + id); refreshSessions(); }
  catch (error) { setLive("Cannot end session " + id + ": " + error.message); }
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
      nodes.set(data.id, data);
      queueRender();
      break;
    case "node_changed": {
      const before = nodes.get(data.id);
      nodes.set(data.id, data);
      const moved = !before || before.district !== data.district || before.venue !== data.venue;
      queueRender(moved ? undefined : data.id);
      break;
    }
    case "node_removed":
      nodes.delete(data.id);
      queueRender();
      break;
    case "node_status": {
      const node = nodes.get(data.id);
      if (node) { node.status = data.status; queueRender(data.id); }
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
      setLive("Disconnected, retrying: " + error.message);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function start() {
  document.getElementById("token-panel").hidden = true;
  listen();
  refreshSessions();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token-input");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  start();
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
  } catch (error) { setLive("Cannot move " + moving + ": " + error.message); }
});

// Last-heartbeat ages tick even when nothing changes.
setInterval(() => { if (nodes.size && nodes.size < 2000) queueRender(); }, 5000);

if (token()) start(); else askToken();
