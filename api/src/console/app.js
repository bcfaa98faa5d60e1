// GeoNEX-core ops console: a client of the JSON API. The token lives in
// sessionStorage and goes in the Authorization header (no cookie, so nothing a
// third-party page sends carries it); live updates come from GET /events read
// with fetch, so the token never sits in a URL. The API enforces every role
// rule; buttons a role may not use are only disabled here.
"use strict";

const KEY = "geonex.token";
const ROLES = { user: 1, operator: 2, admin: 3 };
const $ = (sel) => document.querySelector(sel);

const state = {
  token: sessionStorage.getItem(KEY),
  role: "user",
  tab: "runners",
  runners: new Map(),
  lastCommand: new Map(),
  commands: [],
  commandsCursor: null,
  dead: new Map(),
  events: null,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c === null || c === undefined ? "" : c);
  return e;
}

function say(text, isError) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

function when(t) {
  return t ? new Date(t).toLocaleString() : "";
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers = Object.assign({ Authorization: "Bearer " + state.token }, opts.headers);
  const r = await fetch(path, opts);
  if (r.status === 401) {
    signOut("Your token was refused; sign in again.");
    throw new Error("unauthorized");
  }
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const err = (body && body.error) || { message: r.statusText };
    throw new Error(err.message + (err.field ? " (" + err.field + ")" : ""));
  }
  return body;
}

function post(path, fields) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(fields),
  });
}

// ---- session ----

function signIn(token) {
  state.token = token;
  sessionStorage.setItem(KEY, token);
  $("#login").hidden = true;
  $("#tabs").hidden = false;
  $("#session").hidden = false;
  connectEvents();
  show(state.tab);
}

function signOut(why) {
  sessionStorage.removeItem(KEY);
  state.token = null;
  if (state.events) state.events.abort();
  state.events = null;
  $("#login").hidden = false;
  $("#tabs").hidden = true;
  $("#session").hidden = true;
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("#login-error").textContent = why || "";
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await fetch("/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user_name: $("#login-user").value, password: $("#login-password").value }),
  });
  const body = await r.json().catch(() => null);
  $("#login-password").value = "";
  if (!r.ok || !body || !body.token) {
    $("#login-error").textContent = (body && body.error && body.error.message) || "login failed";
    return;
  }
  signIn(body.token);
});

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("#token-input").value.trim();
  $("#token-input").value = "";
  if (t) signIn(t);
});

$("#logout").addEventListener("click", async () => {
  try {
    await api("/logout", { method: "POST" });
  } catch (e) {
    // A service token cannot log out; forgetting it here is what matters.
  }
  signOut("");
});

function setRole(role) {
  state.role = role;
  $("#whoami").textContent = role;
  gate(document);
}

function may(role) {
  return (ROLES[state.role] || 0) >= (ROLES[role] || 99);
}

// Disables what this role may not do; the API would refuse it anyway.
function gate(root) {
  for (const b of root.querySelectorAll("[data-role]")) {
    const ok = may(b.getAttribute("data-role"));
    b.disabled = !ok;
    b.title = ok ? "" : "needs the " + b.getAttribute("data-role") + " role";
  }
}

// ---- live updates ----

