// pvhyp's web console: a XenAPI client in plain JavaScript (no framework, no build step).
// Everything goes through the XenAPI JSON-RPC at /jsonrpc that any client uses; the consoles
// are WebSockets at the location XenAPI's console objects give. Every string from the server
// (VM names above all) reaches the page as textContent, never as HTML.
"use strict";

const EVENT_TIMEOUT_S = 30;         // event.from's long poll
const STATS_PERIOD_MS = 1000;       // the teaching panel's refresh

let session = null;
let rpcId = 0;
const vms = new Map();              // ref -> VM record, kept current by event.from
const panels = new Map();           // "console:" / "stats:" + ref -> {element, close()}

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function say(message, ok = false) {
  $("status").textContent = message;
  $("status").className = ok ? "ok" : "";
}

class XenAPIError extends Error {
  constructor(description) {
    super(description.join(" "));
    this.description = description;
  }
}

// One XenAPI call over JSON-RPC 2.0: the result, or a XenAPIError whose description is
// XenAPI's [CODE, params...].
async function call(method, ...params) {
  const args = method.startsWith("session.login") ? params : [session, ...params];
  const response = await fetch("/jsonrpc", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", method, params: args, id: ++rpcId }),
  });
  if (!response.ok) throw new XenAPIError(["HTTP_" + response.status, response.statusText]);
  const reply = await response.json();
  if (reply.error) {
    const data = Array.isArray(reply.error.data) ? reply.error.data.map(String) : [];
    throw new XenAPIError([String(reply.error.message), ...data]);
  }
  return reply.result;
}

// -- login -----------------------------------------------------------------------------------

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  say("");
  try {
    session = await call("session.login_with_password", $("user").value, $("password").value,
                         "2.21", "pvhyp web console");
  } catch (e) {
    say("Login failed: " + e.message);
    return;
  }
  $("password").value = "";
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = "logged in as " + $("user").value;
  await loadVMs();
  followEvents(session);
});

$("logout").addEventListener("click", async () => {
  const old = session;
  session = null;
  for (const key of [...panels.keys()]) closePanel(key);
  vms.clear();
  render();
  try { await call("session.logout", old); } catch (e) { /* the session is forgotten either way */ }
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
});

// -- the VM list, kept live by event.from ------------------------------------------------------

async function loadVMs() {
  try {
    const records = await call("VM.get_all_records");
    vms.clear();
    for (const [ref, record] of Object.entries(records)) vms.set(ref, record);
    render();
  } catch (e) {
    say("Listing the VMs failed: " + e.message);
  }
}

async function followEvents(mySession) {
  let token = "";
  while (session === mySession) {
    try {
      const batch = await call("event.from", ["VM"], token, EVENT_TIMEOUT_S);
      token = batch.token;
      for (const ev of batch.events) {
        if (String(ev.class).toLowerCase() !== "vm") continue;
        if (ev.operation === "del") {
          vms.delete(ev.ref);
          closePanel("console:" + ev.ref);
          closePanel("stats:" + ev.ref);
        } else if (ev.snapshot) {
          vms.set(ev.ref, ev.snapshot);
        }
      }
      render();
    } catch (e) {
      if (session !== mySession) return;
      if (e.description && e.description[0] === "SESSION_INVALID") {
        say("The session ended: log in again.");
        return;
      }
      say("Following events: " + e.message + " (retrying)");
      await new Promise((resolve) => setTimeout(resolve, 2000));
      token = "";
      await loadVMs();
    }
  }
}

function mib(bytes) {
  const n = Number(bytes);
  return Number.isFinite(n) ? Math.round(n / 1048576) + " MiB" : "?";
}

function sortedVMs() {
  return [...vms.entries()].sort(([, a], [, b]) => {
    if (a.is_control_domain !== b.is_control_domain) return a.is_control_domain ? -1 : 1;
    if (a.is_a_template !== b.is_a_template) return a.is_a_template ? 1 : -1;
    return String(a.name_label).localeCompare(String(b.name_label));
  });
}

// The buttons each power state offers (XenAPI refuses the others with VM_BAD_POWER_STATE).
const ACTIONS = {
  Halted: ["start", "clone", "destroy"],
  Running: ["console", "stats", "shutdown", "reboot", "pause", "poweroff"],
  Paused: ["stats", "unpause", "poweroff"],
  Suspended: [],
};

