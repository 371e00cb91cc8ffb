// distren dashboard: plain JavaScript, no build step, nothing loaded from the internet.
// The page's <body> says what to show: data-page = "jobs" or "job", data-api = the API base
// ("/api/v1", or "/api/v1/servers/NAME" for a peer's jobs, read through this server),
// data-live = "1" when this server's event stream (server-sent events) can be followed, and
// data-job = the job id on a job page.
"use strict";

const body = document.body;
const API = body.dataset.api;
const LIVE = body.dataset.live === "1";
const PAGE_SIZE = 200;
window.distrenLoadedAt = window.distrenLoadedAt || Date.now();   // a reload would change it

// -- small helpers ------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
function token() { return localStorage.getItem("distren-token") || ""; }
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const r = await fetch(API + path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) {
    const why = data && data.error ? data.error.message : ("HTTP " + r.status);
    throw new Error(why);
  }
  return data;
}
function say(text) {
  const m = document.getElementById("message");
  if (m) m.textContent = text || "";
}
function fmtSeconds(s) {
  if (s == null || !isFinite(s)) return "";
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }
function progress(job) {
  const f = job.frames, total = Math.max(1, job.total_frames);
  const bar = el("div", { class: "bar", title: `${f.done} done, ${f.running} running, ${f.failed} failed of ${job.total_frames}` });
  const d = el("span", { class: "d" }); d.style.width = (100 * f.done / total) + "%";
  const fl = el("span", { class: "f" }); fl.style.left = (100 * f.done / total) + "%"; fl.style.width = (100 * f.failed / total) + "%";
  const r = el("span", { class: "r" }); r.style.left = (100 * (f.done + f.failed) / total) + "%"; r.style.width = (100 * f.running / total) + "%";
  bar.append(d, fl, r);
  return bar;
}
// ETA: the frames left at the rate frames finished since the job started
function eta(job) {
  const f = job.frames;
  const left = f.waiting + f.ready + f.running;
  if (!job.started || f.done === 0 || left === 0 || ["done", "failed", "cancelled"].includes(job.state)) return "";
  const elapsed = Date.now() / 1000 - job.started;
  return fmtSeconds(elapsed / f.done * left);
}
function stateText(job) { return job.state; }   // the server says "paused" while a paused job has work left
function liveBadge(on) {
  const b = document.getElementById("live");
  if (!b) return;
  b.textContent = on ? "live" : (LIVE ? "reconnecting" : "updated every 2 s");
  b.className = "live " + (on ? "on" : "off");
}

// The client token, for a server started with --client-token-file: kept in local storage and
// sent as "Authorization: Bearer" with every API call; also kept in the cookie distren_token
// (SameSite=Strict), which is how a server with --protect-reads lets the page's images and its
// event stream through (browsers send no headers with those). The server accepts the cookie for
// reads only, never for changes.
function tokenCookie() {
  const t = token();
  document.cookie = "distren_token=" + encodeURIComponent(t) + "; Path=/; SameSite=Strict" +
    (t ? "; Max-Age=31536000" : "; Max-Age=0") + (location.protocol === "https:" ? "; Secure" : "");
}
tokenCookie();
const tokenField = document.getElementById("token");
if (tokenField) {
  tokenField.value = token();
  tokenField.addEventListener("change", () => {
    localStorage.setItem("distren-token", tokenField.value.trim());
    tokenCookie();
    refollow();     // a stream refused without the token is opened again, the page read again
  });
}

