"use strict";
// The dashboard's overview and plumbing. Loaded after charts.js and job.js, whose functions it calls.
const STATES = ["deferred", "scheduled", "enqueued", "running", "retry_scheduled", "done", "failed", "cancelled"];
// cancel on a running job asks its worker to stop it (docs/features.md)
const CANCELLABLE = new Set(["deferred", "enqueued", "scheduled", "retry_scheduled", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const REFRESH_MS = 2000;
const CHARTS_MS = 10000;
const TOKEN_KEY = "bagbot.apiToken";
const $ = (id) => document.getElementById(id);

// Everything shown comes from the API: build nodes with textContent, never as markup, so a
// job's name or error message cannot inject any.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function flash(message, kind) {
  const box = $("flash");
  box.textContent = message;
  box.className = kind || "";
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "";
}

function fmtAge(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function jobHref(job) {
  return "/jobs/" + encodeURIComponent(job.id) + "?queue=" + encodeURIComponent(job.queue);
}

// The error column: red for a job that is failing; a job that ended done after failed attempts
// is not a failure, so its earlier errors are only counted, in grey.
function errorCell(job, testid) {
  const unreadable = Object.keys(job.unreadable || {});
  const err = job.last_error;
  let text = err ? err.type + ": " + err.message : "";
  if (unreadable.length) text = "unreadable fields: " + unreadable.join(", ") + (text ? "; " + text : "");
  const attrs = testid ? { "data-testid": testid } : {};
  if (job.state === "done" && err) {
    const n = (job.errors || []).length || 1;
    return el("td", Object.assign({ class: "error earlier", title: text,
                                     text: "done after " + n + " failed attempt" + (n > 1 ? "s" : "") }, attrs));
  }
  return el("td", Object.assign({ class: "error", text: text }, attrs));
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (opts.body !== undefined) opts.headers["Content-Type"] = "application/json";
  const response = await fetch(path, opts);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    let detail = data && data.detail !== undefined ? data.detail : response.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    if (response.status === 401) detail += " (set the API token at the top right)";
    throw new Error(response.status + ": " + detail);
  }
  return data;
}

async function act(action, job) {
  try {
    const query = "?queue=" + encodeURIComponent(job.queue);
    await api("/api/jobs/" + encodeURIComponent(job.id) + "/" + action + query, { method: "POST" });
    flash(action + " " + job.id + ": ok", "ok");
  } catch (e) {
    flash(action + " " + job.id + " failed: " + e.message, "error");
  }
  refresh();
}

function actionButtons(job) {
  const out = [];
  if (RETRYABLE.has(job.state)) {
    out.push(el("button", { type: "button", class: "retry", "data-testid": "retry-" + job.id,
                            text: "Retry", onclick: () => act("retry", job) }));
  }
  if (job.state === "running" && job.cancel_requested) {
    out.push(el("span", { class: "muted", "data-testid": "stopping-" + job.id, text: "stopping…" }));
  } else if (CANCELLABLE.has(job.state)) {
    out.push(el("button", { type: "button", class: "cancel", "data-testid": "cancel-" + job.id,
                            text: "Cancel", onclick: () => act("cancel", job) }));
  }
  return out;
}

function actions(job) {
  return el("td", {}, ...actionButtons(job));
}

function fillBody(table, rows, columns, emptyText) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el("tr", {}, el("td", { class: "empty", colspan: String(columns), text: emptyText })));
}

function renderQueues(queues) {
  const table = $("queues");
  const pausable = queues.some((q) => q.paused !== undefined);
  const rated = queues.some((q) => q.rate !== undefined);  // PUT /api/queues/{q}/rate (features.md)
  const head = el("tr", {}, el("th", { text: "queue" }),
                  ...STATES.map((s) => el("th", { class: "num", text: s.replace("_", " ") })),
                  el("th", { class: "num", text: "total" }), ...(rated ? [el("th", { text: "rate" })] : []),
                  ...(pausable ? [el("th", { text: "claiming" })] : []));
  table.tHead.replaceChildren(head);
  const rows = queues.map((q) => el("tr", { "data-testid": "queue-" + q.name, "data-queue": q.name },
    el("td", {}, el("a", { href: "/?queue=" + encodeURIComponent(q.name), text: q.name })),
    ...STATES.map((s) => el("td", { class: "num", "data-state": s, text: String(q.counts[s] || 0) })),
    el("td", { class: "num", text: String(q.total) }),
    ...(rated ? [el("td", { "data-testid": "rate-" + q.name, text: q.rate || "–" })] : []),
    ...(pausable ? [pauseCell(q)] : [])));
  fillBody(table, rows, STATES.length + 2 + (rated ? 1 : 0) + (pausable ? 1 : 0), "no queues yet: enqueue a job");
}

