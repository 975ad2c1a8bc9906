// The robot dashboard: one websocket (`/ws`, the key as its first message) carries the daemon's events;
// the camera is fetched with the key header when a new frame is announced; e-stop/reset are POSTs.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_PLANS = 8; // plans kept on the page
const MAX_EVENTS = 50;

const view = {
  socket: null,
  cameraBusy: false,
  cameraUrl: null,
  frames: [], // arrival times, for the measured camera rate
  trail: [],
  plans: new Map(), // plan id -> {root, text, rounds, unverified: [span]}
  closedByUs: false,
};

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/ws");
  view.socket = socket;
  socket.onopen = () => {
    socket.send(JSON.stringify({ key: storedKey() }));
    el("conn").textContent = "live";
  };
  socket.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (Array.isArray(data)) data.forEach(handle);
    else handle(data);
  };
  socket.onclose = () => {
    el("conn").textContent = "disconnected; reconnecting…";
    if (!view.closedByUs) setTimeout(connect, 1000);
  };
}

function handle(event) {
  switch (event.kind) {
    case "hello": return onHello(event);
    case "error":
      view.closedByUs = true;
      return loggedOut(event.error.message);
    case "status": return onStatus(event.status, event.rtt_ms);
    case "frame": return onFrame(event.frame);
    case "safety": return onSafety(event);
    case "plan_start": return planStart(event);
    case "tokens": return planTokens(event);
    case "verified": return planConfirm(event);
    case "retract": return planRetract(event);
    case "round": return planRound(event);
    case "plan_end": return planEnd(event);
    case "dropped":
      el("dropped").textContent = "(this browser fell behind: " + event.events + " events skipped)";
      return;
  }
}

function onHello(hello) {
  el("task-name").textContent = hello.task.name + " — " + hello.task.instruction;
  el("camera-rate").textContent = "(perception " + hello.camera_hz + " Hz)";
  drawScene(hello.task, hello.trajectory);
  view.plans.clear();
  el("plans").textContent = "";
  el("events").textContent = "";
  for (const event of hello.history) handle(event);
  if (hello.status && hello.status.pose) onStatus(hello.status, null);
  showFigures(hello.figures);
  if (hello.frame) onFrame(hello.frame);
}

// --- the map --------------------------------------------------------------------------------------------

function drawScene(task, trajectory) {
  const xs = [task.start ? task.start.x || 0 : 0];
  const ys = [task.start ? task.start.y || 0 : 0];
  const obstacles = el("obstacles");
  const objects = el("objects");
  obstacles.textContent = "";
  objects.textContent = "";
  for (const o of task.obstacles || []) {
    const size = Array.isArray(o.size) ? o.size : [o.size, o.size];
    let shape;
    if (o.shape === "box") {
      shape = document.createElementNS(SVG, "rect");
      shape.setAttribute("x", -size[0]);
      shape.setAttribute("y", -size[1]);
      shape.setAttribute("width", 2 * size[0]);
      shape.setAttribute("height", 2 * size[1]);
    } else {
      shape = document.createElementNS(SVG, "circle");
      shape.setAttribute("r", size[0]);
    }
    shape.setAttribute("class", "obstacle");
    shape.setAttribute("transform", `translate(${o.x},${o.y}) rotate(${o.yaw_deg || 0})`);
    obstacles.appendChild(shape);
    xs.push(o.x - size[0], o.x + size[0]);
    ys.push(o.y - size[1], o.y + size[1]);
  }
  for (const o of task.objects || []) {
    const r = Array.isArray(o.size) ? Math.max(...o.size) : o.size || 0.15;
    const mark = document.createElementNS(SVG, "circle");
    mark.setAttribute("cx", o.x);
    mark.setAttribute("cy", o.y);
    mark.setAttribute("r", Math.max(r, 0.08));
    mark.setAttribute("fill", o.color || "gray");
    mark.setAttribute("stroke", "#333");
    mark.setAttribute("stroke-width", "0.02");
    mark.setAttribute("class", "object");
    objects.appendChild(mark);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("transform", `translate(${o.x + r + 0.05},${o.y}) scale(1,-1)`);
    label.textContent = o.name;
    objects.appendChild(label);
    xs.push(o.x - r, o.x + r);
    ys.push(o.y - r, o.y + r);
  }
  const pad = 0.8;
  const x0 = Math.min(...xs) - pad, x1 = Math.max(...xs) + pad;
  const y0 = Math.min(...ys) - pad, y1 = Math.max(...ys) + pad;
  // The world group flips y (y left = up on the screen), so the view box spans -y1..-y0.
  el("map").setAttribute("viewBox", `${x0} ${-y1} ${x1 - x0} ${y1 - y0}`);
  view.trail = (trajectory || []).map((p) => [p[1], p[2]]);
  drawTrail();
}