// -- the jobs page ------------------------------------------------------------------------
const jobRows = new Map();
function jobRow(job) {
  const link = el("a", { href: (body.dataset.jobBase || "/jobs/") + job.id, text: job.name || ("job " + job.id) });
  const tr = el("tr", { "data-job": job.id },
    el("td", {}, String(job.id)), el("td", {}, link),
    el("td", { class: "state " + stateText(job), text: stateText(job) }),
    el("td", {}, progress(job)),
    el("td", { text: `${job.frames.done}/${job.total_frames}` }),
    el("td", { class: "muted", text: eta(job) }),
    el("td", { class: "muted", text: String(job.priority) }));
  return tr;
}
function showJob(job) {
  const tbody = document.getElementById("jobs-body");
  if (!tbody) return;
  const row = jobRow(job);
  // the row the server rendered into the page, or the one shown since
  const old = jobRows.get(job.id) || tbody.querySelector(`tr[data-job="${job.id}"]`);
  if (old) old.replaceWith(row); else tbody.append(row);
  jobRows.set(job.id, row);
  const empty = document.getElementById("no-jobs");
  if (empty) empty.hidden = jobRows.size > 0;
}
async function loadJobs() {
  const jobs = await api("/jobs");
  const seen = new Set();
  for (const job of jobs) { showJob(job); seen.add(job.id); }
  for (const [id, row] of jobRows) if (!seen.has(id)) { row.remove(); jobRows.delete(id); }
}
async function loadPeers() {
  const tbody = document.getElementById("peers-body");
  if (!tbody) return;
  let peers = [];
  try { peers = await api("/peers"); } catch (e) { return; }
  tbody.replaceChildren(...peers.map(p => el("tr", {},
    el("td", {}, el("a", { href: "/servers/" + encodeURIComponent(p.name), text: p.name })),
    el("td", { class: "muted", text: p.url }),
    el("td", { class: "state " + (p.healthy ? "done" : "failed"), text: p.healthy ? "healthy" : "unhealthy" }),
    el("td", { class: "muted", text: p.last_error || "" }))));
  const none = document.getElementById("no-peers");
  if (none) none.hidden = peers.length > 0;
}

// -- the job page -------------------------------------------------------------------------
const JOB = body.dataset.job ? Number(body.dataset.job) : null;
let pageAfter = -1;            // the page shows frames with ids above this one
const pageStack = [];          // earlier pages' `after`, for "previous"
const cells = new Map();       // frame id -> cell of the current page
let selected = null;
let refetchTimer = null;

function previewUrl(frame, done, attempts) {
  return `${API}/jobs/${JOB}/frames/${frame}/preview?a=${attempts}`;
}
function cell(f) {
  const img = el("div", { class: "img" });
  if (f.state === "done") {
    img.append(el("img", { src: previewUrl(f.frame, true, f.attempts), alt: "frame " + f.frame, loading: "lazy",
                           onerror: (e) => { e.target.replaceWith(el("span", { class: "muted", text: "no preview" })); } }));
  } else {
    img.append(el("span", { class: "muted", text: f.state }));
  }
  const c = el("div", { class: "cell " + f.state + (selected === f.frame ? " selected" : ""), "data-frame": f.frame,
                        "data-state": f.state, title: `frame ${f.frame}: ${f.state}`, onclick: () => select(f.frame) },
    img, el("div", { class: "label" }, el("span", { text: String(f.frame) }), el("span", { class: "muted", text: f.state })));
  return c;
}
async function loadPage() {
  const frames = await api(`/jobs/${JOB}/frames?after=${pageAfter}&limit=${PAGE_SIZE}`);
  const grid = document.getElementById("grid");
  cells.clear();
  grid.replaceChildren(...frames.map(f => { const c = cell(f); cells.set(f.frame, c); return c; }));
  document.getElementById("page-info").textContent = frames.length
    ? `frames ${frames[0].frame} to ${frames[frames.length - 1].frame}` : "no frames";
  document.getElementById("next").disabled = frames.length < PAGE_SIZE;
  document.getElementById("prev").disabled = pageStack.length === 0;
  document.getElementById("next").dataset.after = frames.length ? frames[frames.length - 1].frame : pageAfter;
}
function refetchSoon() {          // bulk changes: the page again, at most every 2 s
  if (refetchTimer) return;
  refetchTimer = setTimeout(() => { refetchTimer = null; loadPage().catch(e => say(e.message)); }, 2000);
}
async function loadJobSummary() {
  showSummary(await api(`/jobs/${JOB}`));
}
function showSummary(job) {
  document.getElementById("job-name").textContent = job.name || ("job " + job.id);
  const st = document.getElementById("job-state");
  st.textContent = stateText(job); st.className = "state " + stateText(job);
  document.getElementById("job-progress").replaceChildren(progress(job));
  document.getElementById("job-counts").textContent =
    `${job.frames.done}/${job.total_frames} done, ${job.frames.running} running, ${job.frames.failed} failed, ${job.frames.cancelled} cancelled`;
  document.getElementById("job-eta").textContent = eta(job) ? "ETA " + eta(job) : "";
  document.getElementById("job-waiting").textContent = job.waiting_for || "";
  const prio = document.getElementById("priority");
  if (prio && document.activeElement !== prio) prio.value = job.priority;
}
async function select(frame) {
  selected = frame;
  for (const [id, c] of cells) c.classList.toggle("selected", id === frame);
  const f = await api(`/jobs/${JOB}/frames/${frame}`);
  const rows = [["frame", f.url], ["state", f.state], ["backend", f.backend], ["attempts", String(f.attempts)],
                ["failures", String(f.failures)], ["rendered by", f.rendered_by || ""], ["started", fmtTime(f.started)],
                ["finished", fmtTime(f.finished)],
                ["took", f.started && f.finished ? fmtSeconds(f.finished - f.started) : ""],
                ["error", f.error || ""], ["waits for", (f.waiting_for || []).join("; ")]];
  const dl = el("dl", {});
  for (const [k, v] of rows) if (v) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  const history = el("ol", {}, ...(f.history || []).map(h =>
    el("li", { text: `attempt ${h.attempt} on ${h.renderer}: ${h.outcome || "running"}` +
                     (h.finished && h.started ? ` (${fmtSeconds(h.finished - h.started)})` : "") })));
  document.getElementById("details").replaceChildren(
    el("h2", { text: "Frame " + frame }), dl, el("h2", { text: "History" }), history,
    el("h2", { text: "Log (last attempt)" }), el("pre", { id: "frame-log", text: f.log || "(no log)" }));
}
function frameEvent(data) {
  if (data.job !== JOB) return;
  const old = cells.get(data.frame);
  if (!old) return;                 // not on this page
  const f = { frame: data.frame, state: data.state, attempts: data.attempts };
  const c = cell(f);
  old.replaceWith(c);
  cells.set(data.frame, c);
  if (selected === data.frame) select(data.frame).catch(() => {});
}
async function act(what, options) {
  say("");
  try {
    const job = await api(`/jobs/${JOB}${what}`, Object.assign({ method: "POST" }, options || {}));
    if (job && job.frames) showSummary(job);
    await loadPage();
  } catch (e) { say(e.message); }
}