async function connectEvents() {
  if (state.events) state.events.abort();
  const ctl = new AbortController();
  state.events = ctl;
  const live = $("#live");
  try {
    const r = await fetch("/events", { headers: { Authorization: "Bearer " + state.token }, signal: ctl.signal });
    if (r.status === 401) return signOut("Your token was refused; sign in again.");
    if (!r.ok || !r.body) throw new Error("events: " + r.status);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let name = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  live.textContent = "offline";
  live.className = "off";
  if (state.events === ctl && state.token) setTimeout(connectEvents, 2000);
}

function onEvent(name, data) {
  const live = $("#live");
  if (name === "ready") {
    live.textContent = "live";
    live.className = "on";
    setRole(data.role);
    // Subscribed first, then loaded: nothing committed in between is missed.
    show(state.tab);
  } else if (name === "resync") {
    show(state.tab);
  } else if (name === "end") {
    signOut(data.reason);
  } else if (name === "runner") {
    const r = state.runners.get(data.runner_id) || {};
    state.runners.set(data.runner_id, Object.assign(r, data));
    if (state.tab === "runners") renderRunners();
  } else if (name === "command") {
    onCommand(data);
  }
}

function onCommand(c) {
  if (c.runner_id) state.lastCommand.set(c.runner_id, c);
  const known = state.commands.find((x) => x.command_id === c.command_id);
  if (known) Object.assign(known, c);
  else if (!c.previous_status) state.commands.unshift(c);
  const dead = state.dead.get(c.command_id);
  if (dead) Object.assign(dead, c);
  else if (c.status === "dead") state.dead.set(c.command_id, c);
  deadCount();
  if (state.tab === "runners") renderRunners();
  if (state.tab === "commands") renderCommands();
  if (state.tab === "dead") renderDead();
}

// ---- pages ----

const loaders = {
  runners: loadRunners,
  commands: loadCommands,
  dead: loadDead,
  images: loadImages,
  usage: loadUsage,
  containers: loadContainers,
};

$("#tabs").addEventListener("click", (ev) => {
  const b = ev.target.closest("[data-tab]");
  if (b) show(b.getAttribute("data-tab"));
});

async function show(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs [data-tab]")) {
    b.classList.toggle("active", b.getAttribute("data-tab") === tab);
  }
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + tab;
  say("");
  try {
    await loaders[tab]();
  } catch (e) {
    if (e.message !== "unauthorized") say(e.message, true);
  }
  gate(document);
}

async function loadRunners() {
  const body = await api("/describe-runners?limit=1000");
  state.runners = new Map(body.runners.map((r) => [r.runner_id, r]));
  if (may("operator")) {
    const cmds = await api("/describe-commands?limit=1000");
    state.lastCommand = new Map();
    for (const c of cmds.commands) {
      if (c.runner_id && !state.lastCommand.has(c.runner_id)) state.lastCommand.set(c.runner_id, c);
    }
  }
  renderRunners();
}

function renderRunners() {
  const tbody = $("#runners tbody");
  tbody.replaceChildren();
  const rows = [...state.runners.values()].sort((a, b) => a.runner_id.localeCompare(b.runner_id));
  for (const r of rows) {
    const last = state.lastCommand.get(r.runner_id);
    tbody.append(
      el("tr", { "data-runner-id": r.runner_id },
        el("td", {}, r.runner_id),
        el("td", {}, r.runner_name),
        el("td", { class: "state state-" + r.observed_state }, r.observed_state),
        el("td", {}, r.desired_state),
        el("td", {}, r.instance_id || ""),
        el("td", {}, r.instance_type || ""),
        el("td", {}, r.image_name),
        el("td", {}, r.s3_output || ""),
        el("td", { class: last ? "status-" + last.status : "" }, last ? last.action + " " + last.status : ""),
        el("td", { class: "error" }, r.last_error || "")));
  }
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colSpan: 10 }, "No runners.")));
}

function commandQuery() {
  const f = new FormData($("#command-filter"));
  const q = new URLSearchParams();
  for (const [k, v] of f.entries()) if (v) q.set(k, v);
  q.set("limit", "100");
  return q;
}

$("#command-filter").addEventListener("submit", (ev) => {
  ev.preventDefault();
  show("commands");
});

$("#commands-more").addEventListener("click", async () => {
  const q = commandQuery();
  q.set("cursor", state.commandsCursor);
  const body = await api("/describe-commands?" + q);
  state.commands.push(...body.commands);
  state.commandsCursor = body.next_cursor;
  renderCommands();
});