let drawn = "";      // what the list shows now: it is drawn again only when that changes

function render() {
  const rows = sortedVMs().map(([ref, vm]) => {
    const state = String(vm.power_state);
    let actions = vm.is_control_domain ? ["stats"] : (ACTIONS[state] || []);
    if (vm.is_a_template) actions = ["clone"];
    return { ref, name: String(vm.name_label), state, actions, control: !!vm.is_control_domain,
             template: !!vm.is_a_template, memory: mib(vm.memory_dynamic_max ?? vm.memory_static_max),
             vcpus: String(vm.VCPUs_max ?? vm.VCPUs_at_startup ?? "?") };
  });
  const shown = JSON.stringify(rows);
  if (shown === drawn) return;
  drawn = shown;
  const body = $("vms").tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const name = el("td", {}, r.name);
    if (r.control) name.append(el("span", { class: "tag" }, "control domain"));
    if (r.template) name.append(el("span", { class: "tag" }, "template"));
    const buttons = el("td", { class: "actions" });
    for (const action of r.actions) {
      buttons.append(el("button", { type: "button", "data-action": action, onclick: () => act(action, r.ref) },
                        LABELS[action]));
    }
    body.append(el("tr", { "data-ref": r.ref, "data-name": r.name }, name,
                   el("td", { class: "state-" + r.state }, r.state), el("td", {}, r.memory),
                   el("td", {}, r.vcpus), buttons));
  }
}

const LABELS = {
  start: "Start", shutdown: "Shut down", reboot: "Reboot", pause: "Pause", unpause: "Unpause",
  clone: "Clone", destroy: "Destroy", console: "Console", stats: "Stats", poweroff: "Force off",
};

async function act(action, ref) {
  const vm = vms.get(ref);
  const name = vm ? String(vm.name_label) : ref;
  try {
    switch (action) {
      case "start": await call("VM.start", ref, false, false); break;
      case "shutdown":        // asks the guest (control/shutdown); it answers when the VM halted
        say("Shutting down " + name + " (the guest is asked)", true);
        await call("VM.clean_shutdown", ref);
        break;
      case "poweroff": await call("VM.hard_shutdown", ref); break;
      case "reboot": await call("VM.clean_reboot", ref); break;
      case "pause": await call("VM.pause", ref); break;
      case "unpause": await call("VM.unpause", ref); break;
      case "clone": await call("VM.clone", ref, cloneName(name)); break;
      case "destroy":
        if (!confirm("Destroy " + name + "?")) return;
        await call("VM.destroy", ref);
        break;
      case "console": await openConsole(ref, name); return;
      case "stats": openStats(ref, name); return;
    }
    say(LABELS[action] + " " + name + ": done", true);
  } catch (e) {
    say(LABELS[action] + " " + name + " failed: " + e.message);
  }
}

// A name for a clone: pvhyp's VM names are xl domain names (letters, digits, _ . -), unique.
function cloneName(name) {
  const taken = new Set([...vms.values()].map((vm) => String(vm.name_label)));
  const base = name.replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 56) + "-copy";
  let candidate = base;
  for (let n = 2; taken.has(candidate); n++) candidate = base + n;
  return candidate;
}

// -- panels ------------------------------------------------------------------------------------

function addPanel(key, title, content, onClose) {
  closePanel(key);
  const close = el("button", { type: "button", onclick: () => closePanel(key) }, "Close");
  const element = el("div", { class: "panel", "data-panel": key }, el("h3", {}, title, close), content);
  $("panels").append(element);
  panels.set(key, { element, close: onClose });
}

function closePanel(key) {
  const panel = panels.get(key);
  if (!panel) return;
  panels.delete(key);
  panel.element.remove();
  panel.close();
}