function drawTrail() {
  const trail = el("trail");
  trail.setAttribute("points", view.trail.map((p) => p[0] + "," + p[1]).join(" "));
  trail.dataset.points = String(view.trail.length);
}

function onStatus(s, rtt) {
  const [x, y, yaw] = s.pose;
  const robot = el("robot");
  robot.setAttribute("transform", `translate(${x},${y}) rotate(${(yaw * 180) / Math.PI})`);
  robot.dataset.x = x;
  robot.dataset.y = y;
  const last = view.trail[view.trail.length - 1];
  if (!last || Math.hypot(last[0] - x, last[1] - y) > 0.01) {
    view.trail.push([x, y]);
    if (view.trail.length > 3000) view.trail.shift();
    drawTrail();
  }
  const safety = el("safety");
  safety.textContent = s.safety;
  safety.className = "pill " + s.safety;
  el("link").textContent = s.link;
  el("rtt").textContent = fmt(rtt, 1);
  el("command").textContent = s.command.map((v) => fmt(v, 2)).join("  ");
  el("command").dataset.command = JSON.stringify(s.command);
  el("velocity").textContent = s.velocity.map((v) => fmt(v, 2)).join("  ");
  el("pose").textContent = `x ${fmt(x)} m  y ${fmt(y)} m  yaw ${fmt(yaw)} rad`;
  el("posture").textContent = s.posture + (s.estop ? " (e-stop latched)" : "");
  el("queue").textContent = s.queue_len + (s.command_age_s !== null ? `, command age ${fmt(s.command_age_s)} s` : "");
  el("planner").textContent = s.planner.mode + (s.planner.last_plan_ms !== null ? `, last ${fmt(s.planner.last_plan_ms, 1)} ms` : "");
  el("elapsed").textContent = fmt(s.task.elapsed_s, 1) + " s" + (s.task.success ? " — success" : "");
}

// --- the camera -----------------------------------------------------------------------------------------

async function onFrame(seq) {
  const now = performance.now();
  view.frames.push(now);
  while (view.frames.length && now - view.frames[0] > 3000) view.frames.shift();
  if (view.cameraBusy) return; // one fetch at a time: a slow browser skips frames, never queues them
  view.cameraBusy = true;
  try {
    const response = await authFetch("/camera.jpg");
    if (response.ok) {
      const url = URL.createObjectURL(await response.blob());
      const img = el("camera");
      img.src = url;
      img.dataset.frame = String(seq);
      if (view.cameraUrl) URL.revokeObjectURL(view.cameraUrl);
      view.cameraUrl = url;
    }
  } finally {
    view.cameraBusy = false;
  }
  if (view.frames.length > 1) {
    const hz = (view.frames.length - 1) / ((view.frames[view.frames.length - 1] - view.frames[0]) / 1000);
    el("camera-rate").textContent = `(${fmt(hz, 1)} fps)`;
  }
}

// --- safety and controls --------------------------------------------------------------------------------

function onSafety(event) {
  const item = document.createElement("li");
  item.textContent = `${fmt(event.t, 2)} s  ${event.name}  ${JSON.stringify(event.detail)}`;
  const list = el("events");
  list.insertBefore(item, list.firstChild);
  while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
}

async function post(path) {
  const response = await authFetch(path, { method: "POST" });
  if (response.status === 401) loggedOut("the key was refused");
  return response;
}

// --- the planner's output -------------------------------------------------------------------------------

function planStart(event) {
  const root = document.createElement("div");
  root.className = "plan";
  root.dataset.plan = event.plan;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `plan #${event.plan} at ${fmt(event.t, 2)} s (${event.mode})`;
  const text = document.createElement("div");
  text.className = "text";
  const rounds = document.createElement("ol");
  rounds.className = "rounds";
  root.append(meta, text, rounds);
  const container = el("plans");
  container.insertBefore(root, container.firstChild);
  view.plans.set(event.plan, { root, meta, text, rounds, unverified: [] });
  while (container.children.length > MAX_PLANS) {
    const old = container.lastChild;
    view.plans.delete(Number(old.dataset.plan));
    container.removeChild(old);
  }
}