async function loadCommands() {
  const body = await api("/describe-commands?" + commandQuery());
  state.commands = body.commands;
  state.commandsCursor = body.next_cursor;
  renderCommands();
}

function matchesFilter(c) {
  const q = commandQuery();
  for (const k of ["status", "action", "runner_id"]) {
    if (q.get(k) && c[k] !== q.get(k)) return false;
  }
  return true;
}

/** One command as a table row: when (`at` of a live event when the record has
 *  no time yet), what, its state, then the `extra` cells. */
function commandRow(c, at, ...extra) {
  return el("tr", { "data-command-id": c.command_id },
    el("td", {}, when(at || c.at)),
    el("td", {}, c.command_id),
    el("td", {}, c.action),
    el("td", {}, c.runner_id || ""),
    el("td", { class: "status status-" + c.status }, c.status),
    el("td", {}, String(c.attempts)),
    el("td", { class: "params" }, c.params ? JSON.stringify(c.params) : ""),
    el("td", { class: "error" }, c.last_error || ""),
    ...extra);
}

function renderCommands() {
  const tbody = $("#commands tbody");
  tbody.replaceChildren();
  for (const c of state.commands.filter(matchesFilter)) {
    const actions = el("td", {});
    if (["queued", "retrying", "waiting"].includes(c.status)) {
      actions.append(el("button", { type: "button", "data-act": "cancel", "data-id": c.command_id, "data-role": "operator" }, "Cancel"));
    }
    tbody.append(commandRow(c, c.created_at, el("td", {}, c.requested_by || ""), actions));
  }
  $("#commands-more").hidden = !state.commandsCursor;
  gate($("#commands"));
}

async function loadDead() {
  const body = await api("/describe-commands?status=dead&limit=1000");
  // Commands replayed from this page stay listed, so their progress shows.
  const kept = [...state.dead.values()].filter((c) => c.replayed && c.status !== "dead");
  state.dead = new Map(body.commands.map((c) => [c.command_id, c]));
  for (const c of kept) state.dead.set(c.command_id, c);
  deadCount();
  renderDead();
}

function deadCount() {
  const n = [...state.dead.values()].filter((c) => c.status === "dead").length;
  $("#dead-count").textContent = n ? "(" + n + ")" : "";
}

function renderDead() {
  const tbody = $("#dead tbody");
  tbody.replaceChildren();
  for (const c of state.dead.values()) {
    const actions = el("td", {});
    if (c.status === "dead") {
      actions.append(el("button", { type: "button", "data-act": "replay", "data-id": c.command_id, "data-role": "admin" }, "Replay"));
    }
    tbody.append(commandRow(c, c.finished_at, actions));
  }
  if (!state.dead.size) tbody.append(el("tr", {}, el("td", { colSpan: 9 }, "No dead commands.")));
  gate($("#dead"));
}

async function replay(fields) {
  const out = await post("/replay-command", fields);
  for (const id of out.replayed) {
    const c = state.dead.get(id) || { command_id: id };
    c.replayed = true;
    if (c.status === "dead") c.status = "queued";
    state.dead.set(id, c);
  }
  const skipped = out.skipped.map((s) => s.command_id + ": " + s.reason).join("; ");
  say("Replayed " + out.replayed.length + " command(s)." + (skipped ? " Skipped " + skipped : ""));
  deadCount();
  renderDead();
}

async function loadImages() {
  const status = $("#image-status").value;
  const body = await api("/describe-images?limit=1000" + (status ? "&status=" + status : ""));
  const tbody = $("#images tbody");
  tbody.replaceChildren();
  for (const i of body.images) {
    const actions = el("td", {});
    if (i.status === "pending") {
      actions.append(
        el("input", { placeholder: "reason (optional)", "data-reason-for": i.image_name }),
        el("button", { type: "button", "data-act": "approve", "data-id": i.image_name, "data-role": "admin" }, "Approve"),
        el("button", { type: "button", "data-act": "reject", "data-id": i.image_name, "data-role": "admin" }, "Reject"));
    }
    tbody.append(
      el("tr", { "data-image": i.image_name },
        el("td", {}, i.image_name),
        el("td", {}, i.owner),
        el("td", { class: "status" }, i.status),
        el("td", {}, i.organization || ""),
        el("td", {}, i.description || ""),
        el("td", {}, when(i.created_at)),
        el("td", {}, i.reason || ""),
        actions));
  }
  if (!body.images.length) tbody.append(el("tr", {}, el("td", { colSpan: 8 }, "Nothing to show.")));
}

