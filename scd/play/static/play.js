// scd play: draws the frames the server streams and sends the held key. Protocol: see scd/play/server.py.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("screen");
const ctx2d = canvas.getContext("2d");
const state = {
  ws: null, actions: [], keyToAction: new Map(), held: [], models: [], model: null,
  episode: 0, episodes: 1, paused: false, saving: false, frames: 0, arrivals: [], latencies: [],
};

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function say(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function setConnection(text, cls) {
  const el = $("connection");
  el.textContent = text;
  el.className = "badge " + cls;
}

// -- the page's controls, built from the server's hello ---------------------------------------------------
function buildLegend(actions) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const a of actions) {
    const row = document.createElement("div");
    row.className = "binding";
    row.dataset.action = a.name;
    const key = document.createElement("span");
    key.className = "key";
    if (a.keys.length) {
      a.label.split(" / ").forEach((label, i) => {
        if (i) key.append(" ");
        const kbd = document.createElement("kbd");
        kbd.textContent = label;
        key.append(kbd);
      });
    } else {
      key.textContent = a.id === 0 ? "no key" : "–";
    }
    const name = document.createElement("span");
    name.textContent = a.name;
    row.append(key, name);
    legend.append(row);
    for (const code of a.keys) state.keyToAction.set(code, a.name);
  }
}

function buildModels(models) {
  const box = $("models");
  box.replaceChildren();
  for (const m of models) {
    const b = document.createElement("button");
    b.id = "model-" + m.id;
    b.textContent = m.label;
    b.title = `${m.arch}, ${(m.params / 1e6).toFixed(1)}M parameters`;
    b.addEventListener("click", () => send({ type: "model", model: m.id }));
    box.append(b);
  }
}

function showStatus(s) {
  state.model = s.model;
  state.episode = s.episode;
  state.episodes = s.episodes;
  state.paused = s.paused;
  for (const m of state.models) $("model-" + m.id).classList.toggle("selected", m.id === s.model);
  const label = (state.models.find((m) => m.id === s.model) || {}).label || s.model;
  $("stat-model").textContent = label;
  $("pause").textContent = s.paused ? "Resume" : "Pause";
  $("model-info").textContent = `context episode ${s.episode + 1} of ${s.episodes}`;
  state.arrivals = [];
  state.latencies = [];
  if (s.paused) {
    $("stat-fps").textContent = "\u2013";
    say("paused");
  }
}

function highlightAction(name) {
  for (const row of $("legend").children) row.classList.toggle("active", row.dataset.action === name);
  $("stat-action").textContent = name;
}

// -- frames ------------------------------------------------------------------------------------------------
let image = null;

function drawFrame(buffer) {
  const view = new DataView(buffer);
  const headerLength = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  const rgb = new Uint8Array(buffer, 4 + headerLength);
  const { width, height } = header;
  if (canvas.width !== width || canvas.height !== height || !image) {
    canvas.width = width;
    canvas.height = height;
    image = ctx2d.createImageData(width, height);
  }
  const rgba = image.data;
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i];
    rgba[j + 1] = rgb[i + 1];
    rgba[j + 2] = rgb[i + 2];
    rgba[j + 3] = 255;
  }
  ctx2d.putImageData(image, 0, 0);

  // Frames per second as the page receives them (last second), latency as the model reports it (last 10).
  const now = performance.now();
  state.arrivals.push(now);
  while (state.arrivals.length && now - state.arrivals[0] > 1000) state.arrivals.shift();
  state.latencies.push(header.latency_ms);
  if (state.latencies.length > 10) state.latencies.shift();
  const n = state.arrivals.length;
  const fps = n > 1 ? (n - 1) / ((state.arrivals[n - 1] - state.arrivals[0]) / 1000) : 0;
  const latency = state.latencies.reduce((a, b) => a + b, 0) / state.latencies.length;
  state.frames = header.index;
  $("stat-fps").textContent = fps.toFixed(1);
  $("stat-latency").textContent = latency.toFixed(0) + " ms";
  $("stat-frame").textContent = String(header.index);
  highlightAction(state.actions[header.action].name);
  if ($("message").textContent === "paused") say("");
}

// -- messages ----------------------------------------------------------------------------------------------
function onMessage(event) {
  if (typeof event.data !== "string") {
    drawFrame(event.data);
    return;
  }
  const msg = JSON.parse(event.data);
  if (msg.type === "hello") {
    state.actions = msg.actions;
    state.models = msg.models;
    buildLegend(msg.actions);
    buildModels(msg.models);
    showStatus(msg);
    for (const id of ["pause", "reset", "next", "save"]) $(id).disabled = false;
    const per = msg.models.map((m) => `${m.label} ${msg.steps[m.id]} steps, ${msg.windows[m.id]} frames of history`);
    const world = msg.shared_world ? "every page shares this world" : "this page plays its own world";
    say(`${world}; per frame: ${per.join("; ")}`);
  } else if (msg.type === "status") {
    showStatus(msg);
  } else if (msg.type === "saved") {
    const link = document.createElement("a");
    link.href = msg.url;
    link.download = msg.name;
    link.textContent = `Download ${msg.name}`;
    $("download").replaceChildren(link, ` (${msg.frames} frames)`);
    state.saving = false;
    $("save").disabled = false;
  } else if (msg.type === "error") {
    say(msg.message, true);
    if (state.saving) $("download").textContent = "";
    state.saving = false;
    $("save").disabled = false;
  }
}

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.addEventListener("open", () => setConnection("live", "live"));
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", (e) => {
    setConnection("disconnected", "down");
    say(`connection closed${e.reason ? ": " + e.reason : ""}; reload the page to reconnect`, true);
    for (const id of ["pause", "reset", "next", "save"]) $(id).disabled = true;
  });
  state.ws = ws;
}

// -- keyboard: the action for the next frame is the latest key still held, or noop -----------------------
function sendHeld() {
  send({ type: "action", action: state.held.length ? state.held[state.held.length - 1] : "noop" });
}

window.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return; // leave the browser's shortcuts alone
  const name = state.keyToAction.get(e.code);
  if (!name) return;
  e.preventDefault();
  if (e.repeat) return;
  state.held = state.held.filter((n) => n !== name);
  state.held.push(name);
  sendHeld();
});

window.addEventListener("keyup", (e) => {
  const name = state.keyToAction.get(e.code);
  if (!name) return;
  e.preventDefault();
  const top = state.held[state.held.length - 1];
  state.held = state.held.filter((n) => n !== name);
  if (top === name) sendHeld();
});

window.addEventListener("blur", () => {
  if (state.held.length) {
    state.held = [];
    sendHeld();
  }
});

// -- buttons (blurred after a click, so Space acts in the game instead of pressing the button again) -------
function onClick(id, handler) {
  $(id).addEventListener("click", (e) => {
    handler();
    e.currentTarget.blur();
  });
}
onClick("pause", () => send({ type: "pause", paused: !state.paused }));
onClick("reset", () => send({ type: "reset", episode: state.episode }));
onClick("next", () => send({ type: "reset", episode: (state.episode + 1) % state.episodes }));
onClick("save", () => {
  state.saving = true;
  $("save").disabled = true;
  $("download").textContent = "saving\u2026";
  send({ type: "save" });
});
document.addEventListener("click", (e) => {
  if (e.target.closest("#models button")) e.target.blur();
});

connect();
