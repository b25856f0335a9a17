// The jobs view: the list with live progress (polled every 2 s while the view is shown), the
// latest loss of each job against the law's forecast, a submit form and a Cancel button.

import { api, showError } from "./api.js";
import { families, methodEntry } from "./families.js";
import { count, duration, h, interval, loss as fmtLoss } from "./format.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const PAGE = 20;
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const CANCELLABLE = new Set(["queued", "running"]);

/** Prefilled body: examples/quick-job.json, the tiny model `make run` makes on its first start. */
const EXAMPLE_JOB = {
  model: "quick-llama",
  method: "depth",
  rho: 0.25,
  tokens: 30000,
  dataset: { path: "quick-llama.txt" },
  family: "quick-llama",
};

const state = { timer: null, busy: false, latest: new Map(), forecasts: new Map() };

/** The latest recorded loss of a job, fetched again only when its progress moved. */
async function latestLoss(job) {
  const done = job.progress.tokens_done;
  const known = state.latest.get(job.id);
  if (known && known.done === done) return known.point;
  if (done === 0 && !job.measured) return null;
  const page = await api(`jobs/${encodeURIComponent(job.id)}/observations?limit=1000`);
  const point = page.items.length ? page.items[page.items.length - 1] : null;
  state.latest.set(job.id, { done, point });
  return point;
}

/** The job's recovery recipe ("full" when its request names none). */
function recipeOf(job) {
  return job.request?.recipe?.kind ?? "full";
}

/** The default fit of the job's family, method and recipe: its prediction (with an 80%
 * interval) for the job's model at `tokens`. */
async function forecast(job, point, list) {
  if (!job.measured || !point) return null;
  const method = methodEntry(list, job.family, job.method, recipeOf(job));
  if (!method || !method.default_fit_id) return { missing: true };
  const key = `${job.id}:${point.tokens}:${method.default_fit_id}`;
  if (!state.forecasts.has(key)) {
    const body = {
      fit_id: method.default_fit_id,
      family: job.family,
      method: job.method,
      ...(recipeOf(job) === "full" ? {} : { recipe: recipeOf(job) }),
      points: [{ n0: job.measured.n0, rho: job.measured.rho, l0: job.measured.l0, tokens: point.tokens }],
      interval: 0.8,
    };
    state.forecasts.set(key, api("predict", { method: "POST", body }).then((r) => ({
      loss: r.loss[0],
      lower: r.lower ? r.lower[0] : null,
      upper: r.upper ? r.upper[0] : null,
      form: r.form,
    })));
  }
  return state.forecasts.get(key);
}

function progressCell(job) {
  const p = job.progress;
  const percent = Math.round(100 * (p.fraction || 0));
  return h("td", { class: "progress-cell" },
    h("progress", { max: 100, value: percent, "aria-label": `Job ${job.id.slice(0, 8)}: ${percent}% of its tokens` }),
    h("span", {}, ` ${count(p.tokens_done)} / ${count(p.tokens_total)}`));
}

async function cancel(job) {
  const box = $("jobs-error");
  try {
    await api(`jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST", write: true });
    showError(box, null);
  } catch (error) {
    showError(box, error);
  }
  await refresh();
}

function row(job, point, predicted) {
  const rho = job.measured ? job.measured.rho : job.request.rho;
  let law = "–";
  if (predicted && predicted.missing) law = "no default fit";
  else if (predicted) {
    const delta = point.loss - predicted.loss;
    law = `${fmtLoss(predicted.loss)} ${predicted.lower !== null ? interval(predicted.lower, predicted.upper) : ""} (${delta >= 0 ? "+" : ""}${delta.toFixed(4)})`;
  }
  const status = job.error ? `${job.status}: ${job.error}` : job.status;
  return h("tr", { "data-job-id": job.id, "data-status": job.status },
    h("td", { title: job.id }, h("code", {}, job.id.slice(0, 8))),
    h("td", { class: `status status-${job.status}` }, status, job.stopped_early ? " (stopped early)" : ""),
    h("td", {}, `${job.family} · ${job.method}${recipeOf(job) === "full" ? "" : ` · ${recipeOf(job)}`} · ${rho}`),
    progressCell(job),
    h("td", {}, duration(job.progress.eta_s)),
    h("td", { class: "latest" }, point ? `${fmtLoss(point.loss)} at ${count(point.tokens)}` : "–"),
    h("td", { class: "forecast" }, law),
    h("td", {}, CANCELLABLE.has(job.status)
      ? h("button", { type: "button", class: "cancel", "aria-label": `Cancel job ${job.id.slice(0, 8)}`, onclick: () => cancel(job) }, "Cancel")
      : ""));
}

/** Read the jobs page once and redraw the table. */
export async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const box = $("jobs-error");
  try {
    const page = await api(`jobs?limit=${PAGE}`);
    let list = [];
    try {
      list = await families(30000);
    } catch {
      list = [];
    }
    const rows = await Promise.all(
      page.items.map(async (job) => {
        let point = null;
        let predicted = null;
        try {
          point = await latestLoss(job);
          predicted = await forecast(job, point, list);
        } catch {
          // One job's losses or forecast failing leaves the rest of the table as it is.
        }
        return row(job, point, predicted);
      }),
    );
    const body = $("jobs-table").tBodies[0];
    body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8 }, "No jobs yet."))]));
    const active = page.items.filter((j) => ACTIVE.has(j.status)).length;
    $("jobs-updated").textContent = `${page.total} jobs, ${active} active · updated ${new Date().toLocaleTimeString()}`;
    if (box.dataset.source === "poll") showError(box, null);
  } catch (error) {
    showError(box, error);
    box.dataset.source = "poll";
  } finally {
    state.busy = false;
  }
}

async function submit(event) {
  event.preventDefault();
  const box = $("job-error");
  const result = $("job-result");
  result.textContent = "";
  let body;
  try {
    body = JSON.parse($("job-body").value);
  } catch (error) {
    showError(box, new Error(`The body is not JSON: ${error.message}`));
    return;
  }
  try {
    const job = await api("jobs/prune-finetune", { method: "POST", body, write: true });
    showError(box, null);
    result.textContent = `Job ${job.id} is ${job.status}.`;
    result.dataset.jobId = job.id;
  } catch (error) {
    showError(box, error);
  }
  await refresh();
}

/** Poll while the view is shown and the page visible. */
export function showJobs(visible) {
  clearInterval(state.timer);
  state.timer = null;
  if (!visible) return;
  refresh();
  state.timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, POLL_MS);
}

export function initJobs() {
  $("job-body").value = JSON.stringify(EXAMPLE_JOB, null, 2);
  $("job-form").addEventListener("submit", submit);
}