$("#image-status").addEventListener("change", () => show("images"));

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

async function loadUsage() {
  const u = await api("/get-s3-usage");
  $("#usage-total").textContent = bytes(u.total_bytes) + " in " + u.total_objects + " objects";
  const tbody = $("#usage tbody");
  tbody.replaceChildren();
  for (const o of u.outputs) {
    tbody.append(
      el("tr", {},
        el("td", {}, o.s3_output),
        el("td", {}, bytes(o.bytes)),
        el("td", {}, String(o.objects)),
        el("td", {}, (o.runner_ids || []).join(", ")),
        el("td", {}, when(o.scanned_at) + (o.scanning ? " (scanning)" : "")),
        el("td", {}, o.stale ? "stale" : ""),
        el("td", { class: "error" }, o.error || "")));
  }
  if (!u.outputs.length) tbody.append(el("tr", {}, el("td", { colSpan: 7 }, "No outputs.")));
}

async function loadContainers() {
  const body = await api("/describe-runner-containers?per_runner=20");
  const root = $("#containers");
  root.replaceChildren();
  for (const r of body.runners) {
    const tbody = el("tbody", {});
    for (const c of r.containers) {
      tbody.append(
        el("tr", {},
          el("td", {}, when(c.started_at)),
          el("td", {}, c.container_id),
          el("td", { class: "status status-" + c.status }, c.status),
          el("td", {}, c.exit_code === null || c.exit_code === undefined ? "" : String(c.exit_code)),
          el("td", {}, c.input_url || ""),
          el("td", {}, when(c.finished_at))));
    }
    const head = el("tr", {}, ...["Started", "Container", "Status", "Exit", "Input", "Finished"].map((h) => el("th", {}, h)));
    root.append(el("h3", {}, r.runner_id + " — " + (r.runner_name || "")), el("table", {}, el("thead", {}, head), tbody));
  }
  if (!body.runners.length) root.append(el("p", {}, "No containers yet."));
}

// One listener for every action button: no inline handlers (the page's CSP forbids them).
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (!b || b.disabled) return;
  const id = b.getAttribute("data-id");
  try {
    switch (b.getAttribute("data-act")) {
      case "replay":
        await replay({ command_id: id });
        break;
      case "replay-action":
        await replay({ action: $("#replay-action").value });
        break;
      case "replay-all":
        await replay({ all: true });
        break;
      case "cancel": {
        const out = await post("/cancel-command", { command_id: id });
        say("Command " + id + " cancelled (" + out.last_error + ").");
        break;
      }
      case "approve":
      case "reject": {
        const reason = document.querySelector('[data-reason-for="' + CSS.escape(id) + '"]');
        const fields = { image_name: id };
        if (reason && reason.value) fields.reason = reason.value;
        await post("/" + b.getAttribute("data-act") + "-image", fields);
        say("Image " + id + " " + b.getAttribute("data-act") + (b.getAttribute("data-act") === "approve" ? "d." : "ed."));
        await loadImages();
        break;
      }
      case "scan":
        await api("/get-s3-usage?refresh=true");
        say("Scan requested.");
        await loadUsage();
        break;
    }
  } catch (e) {
    if (e.message !== "unauthorized") say(e.message, true);
  }
  gate(document);
});

if (state.token) signIn(state.token);
else signOut("");
