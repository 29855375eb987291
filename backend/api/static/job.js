"use strict";
// The job detail view (GET /jobs/{id}): fields, payload, result, progress and each attempt's error.

function fmtFull(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
}

function jsonBlock(value, testid) {
  return el("pre", { "data-testid": testid, text: JSON.stringify(value, null, 2) });
}

function attemptBlock(entry, recovered) {
  const block = el("div", { class: "attempt" + (recovered ? " recovered" : ""), "data-testid": "attempt",
                            "data-attempt": String(entry.attempt) },
    el("div", {},
      el("strong", { text: "attempt " + entry.attempt }), " ",
      el("span", { class: "muted", text: fmtFull(entry.at) })),
    el("div", { class: "what", "data-testid": "attempt-error", text: entry.type + ": " + entry.message }));
  if (entry.traceback) block.append(el("pre", { "data-testid": "traceback", text: entry.traceback }));
  return block;
}

function field(label, value, testid) {
  return [el("dt", { text: label }), el("dd", testid ? { "data-testid": testid } : {}, value)];
}

function renderJobDetail(job, box) {
  const recovered = job.state === "done";  // its errors are history, not a failure: grey, not red
  const title = el("div", { class: "detail-title" },
    el("a", { href: "/", text: "← all jobs" }),
    el("h2", { "data-testid": "detail-name", text: job.name }),
    el("span", { class: "badge s-" + job.state, "data-testid": "detail-state", text: job.state }),
    ...progressOf(job),
    el("span", { class: "spacer" }));
  const buttons = actionButtons(job);
  if (buttons.length) title.append(...buttons);
  const fields = el("dl", { class: "fields" },
    ...field("id", el("span", { class: "mono", text: job.id }), "detail-id"),
    ...field("queue", job.queue, "detail-queue"),
    ...field("attempts", job.attempts + " of " + job.max_attempts, "detail-attempts"),
    ...field("priority", String(job.priority)),
    ...field("timeout", job.timeout === null ? "handler's default" : job.timeout + " s"),
    ...field("created", fmtFull(job.created_at)),
    ...field("run at", fmtFull(job.run_at)),
    ...field("started", fmtFull(job.started_at)),
    ...field("finished", fmtFull(job.finished_at)),
    ...field("worker", el("span", { class: "mono", text: job.worker || "–" }), "detail-worker"),
    ...field("lease until", fmtFull(job.lease_until)),
    ...field("unique key", job.unique_key || "–"),
    ...field("limit", job.limit_key ? job.limit_key + " ≤ " + job.limit : "–"));
  const parts = [title, fields];
  const unreadable = Object.keys(job.unreadable || {});
  if (unreadable.length) {
    parts.push(el("div", { class: "note bad", text: "corrupt record, unreadable fields: " + unreadable.join(", ") }));
  }
  const errors = job.errors || [];
  if (job.state === "done" && errors.length) {
    parts.push(el("div", { class: "note", "data-testid": "recovered",
                           text: "done after " + errors.length + " failed attempt" + (errors.length > 1 ? "s" : "") +
                                 ": its earlier errors are below" }));
  }
  parts.push(el("h3", { text: "args" }), jsonBlock(job.args, "detail-args"),
             el("h3", { text: "kwargs" }), jsonBlock(job.kwargs, "detail-kwargs"));
  if (job.state === "done") parts.push(el("h3", { text: "result" }), jsonBlock(job.result, "detail-result"));
  parts.push(el("h3", { text: "errors by attempt" + (errors.length ? " (oldest first)" : "") }));
  if (errors.length) {
    parts.push(el("div", { "data-testid": "attempts" }, ...errors.map((e) => attemptBlock(e, recovered))));
  } else if (job.last_error) {  // a record older than the history, or set aside: its last error only
    parts.push(attemptBlock(Object.assign({ attempt: "?", at: job.finished_at }, job.last_error), recovered));
  } else {
    parts.push(el("p", { class: "empty", "data-testid": "no-errors", text: "no failed attempt" }));
  }
  box.replaceChildren(...parts);
  box.setAttribute("data-state", job.state);
  document.title = job.name + " " + job.id.slice(0, 8) + " · bagbot jobs";
}

// The job id and queue of the page /jobs/{id}?queue=..., or null on the overview.
function detailTarget() {
  const match = location.pathname.match(/^\/jobs\/([A-Za-z0-9_-]{1,64})$/);
  if (!match) return null;
  return { id: match[1], queue: new URLSearchParams(location.search).get("queue") };
}

// Drawn again only when the job changed, so a traceback being read (scrolled, selected) stays put.
let shownJob = null;
async function refreshDetail(target) {
  const box = $("job-detail");
  const query = target.queue ? "?queue=" + encodeURIComponent(target.queue) : "";
  try {
    const job = await api("/api/jobs/" + encodeURIComponent(target.id) + query);
    const seen = JSON.stringify(job);
    if (seen !== shownJob) renderJobDetail(job, box);
    shownJob = seen;
  } catch (e) {
    shownJob = null;
    if (!e.message.startsWith("404")) throw e;
    box.replaceChildren(el("a", { href: "/", text: "← all jobs" }),
                        el("p", { class: "empty", "data-testid": "not-found", text: "no job " + target.id +
                              " (unknown id, or purged after its retention)" }));
  }
}