// -- live updates -------------------------------------------------------------------------
let following = null;   // follow()'s handlers
let source = null;      // the event stream
function follow(onJob, onFrame, onRemoved, onReset) {
  following = [onJob, onFrame, onRemoved, onReset];
  if (!LIVE) {
    setInterval(onReset, 2000);
    liveBadge(false);
    return;
  }
  const url = API + "/events" + (JOB != null ? "?job=" + JOB : "");
  source = new EventSource(url);
  source.onopen = () => liveBadge(true);
  source.onerror = () => liveBadge(false);      // EventSource reconnects by itself (Last-Event-ID)
  source.addEventListener("job", e => onJob(JSON.parse(e.data)));
  source.addEventListener("frame", e => onFrame(JSON.parse(e.data)));
  source.addEventListener("job_removed", e => onRemoved(JSON.parse(e.data)));
  source.addEventListener("reset", () => onReset());
}
function refollow() {
  if (!following) return;
  const [onJob, onFrame, onRemoved, onReset] = following;
  if (source) { source.close(); follow(onJob, onFrame, onRemoved, onReset); }
  say("");
  onReset();
}

async function main() {
  if (body.dataset.page === "jobs") {
    await loadJobs().catch(e => say(e.message));
    await loadPeers();
    setInterval(loadPeers, 5000);
    follow(showJob, () => {}, (d) => { const r = jobRows.get(d.id); if (r) { r.remove(); jobRows.delete(d.id); } },
           () => loadJobs().catch(e => say(e.message)));
  } else if (body.dataset.page === "job") {
    document.getElementById("next").addEventListener("click", () => {
      pageStack.push(pageAfter); pageAfter = Number(document.getElementById("next").dataset.after); loadPage();
    });
    document.getElementById("prev").addEventListener("click", () => {
      pageAfter = pageStack.pop(); loadPage();
    });
    document.getElementById("goto").addEventListener("change", (e) => {
      const n = parseInt(e.target.value, 10);
      if (!isNaN(n)) { pageStack.push(pageAfter); pageAfter = n - 1; loadPage(); }
    });
    const control = (id, fn) => { const b = document.getElementById(id); if (b) b.addEventListener("click", fn); };
    control("cancel", () => act("/cancel"));
    control("retry", () => act("/retry"));
    control("pause", () => act("/pause"));
    control("resume", () => act("/resume"));
    control("set-priority", () => act("", {
      method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ priority: Number(document.getElementById("priority").value) }) }));
    await loadJobSummary().catch(e => say(e.message));
    await loadPage().catch(e => say(e.message));
    follow((job) => { if (job.id === JOB) { showSummary(job); if (job.bulk) refetchSoon(); } },
           frameEvent,
           (d) => { if (d.id === JOB) say("this job was deleted"); },
           () => { loadJobSummary().catch(() => {}); loadPage().catch(() => {}); });
  }
}
main();