// Pause / resume (POST /api/queues/{q}/pause|resume), when the API reports `paused`.
function pauseCell(q) {
  const action = q.paused ? "resume" : "pause";
  const toggle = async () => {
    try {
      await api("/api/queues/" + encodeURIComponent(q.name) + "/" + action, { method: "POST" });
      flash(action + " " + q.name + ": ok", "ok");
    } catch (e) {
      flash(action + " " + q.name + " failed: " + e.message, "error");
    }
    refresh();
  };
  return el("td", { "data-paused": String(Boolean(q.paused)) },
    el("span", { class: "badge " + (q.paused ? "s-paused" : "s-done"), "data-testid": "paused-" + q.name,
                 text: q.paused ? "paused" : "on" }), " ",
    el("button", { type: "button", "data-testid": action + "-" + q.name, text: q.paused ? "Resume" : "Pause",
                   onclick: toggle }));
}

function runningLinks(w) {
  const jobs = w.running_jobs || [];
  const links = [];
  jobs.slice(0, 5).forEach((job, i) => {
    if (i) links.push(", ");
    links.push(el("a", { href: jobHref(job), class: "mono", "data-testid": "running-" + job.id,
                         title: job.queue + " " + job.id, text: job.id.slice(0, 8) }));
  });
  if (w.running > Math.min(jobs.length, 5)) links.push(el("span", { class: "muted", text: " +" + (w.running - Math.min(jobs.length, 5)) + " more" }));
  return links;
}

function renderWorkers(workers) {
  const stale = 15;
  const rows = workers.map((w) => el("tr", { "data-testid": "worker-" + w.id, "data-worker": w.id },
    el("td", { class: "mono", text: w.id }),
    el("td", { text: w.host }),
    el("td", { class: "num", text: String(w.pid) }),
    el("td", { text: w.queues.join(", ") }),
    el("td", { class: "wrap", "data-testid": "handlers",
               text: Array.isArray(w.handlers) ? (w.handlers.join(", ") || "none") : "–" }),
    el("td", { class: "num", "data-testid": "running", text: w.running + " / " + w.concurrency }),
    el("td", { "data-testid": "running-jobs" }, ...runningLinks(w)),
    el("td", { class: "num" + (w.heartbeat_age > stale ? " stale" : ""), "data-testid": "heartbeat-age",
               text: fmtAge(w.heartbeat_age) })));
  fillBody($("workers"), rows, 8, "no live workers");
}

function jobRow(job) {
  return el("tr", { "data-testid": "job-" + job.id, "data-job-id": job.id, "data-state": job.state, class: "job-row" },
    el("td", {}, el("a", { href: jobHref(job), class: "mono", title: job.id, "data-testid": "open", text: job.id.slice(0, 12) })),
    el("td", { text: job.name }),
    el("td", { text: job.queue }),
    el("td", {}, el("span", { class: "badge s-" + job.state, "data-testid": "state", text: job.state }),
       ...progressOf(job)),
    el("td", { class: "num", text: job.attempts + " / " + job.max_attempts }),
    el("td", { text: fmtTime(job.created_at) }),
    el("td", { class: "mono", text: job.worker || "" }),
    errorCell(job),
    actions(job));
}

function progressOf(job) {
  if (job.progress === null || job.progress === undefined) return [];
  const p = Number(job.progress);
  const shown = p >= 0 && p <= 1 ? Math.round(p * 100) + "%" : String(p);
  const text = " " + shown + (job.progress_message ? " " + job.progress_message : "");
  return [el("span", { class: "muted", "data-testid": "progress", text: text })];
}

function renderSchedules(schedules) {
  const rows = schedules.map((s) => el("tr", { "data-testid": "schedule-" + s.name },
    el("td", { class: "mono", text: s.name }),
    el("td", { text: s.handler }),
    el("td", { text: s.queue }),
    el("td", { class: "mono", text: s.expression }),
    el("td", { text: s.timezone }),
    el("td", { text: s.next_fire === null ? "never" : new Date(s.next_fire * 1000).toLocaleString() })));
  fillBody($("schedules"), rows, 6, "no schedules declared");
}

