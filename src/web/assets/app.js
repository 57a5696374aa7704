"use strict";
// The s2gw web UI: one page, hash routes, live over server-sent events. No dependencies.
const $ = (s, el = document) => el.querySelector(s);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const W = (w) => w == null ? "–" : (Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : Math.round(w) + " W");
const pct = (v) => v == null ? "–" : v.toFixed(1) + " %";
const ago = (t) => { const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000); return s < 60 ? Math.round(s) + " s ago" : Math.round(s / 60) + " min ago"; };
const dur = (s) => s < 3600 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
const badge = (text, cls) => `<span class="badge ${cls}">${esc(text)}</span>`;
const linkBadge = (d) => d.cem_link === "connected" ? badge("S2 " + (d.protocol_version || ""), "ok") : badge(d.cem_link, d.cem_link === "down" ? "bad" : "warn");
let csrf = "", overview = null, busy = false, again = false;

async function api(path, opts = {}) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts));
  if (r.status === 401) { showLogin(); throw new Error("login"); }
  if (!r.ok) throw new Error(await r.text());
  return r.status === 204 ? null : r.json();
}

function showLogin() {
  $("#main").replaceChildren($("#login").content.cloneNode(true));
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new URLSearchParams(new FormData(e.target));
    const r = await fetch("/login", { method: "POST", body, credentials: "same-origin" });
    if (r.ok) start(); else $("#login-error").textContent = await r.text();
  });
}

async function setControl(id, allowed) {
  await api(`/api/device/${encodeURIComponent(id)}/control`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ allowed }),
  });
}

function controlSwitch(d) {
  return `<label class="switch"><input type="checkbox" class="control" data-id="${esc(d.id)}" ${d.control_allowed ? "checked" : ""}> CEM control</label>`;
}

function gatewayCard(g) {
  const links = g.links.map((l) => `${esc(l.name)} (${esc(l.transport)}): ${l.connected}/${l.devices} connected`).join("<br>");
  const mqtt = g.mqtt ? (g.mqtt.connected ? badge("connected", "ok") : badge("disconnected", "bad")) : "not configured";
  return `<div class="card grid"><div><span>Gateway</span>${esc(g.name)}</div><div><span>Version</span>${esc(g.version)}</div>
    <div><span>Uptime</span>${dur(g.uptime_s)}</div><div><span>CEM links</span>${links || "none"}</div><div><span>MQTT</span>${mqtt}</div>
    <div><span>Native RMs</span>${g.natives.length}</div></div>`;
}