function plan(event) {
  if (!view.plans.has(event.plan)) planStart({ plan: event.plan, t: event.t || 0, mode: "?" });
  return view.plans.get(event.plan);
}

function span(text, kind) {
  const s = document.createElement("span");
  s.className = "tok " + kind;
  s.textContent = text;
  return s;
}

function planTokens(event) {
  const p = plan(event);
  const s = span(event.text, event.verified ? "verified" : "unverified");
  p.text.appendChild(s);
  if (!event.verified) p.unverified.push(s);
}

// `verified`: the oldest unverified text (this many characters) is confirmed.
function planConfirm(event) {
  const p = plan(event);
  let left = event.text.length;
  while (left > 0 && p.unverified.length) {
    const s = p.unverified[0];
    if (s.textContent.length > left) { // confirm a prefix of this span
      const rest = s.textContent.slice(left);
      s.textContent = s.textContent.slice(0, left);
      const tail = span(rest, "unverified");
      s.after(tail);
      p.unverified[0] = tail;
    } else {
      p.unverified.shift();
    }
    left -= s.textContent.length;
    s.className = "tok verified";
  }
}

// `retract`: the newest unverified text is withdrawn; it stays on the page struck through.
function planRetract(event) {
  const p = plan(event);
  let left = event.text.length;
  while (left > 0 && p.unverified.length) {
    const s = p.unverified[p.unverified.length - 1];
    if (s.textContent.length > left) {
      const keep = s.textContent.slice(0, s.textContent.length - left);
      const gone = span(s.textContent.slice(keep.length), "retracted");
      s.textContent = keep;
      s.after(gone);
      left = 0;
    } else {
      p.unverified.pop();
      left -= s.textContent.length;
      s.className = "tok retracted";
    }
  }
}

function planRound(event) {
  const p = plan(event);
  const item = document.createElement("li");
  item.className = "round";
  const early = (event.early || []).map((e) => `L${e.layer} ${e.hit ? "✓" : "✗"}`).join(" ");
  const predraft = event.predraft_hit === null || event.predraft_hit === undefined ? "" :
    event.predraft_hit ? " · pre-draft hit" : " · pre-draft miss";
  item.textContent = `round ${event.round}: ${event.accepted}/${event.drafted} accepted` +
    (early ? ` · early ${early}` : "") + predraft;
  item.dataset.predraftHit = String(Boolean(event.predraft_hit));
  p.rounds.appendChild(item);
}

function planEnd(event) {
  const p = plan(event);
  const tps = event.ms > 0 ? (1000 * event.tokens) / event.ms : null;
  let meta = p.meta.textContent.split(" — ")[0];
  meta += ` — ${fmt(event.ms, 1)} ms, ${event.tokens} tokens (${fmt(tps, 1)}/s), ${event.actions} actions`;
  if (event.mean_accepted_len !== null) meta += `, ${fmt(event.mean_accepted_len)} accepted/round`;
  if (event.rejected) meta += ` — rejected: ${event.rejected}`;
  p.meta.textContent = meta;
  showFigures(event.figures);
}

function showFigures(f) {
  if (!f) return;
  el("fig-tps").textContent = fmt(f.tokens_per_s, 1);
  el("fig-accepted").textContent = fmt(f.accepted_per_round, 2);
  el("fig-predraft").textContent = f.predraft_hit_rate === null ? (f.predraft_hits ? `${f.predraft_hits} hits` : "–")
    : `${fmt(100 * f.predraft_hit_rate, 0)} % of ${f.rounds} rounds`;
  el("fig-latency").textContent = `${fmt(f.last_plan_ms, 1)} / ${fmt(f.plan_ms_mean, 1)} ms`;
  el("fig-plans").textContent = `${f.plans} (${f.tokens} tokens)`;
}

// --- start ----------------------------------------------------------------------------------------------

el("estop").addEventListener("click", () => post("/estop"));
el("reset").addEventListener("click", () => post("/estop/reset"));
setupLogin("/status", connect);