function failureRow(job) {
  return el("tr", { "data-testid": "failure-" + job.id, "data-job-id": job.id, "data-state": job.state, class: "failure-row" },
    el("td", {}, el("a", { href: jobHref(job), class: "mono", title: job.id, "data-testid": "open", text: job.id.slice(0, 12) })),
    el("td", { text: job.name }),
    el("td", { text: job.queue }),
    el("td", { class: "num", text: job.attempts + " / " + job.max_attempts }),
    el("td", { text: fmtTime(job.finished_at) }),
    errorCell(job, "error"),
    actions(job));
}

// -- finding jobs: filters (kept in the address, so a view can be shared) and pages ------------------

const FILTERS = [["state-filter", "state"], ["queue-filter", "queue"], ["name-filter", "name"]];
let pages = [null];  // the cursor of each page seen so far; the last one is the page shown

function filters() {
  const out = {};
  for (const [id, key] of FILTERS) {
    const value = $(id).value.trim();
    if (value) out[key] = value;
  }
  return out;
}

function jobsQuery() {
  const params = new URLSearchParams(Object.assign({ limit: $("page-size").value }, filters()));
  const cursor = pages[pages.length - 1];
  if (cursor) params.set("cursor", cursor);
  return "/api/jobs?" + params;
}

function filtersChanged() {
  pages = [null];
  const params = new URLSearchParams(filters());
  history.replaceState(null, "", params.toString() ? "/?" + params : "/");
  refresh();
}

function renderPager(cursor) {
  $("page-number").textContent = "page " + pages.length;
  $("prev-page").disabled = $("first-page").disabled = pages.length === 1;
  const next = $("next-page");
  next.disabled = !cursor;
  next.dataset.cursor = cursor || "";
}

function turnPage(how) {
  if (how === "next" && $("next-page").dataset.cursor) pages.push($("next-page").dataset.cursor);
  else if (how === "prev" && pages.length > 1) pages.pop();
  else if (how === "first") pages = [null];
  refresh();
}

// -- bulk actions on the filtered jobs (POST /api/jobs/retry|cancel, bounded per call) ---------------

const BULK = {
  retry: { states: ["failed", "cancelled"], all: "failed/cancelled", label: "Retry all " },
  cancel: { states: ["deferred", "enqueued", "scheduled", "retry_scheduled", "running"], all: "waiting", label: "Cancel all " },
};
let bulkShown = null;

function describe(action, f) {
  const parts = [f.state || BULK[action].all, "jobs"];
  if (f.name) parts.push("named " + f.name);
  if (f.queue) parts.push("in queue " + f.queue);
  return parts.join(" ");
}

async function bulk(action, f) {
  const what = describe(action, f);
  if (!confirm(action + " every " + what + "?")) return;
  try {
    const r = await api("/api/jobs/" + action, { method: "POST", body: JSON.stringify(f) });
    flash(action + ": " + r.moved + " of " + r.matched + " " + what + (r.more ? " (more match: run it again)" : ""), "ok");
  } catch (e) {
    flash(action + " " + what + " failed: " + e.message, "error");
  }
  refresh();
}

// The buttons follow the filters: retry for failed/cancelled, cancel for jobs not finished yet.
function renderBulk(f) {
  const key = JSON.stringify(f);
  if (key === bulkShown) return;
  bulkShown = key;
  const buttons = [];
  for (const action of ["retry", "cancel"]) {
    if (f.state && !BULK[action].states.includes(f.state)) continue;
    buttons.push(el("button", { type: "button", class: action === "cancel" ? "danger" : "", "data-testid": "bulk-" + action,
                                title: action + " every " + describe(action, f) + " (up to 1000 per click)",
                                text: BULK[action].label + (f.state || BULK[action].all).replace("_", " "),
                                onclick: () => bulk(action, f) }));
  }
  $("bulk").replaceChildren(...buttons);
}

// -- refreshing -------------------------------------------------------------------------------------

let chartsAt = 0;
async function refreshCharts(queues) {
  if (Date.now() - chartsAt < CHARTS_MS) return;
  chartsAt = Date.now();
  const width = ($("charts").clientWidth - 60) / 2;  // two charts side by side per queue
  const cards = await Promise.all(queues.map(async (q) => {
    const minutes = encodeURIComponent($("history-window").value);
    const history = await api("/api/queues/" + encodeURIComponent(q.name) + "/history?minutes=" + minutes);
    return queueCharts(q.name, history.minutes, width);
  }));
  $("charts").replaceChildren(...cards);
  if (!cards.length) $("charts").append(el("p", { class: "empty", text: "no queues yet" }));
}