function renderOverview() {
  if (!overview) return;
  const rows = overview.devices.map((d) => `<tr id="row-${esc(d.id)}" data-id="${esc(d.id)}">
    <td><a href="#/device/${encodeURIComponent(d.id)}">${esc(d.name)}</a><br><small>${esc(d.id)} · ${esc(d.kind)}</small></td>
    <td class="num power">${d.available ? W(d.power_w) : "–"}</td><td class="num soc">${pct(d.soc)}</td>
    <td>${esc(d.control_type || "none")}</td><td class="wrap">${esc(d.active || "–")}</td>
    <td>${linkBadge(d)}</td><td>${d.available ? badge("available", "ok") : badge("unavailable", "bad")}</td>
    <td class="hide-s">${ago(d.updated)}</td><td>${controlSwitch(d)}</td></tr>`).join("");
  $("#main").innerHTML = gatewayCard(overview.gateway) + `<div class="card"><table id="devices"><thead><tr><th>Device</th><th>Power</th><th>SoC</th>
    <th>Control</th><th>Active instruction / limit</th><th>CEM link</th><th>State</th><th class="hide-s">Updated</th><th></th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

function chart(history) {
  const pts = history.filter((p) => p[1] != null);
  if (pts.length < 2) return "<p>Not enough samples yet (one every 2 s).</p>";
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0] || t0 + 1;
  let lo = Math.min(0, ...pts.map((p) => p[1])), hi = Math.max(0, ...pts.map((p) => p[1]));
  if (hi === lo) hi = lo + 1;
  const x = (t) => 40 + (t - t0) / Math.max(1, t1 - t0) * 550, y = (v) => 10 + (hi - v) / (hi - lo) * 130;
  const path = pts.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
  return `<svg viewBox="0 0 600 160" role="img" aria-label="power over the last hour">
    <line x1="40" x2="590" y1="${y(0)}" y2="${y(0)}" stroke="#999" stroke-dasharray="3"/>
    <text x="0" y="14" font-size="11">${esc(W(hi))}</text><text x="0" y="142" font-size="11">${esc(W(lo))}</text>
    <text x="40" y="156" font-size="11">${esc(dur(t1 - t0))} ago</text><text x="560" y="156" font-size="11">now</text>
    <path d="${path}" fill="none" stroke="#2457c5" stroke-width="2"/></svg>`;
}

// A horizontal scale from lo to hi: shaded ranges and marks (SVG attributes, since the
// page's Content-Security-Policy allows no inline styles).
function bar(lo, hi, ranges, marks) {
  const span = Math.max(1e-9, hi - lo), at = (v) => ((v - lo) / span * 600).toFixed(1);
  const rs = ranges.map(([a, b]) => `<rect x="${at(a)}" y="4" width="${(Math.abs(b - a) / span * 600).toFixed(1)}" height="20" fill="#b9cdf5"/>`).join("");
  const ms = marks.filter(([v]) => v != null).map(([v, , title]) => `<rect x="${at(v) - 1.5}" y="0" width="3" height="28" fill="#1c2330"><title>${esc(title)}</title></rect>`).join("");
  return `<svg viewBox="0 0 600 28" class="scale"><rect x="0" y="4" width="600" height="20" rx="4" fill="#e8eaef"/>${rs}${ms}</svg><small>${esc(lo)} … ${esc(hi)}</small>`;
}

const range = (r) => [r.start_of_range, r.end_of_range];
function modesTable(modes, active) {
  return `<table><tr><th>Operation mode</th><th>Power</th></tr>${(modes || []).map((m) => `<tr${m.id === active ? ' class="active"' : ""}>
    <td>${esc(m.diagnostic_label || m.id)}${m.id === active ? " (active)" : ""}</td>
    <td>${(m.power_ranges || m.elements?.flatMap((e) => e.power_ranges) || []).map((p) => esc(W(p.start_of_range)) + " … " + esc(W(p.end_of_range))).join(", ")}</td></tr>`).join("")}</table>`;
}

function flexibility(d, latest) {
  const ct = d.control_type;
  if (ct === "PEBC" && latest["PEBC.PowerConstraints"]) {
    const pc = latest["PEBC.PowerConstraints"];
    const rs = (pc.allowed_limit_ranges || []).filter((r) => !r.abnormal_condition_only);
    const all = rs.flatMap((r) => range(r.range_boundary)).concat([d.power_w ?? 0, 0]);
    const lo = Math.min(...all), hi = Math.max(...all);
    const list = rs.map((r) => `${esc(r.limit_type)}: ${esc(W(r.range_boundary.start_of_range))} … ${esc(W(r.range_boundary.end_of_range))}`).join("<br>");
    return `<h3>PEBC: allowed power limits</h3>${bar(lo, hi, rs.map((r) => range(r.range_boundary)), [[d.power_w, "now", "now"]])}<p>${list}</p><p>Current limit: ${esc(d.active || "none (the device runs on its own)")}</p>`;
  }
  if (ct === "FRBC" && latest["FRBC.SystemDescription"]) {
    const sd = latest["FRBC.SystemDescription"], st = latest["FRBC.StorageStatus"], as = latest["FRBC.ActuatorStatus"];
    const fr = sd.storage?.fill_level_range || { start_of_range: 0, end_of_range: 100 };
    const fill = st?.present_fill_level;
    return `<h3>FRBC: fill level ${esc(fill == null ? "–" : fill.toFixed(1))} (${esc(sd.storage?.fill_level_label || "")})</h3>
      ${bar(fr.start_of_range, fr.end_of_range, [[fr.start_of_range, fill ?? fr.start_of_range]], [])}
      ${(sd.actuators || []).map((a) => `<h4>Actuator ${esc(a.diagnostic_label || a.id)}</h4>${modesTable(a.operation_modes, as?.active_operation_mode_id)}`).join("")}`;
  }
  if (ct === "OMBC" && latest["OMBC.SystemDescription"]) {
    const sd = latest["OMBC.SystemDescription"], st = latest["OMBC.Status"], tm = latest["OMBC.TimerStatus"];
    const timers = (sd.timers || []).map((t) => `${esc(t.diagnostic_label || t.id)}: ${esc(t.duration)} ms${tm && tm.timer_id === t.id ? ", runs until " + esc(tm.finished_at) : ""}`).join("<br>");
    return `<h3>OMBC: operation modes</h3>${modesTable(sd.operation_modes, st?.active_operation_mode_id)}<p>Timers:<br>${timers || "none"}</p>`;
  }
  if (ct === "PPBC" && latest["PPBC.PowerProfileDefinition"]) {
    const def = latest["PPBC.PowerProfileDefinition"];
    const seqs = (def.power_sequences_containers || []).flatMap((c) => c.power_sequences || []);
    return `<h3>PPBC: programmes</h3><table><tr><th>Programme</th><th>Steps</th><th>Pausable</th></tr>${seqs.map((s) => `<tr><td>${esc(s.id)}</td><td>${(s.elements || []).length}</td><td>${esc(s.is_interruptible)}</td></tr>`).join("")}</table>
      <p>Window: ${esc(def.start_time)} … ${esc(def.end_time)}</p>`;
  }
  if (ct === "DDBC" && latest["DDBC.SystemDescription"]) {
    const sd = latest["DDBC.SystemDescription"], as = latest["DDBC.ActuatorStatus"];
    return `<h3>DDBC: actuators</h3>${(sd.actuator_descriptions || sd.actuators || []).map((a) => `<h4>${esc(a.diagnostic_label || a.id)}</h4>${modesTable(a.operation_modes, as?.active_operation_mode_id)}`).join("")}`;
  }
  return `<p>${ct && ct !== "NO_SELECTION" ? "Waiting for the " + esc(ct) + " description." : "The CEM has selected no control type: the device runs on its own."}</p>`;
}

async function renderDevice(id) {
  const p = await api(`/api/device/${encodeURIComponent(id)}`), d = p.device;
  const instr = p.instructions.map((i) => `<tr><td>${esc(i.t)}</td><td>${esc(i.kind)}</td><td class="wrap">${i.statuses.map((s) => esc(s[1])).join(" → ") || "–"}</td></tr>`).join("");
  $("#main").innerHTML = `<div class="card"><h2>${esc(d.name)} <small>${esc(d.id)}</small></h2><div class="grid">
    <div><span>Power</span><b id="dev-power">${d.available ? W(d.power_w) : "–"}</b></div><div><span>State of charge</span>${pct(d.soc)}</div>
    <div><span>CEM link</span>${linkBadge(d)}</div><div><span>Control type</span>${esc(d.control_type || "none")}</div>
    <div><span>Offered</span>${esc(d.offered.join(", "))}</div><div><span>State</span>${d.available ? badge("available", "ok") : badge("unavailable", "bad")}</div>
    <div><span>Profile / adapter</span>${esc(d.profile)} / ${esc(d.adapter)}</div><div><span>Sessions</span>${d.sessions}</div>
    <div><span>Instructions</span>${d.instructions_executed} done, ${d.instructions_failed} failed</div><div>${controlSwitch(d)}</div></div></div>
    <div class="card"><h3>Power, last hour</h3>${chart(p.history)}</div>
    <div class="card" id="flex">${flexibility(d, p.latest)}</div>
    <div class="card"><h3>Instructions</h3><table><tr><th>Received</th><th>Type</th><th>Status updates</th></tr>${instr || '<tr><td colspan="3">none yet</td></tr>'}</table>
    <p><a href="#/inspector/${encodeURIComponent(d.id)}">S2 traffic of this device</a></p></div>`;
}

const open = new Set();
async function renderInspector(id) {
  const devices = overview ? overview.devices : [];
  const natives = overview ? overview.gateway.natives : [];
  if (!id && devices.length) id = devices[0].id;
  const opts = devices.concat(natives).map((d) => `<option value="${esc(d.id)}" ${d.id === id ? "selected" : ""}>${esc(d.name || d.id)}</option>`).join("");
  const head = `<div class="card"><label>Resource <select id="res">${opts}</select></label> <a id="dl" href="/api/inspector/${encodeURIComponent(id || "")}/s2log" download>Download .s2log</a></div>`;
  if (!id) { $("#main").innerHTML = head; return; }
  const p = await api(`/api/inspector/${encodeURIComponent(id)}`);
  const rows = p.messages.slice().reverse().map((m) => `<tr class="msg${m.refused ? " refused" : ""}" data-seq="${m.seq}">
    <td>${esc(m.t.slice(11, 23))}</td><td>${m.dir === "rm>cem" ? "RM → CEM" : "CEM → RM"}</td><td>${esc(m.kind)}</td>
    <td>${m.status ? badge(m.status, m.status === "OK" ? "ok" : "bad") : ""}</td><td class="wrap rule">${esc(m.rule || "")}</td></tr>
    ${open.has(m.seq) ? `<tr><td colspan="5"><pre>${esc(m.json ? JSON.stringify(JSON.parse(m.json), null, 2) : "(refused at the edge: the frame never crossed the gateway)")}</pre></td></tr>` : ""}`).join("");
  $("#main").innerHTML = head + `<div class="card"><table id="traffic"><thead><tr><th>Time</th><th>Direction</th><th>Type</th><th>Status</th><th>Refusal rule</th></tr></thead><tbody>${rows}</tbody></table></div>`;
  $("#res").addEventListener("change", (e) => { location.hash = "#/inspector/" + encodeURIComponent(e.target.value); });
  $("#traffic").addEventListener("click", (e) => {
    const tr = e.target.closest("tr.msg"); if (!tr) return;
    const seq = Number(tr.dataset.seq); open.has(seq) ? open.delete(seq) : open.add(seq); render();
  });
}

async function renderConfig() {
  const c = await api("/api/config");
  const list = (xs, cls) => xs.length ? `<ul>${xs.map((x) => `<li class="${cls}">${esc(x)}</li>`).join("")}</ul>` : "<p>none</p>";
  $("#main").innerHTML = `<div class="card"><h2>Configuration</h2><p>${esc(c.file)}: ${c.problems.length ? badge(c.problems.length + " problem(s)", "bad") : badge("OK", "ok")}</p>
    <h3>Problems</h3>${list(c.problems, "error")}<h3>Warnings</h3>${list(c.warnings, "")}<h3>Running</h3><pre>${esc(c.summary)}</pre></div>`;
}

async function render() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    const [, page, arg] = (location.hash || "#/").split("/").map(decodeURIComponent);
    if (page === "device") await renderDevice(arg);
    else if (page === "inspector") await renderInspector(arg);
    else if (page === "config") await renderConfig();
    else renderOverview();
  } catch (e) { if (e.message !== "login") $("#main").innerHTML = `<p class="error">${esc(e.message)}</p>`; }
  busy = false;
  if (again) { again = false; render(); }
}

document.addEventListener("change", async (e) => {
  if (!e.target.matches("input.control")) return;
  try { await setControl(e.target.dataset.id, e.target.checked); } catch (err) { alert(err.message); }
});

async function start() {
  try { csrf = (await api("/api/session")).csrf; } catch (e) { return; }
  const live = $("#live"), events = new EventSource("/api/events");
  events.addEventListener("state", (e) => {
    overview = JSON.parse(e.data); live.textContent = "live"; live.className = "badge ok";
    const page = (location.hash || "#/").split("/")[1];
    if (page !== "config") render();
  });
  events.onerror = () => { live.textContent = "reconnecting"; live.className = "badge warn"; };
  render();
}
window.addEventListener("hashchange", () => { open.clear(); render(); });
start();