// A console: xterm.js over a WebSocket at the console's location (same path and query, this
// page's host, so that the server sees its own origin).
async function openConsole(ref, name) {
  const consoles = await call("VM.get_consoles", ref);
  if (consoles.length === 0) throw new XenAPIError(["NO_CONSOLE", name]);
  const location = await call("console.get_location", consoles[0]);
  const url = new URL(location, window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  url.host = window.location.host;
  url.searchParams.set("session_id", session);

  const term = new Terminal({ cols: 80, rows: 25, scrollback: 2000, fontSize: 14 });
  const box = el("div", { class: "terminal-box", "data-console": ref });
  const socket = new WebSocket(url.toString());
  socket.binaryType = "arraybuffer";
  addPanel("console:" + ref, "Console of " + name, box, () => { socket.close(1000); term.dispose(); });
  term.open(box);
  term.onData((keys) => { if (socket.readyState === WebSocket.OPEN) socket.send(keys); });
  socket.onopen = () => { term.focus(); socket.send("\r"); };     // a fresh prompt to start with
  socket.onmessage = (event) => term.write(new Uint8Array(event.data));
  socket.onclose = (event) => {
    term.write("\r\n\x1b[33m[console closed" + (event.reason ? ": " + event.reason : "") + "]\x1b[0m\r\n");
  };
}

// The teaching panel: what the hypervisor counts for this VM, from XenAPI's data sources,
// refreshed every second: hypercalls/s by kind (bars), event channels, grant mappings, memory.
function openStats(ref, name) {
  const table = el("table", { "data-stats": ref });
  const box = el("div", { class: "stats" }, table);
  let stopped = false;
  let timer = null;
  const refresh = async () => {
    if (stopped) return;
    try {
      const sources = await call("VM.get_data_sources", ref);
      const values = [];
      for (const source of sources) {
        if (!source.enabled && source.enabled !== undefined) continue;
        const label = String(source.name_label);
        let value = Number(source.value);
        if (source.value === undefined || !Number.isFinite(value)) {
          value = Number(await call("VM.query_data_source", ref, label));
        }
        values.push([label, value, String(source.units || "")]);
      }
      showStats(table, values);
    } catch (e) {
      table.replaceChildren(el("tr", {}, el("td", {}, "no data: " + e.message)));
    }
    if (!stopped) timer = setTimeout(refresh, STATS_PERIOD_MS);
  };
  addPanel("stats:" + ref, "What the hypervisor sees of " + name, box, () => { stopped = true; clearTimeout(timer); });
  refresh();
}

function showStats(table, values) {
  const rates = values.filter(([label]) => label.startsWith("hypercalls_per_s/"));
  const others = values.filter(([label]) => !label.startsWith("hypercalls_per_s/") &&
                                            !label.startsWith("hypercalls/"));
  const top = Math.max(1, ...rates.map(([, v]) => v));
  const rows = [];
  rows.push(el("tr", {}, el("th", { colspan: "3" }, "hypercalls per second")));
  if (rates.length === 0) rows.push(el("tr", {}, el("td", { colspan: "3" }, "(none counted yet)")));
  for (const [label, value] of rates.sort((a, b) => b[1] - a[1])) {
    const bar = el("span", { class: "bar" });
    bar.style.width = Math.round(120 * value / top) + "px";
    rows.push(el("tr", {}, el("td", {}, label.slice("hypercalls_per_s/".length)),
                 el("td", { class: "num" }, value.toFixed(0)), el("td", {}, bar)));
  }
  rows.push(el("tr", {}, el("th", { colspan: "3" }, "state")));
  for (const [label, value, units] of others.sort()) {
    const shown = /memory/.test(label) && value >= 1048576 ? mib(value) : formatNumber(value) + (units ? " " + units : "");
    const name = el("td", { title: label }, explain(label));
    rows.push(el("tr", { "data-source": label }, name, el("td", { class: "num" }, shown), el("td")));
  }
  table.replaceChildren(...rows);
}

// What the hypervisor's counters mean, for a student (the data source's own name is the tooltip).
const MEANINGS = {
  "memory": "memory", "memory_target": "memory target (balloon)", "vcpus": "vCPUs",
  "cpu_time": "CPU time used (s)", "evtchn/bound": "event channels bound",
  "events/pending": "events pending delivery", "grant/mapped": "grant mappings it holds",
};

function explain(label) {
  const pinned = /^mm\/pinned_l([1-4])$/.exec(label);
  if (pinned) return "pinned L" + pinned[1] + " page tables";
  return MEANINGS[label] || label;
}

function formatNumber(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}