async function refreshOverview() {
  const [queues, workers, jobs, failures, schedules] = await Promise.all([
    api("/api/queues"), api("/api/workers"), api(jobsQuery()), api("/api/jobs?state=failed&limit=15"),
    api("/api/schedules").catch(() => ({ schedules: [] })),
  ]);
  renderQueues(queues.queues);
  renderWorkers(workers.workers);
  renderSchedules(schedules.schedules);
  fillBody($("jobs"), jobs.jobs.map(jobRow), 9, pages.length > 1 ? "no more jobs" : "no jobs");
  renderPager(jobs.cursor);
  fillBody($("failures"), failures.jobs.map(failureRow), 7, "no failures");
  renderBulk(filters());
  await refreshCharts(queues.queues);
}

let timer = null;
let busy = false;
async function refresh() {
  clearTimeout(timer);
  if (busy) { timer = setTimeout(refresh, REFRESH_MS); return; }
  busy = true;
  try {
    const target = detailTarget();
    if (target) await refreshDetail(target);
    else await refreshOverview();
    $("status").textContent = "live";
    $("status").className = "ok";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("status").textContent = "error: " + e.message;
    $("status").className = "bad";
  } finally {
    busy = false;
    if (!$("paused").checked) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function parseJson(text, label, fallback) {
  if (!text.trim()) return fallback;
  try { return JSON.parse(text); } catch (e) { throw new Error(label + " is not valid JSON"); }
}

async function enqueue(event) {
  event.preventDefault();
  // form.elements, not form.name: a form's own `name` property would shadow the "name" input.
  const f = event.target.elements;
  try {
    const body = {
      name: f["name"].value.trim(),
      args: parseJson(f["args"].value, "args", []),
      kwargs: parseJson(f["kwargs"].value, "kwargs", {}),
      queue: f["queue"].value.trim() || "default",
      max_attempts: Number(f["max_attempts"].value || 3),
    };
    if (f["delay"].value) body.delay = Number(f["delay"].value);
    body.events = true;  // its changes reach this page at once through /api/events
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
    flash("enqueued " + job.name + " as " + job.id + " (" + job.state + ")", "ok");
  } catch (e) {
    flash("enqueue failed: " + e.message, "error");
  }
  refresh();
}

// Find a job by its id: open its page when it exists, else say why not.
async function lookup(event) {
  event.preventDefault();
  const id = $("lookup-id").value.trim();
  if (!id) return;
  try {
    const job = await api("/api/jobs/" + encodeURIComponent(id));
    location.assign(jobHref(job));
  } catch (e) {
    flash(e.message.startsWith("404") ? "no job " + id : "find " + id + " failed: " + e.message, "error");
  }
}

function init() {
  const select = $("state-filter");
  for (const s of STATES) select.append(el("option", { value: s, text: s }));
  const token = $("token");
  token.value = localStorage.getItem(TOKEN_KEY) || "";
  token.addEventListener("change", () => {
    if (token.value) localStorage.setItem(TOKEN_KEY, token.value);
    else localStorage.removeItem(TOKEN_KEY);
    flash(token.value ? "token saved in this browser" : "token cleared", "ok");
  });
  const params = new URLSearchParams(location.search);
  for (const [id, key] of FILTERS) {
    if (params.get(key)) $(id).value = params.get(key);
    $(id).addEventListener("change", filtersChanged);
  }
  $("page-size").addEventListener("change", filtersChanged);
  $("next-page").addEventListener("click", () => turnPage("next"));
  $("prev-page").addEventListener("click", () => turnPage("prev"));
  $("first-page").addEventListener("click", () => turnPage("first"));
  $("paused").addEventListener("change", refresh);
  $("history-window").addEventListener("change", () => { chartsAt = 0; refresh(); });
  $("enqueue-form").addEventListener("submit", enqueue);
  $("lookup").addEventListener("submit", lookup);
  (detailTarget() ? $("detail") : $("overview")).hidden = false;
  refresh();
  listen();
}

// Job events (jobs enqueued with events on) refresh the page at once; the 2 s refresh stays
// for everything else. EventSource reconnects by itself when the server ends the stream.
let eventRefresh = null;
function listen() {
  if (!window.EventSource) return;
  const source = new EventSource("/api/events");
  source.onmessage = () => {
    if ($("paused").checked || eventRefresh) return;
    eventRefresh = setTimeout(() => { eventRefresh = null; refresh(); }, 100);
  };
}
init();
