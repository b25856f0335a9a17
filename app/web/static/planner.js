// The planner view: a law, a pruned model on sliders, the predicted curve with its band, the
// observed runs nearest to the sliders, each rule's recommended tokens, and the joint plan.

import { allPages, api, showError } from "./api.js";
import { drawChart } from "./chart.js";
import { families as loadFamilies } from "./families.js";
import { count, h, interval, loss as fmtLoss, num, tokensAnswer } from "./format.js";

const $ = (id) => document.getElementById(id);

/** The law of docs/law.md §2's example, offered when pasting an inline law. */
const EXAMPLE_LAW = {
  form: "p2",
  params: { N_C: 0.5, D_C: 0.02, E: 0.05, alpha: 0.3, beta: 0.5, gamma: -0.8, delta: 0.1 },
};
/** Slider bounds without any data (inline law and no family). */
const OPEN_BOUNDS = { n0: [8, 11.5], rho: [0.02, 0.9], l0: [1, 5] };
const GRID_POINTS = 80;
const NEAREST_RUNS = 3;
const TARGET_ABOVE_FLOOR = 0.05;

const state = { families: [], observations: new Map(), seq: 0, timer: null, updates: 0 };

function familyEntry() {
  return state.families.find((f) => f.family === $("family").value) || null;
}

function methodEntry() {
  const family = familyEntry();
  return family ? family.methods.find((m) => m.method === $("method").value) || null : null;
}

/** The data ranges the sliders are bounded by: the chosen method's, else its family's. */
function dataRanges() {
  return methodEntry() || familyEntry();
}

function lawSource() {
  return document.querySelector('input[name="law-source"]:checked').value;
}

/** The request fields that choose the law (docs/api.md "Choosing a law"). */
function lawChoice() {
  if (lawSource() === "inline") {
    let law;
    try {
      law = JSON.parse($("inline-law").value);
    } catch (error) {
      throw new Error(`The inline law is not JSON: ${error.message}`);
    }
    return { law };
  }
  if (!$("family").value || !$("method").value) throw new Error("Choose a family and a method, or paste an inline law.");
  return { family: $("family").value, method: $("method").value };
}

function bounds(ranges, beyond) {
  if (!ranges) return OPEN_BOUNDS;
  let [n0lo, n0hi] = ranges.n0.map(Math.log10);
  let [rlo, rhi] = ranges.rho;
  let [llo, lhi] = ranges.l0;
  // One size (or one ρ, one L0) in the data still needs a slider that moves.
  if (n0hi - n0lo < 0.2) [n0lo, n0hi] = [n0lo - 0.1, n0hi + 0.1];
  if (rhi - rlo < 0.02) [rlo, rhi] = [rlo - 0.01, rhi + 0.01];
  if (lhi - llo < 0.02) [llo, lhi] = [llo - 0.01, lhi + 0.01];
  if (beyond) [n0lo, n0hi, rlo, rhi, llo, lhi] = [n0lo - 1, n0hi + 1, 0.01, 0.95, llo - 1, lhi + 1];
  return {
    n0: [n0lo, n0hi],
    rho: [Math.max(rlo, 0.005), Math.min(rhi, 0.995)],
    l0: [Math.max(llo, 0.05), lhi],
  };
}

/** `value`, or the end of the data's span `[lo, hi]` that it is within `tolerance` of. */
function snap(value, span, tolerance) {
  if (!span) return value;
  return span.find((end) => Math.abs(end - value) <= tolerance) ?? value;
}

/**
 * The slider values as the requests send them: N0 to 3 significant digits, ρ and L0 to 3
 * decimals, except that a value within half a slider step of an end of the data's span is that
 * end exactly (a family of one size has N0 = 134,515,008, not 1.35e8, which would be outside).
 */
export function sliderValues() {
  const ranges = dataRanges();
  const exponent = Number($("n0").value);
  const end = ranges?.n0.find((x) => Math.abs(Math.log10(x) - exponent) <= Number($("n0").step) / 2);
  return {
    n0: end ?? Number((10 ** exponent).toPrecision(3)),
    rho: snap(Number(Number($("rho").value).toFixed(3)), ranges?.rho, Number($("rho").step) / 2),
    l0: snap(Number(Number($("l0").value).toFixed(3)), ranges?.l0, Number($("l0").step) / 2),
  };
}

function setBounds(centre) {
  const b = bounds(dataRanges(), $("beyond").checked);
  for (const name of ["n0", "rho", "l0"]) {
    const slider = $(name);
    const before = Number(slider.value);
    slider.min = String(b[name][0]);
    slider.max = String(b[name][1]);
    if (centre) slider.value = String((b[name][0] + b[name][1]) / 2);
    else slider.value = String(Math.min(Math.max(before, b[name][0]), b[name][1]));
  }
  showValues();
}

function showValues() {
  const v = sliderValues();
  const shown = { n0: `${count(v.n0)} parameters`, rho: num(v.rho, 3), l0: `${num(v.l0, 4)} nats` };
  for (const name of ["n0", "rho", "l0"]) {
    $(`${name}-value`).textContent = shown[name];
    $(`${name}-value`).dataset.value = String(v[name]);
    $(name).setAttribute("aria-valuetext", shown[name]);
  }
  const ranges = dataRanges();
  const notes = [];
  if (ranges) {
    const outside = (x, [lo, hi]) => x < lo * (1 - 1e-9) || x > hi * (1 + 1e-9);
    if (outside(v.n0, ranges.n0)) notes.push(`N0 ${count(v.n0)} is outside the data's ${count(ranges.n0[0])}–${count(ranges.n0[1])}`);
    if (outside(v.rho, ranges.rho)) notes.push(`ρ ${num(v.rho, 3)} is outside ${num(ranges.rho[0], 3)}–${num(ranges.rho[1], 3)}`);
    if (outside(v.l0, ranges.l0)) notes.push(`L0 ${num(v.l0, 4)} is outside ${num(ranges.l0[0], 4)}–${num(ranges.l0[1], 4)}`);
  }
  const note = $("extrapolating");
  note.hidden = notes.length === 0;
  note.textContent = notes.length ? `Extrapolating: ${notes.join("; ")}.` : "";
}

function fillMethods() {
  const family = familyEntry();
  const select = $("method");
  const before = select.value;
  select.replaceChildren(
    ...(family ? family.methods : []).map((m) =>
      h("option", { value: m.method }, m.default_fit_id ? `${m.method} (${m.default_form})` : `${m.method} (no default fit)`),
    ),
  );
  if (family && family.methods.some((m) => m.method === before)) select.value = before;
  else if (family) select.value = (family.methods.find((m) => m.default_fit_id) || family.methods[0] || {}).method || "";
}

function showFamilyInfo() {
  const family = familyEntry();
  const method = methodEntry();
  const info = $("family-info");
  if (!family) {
    info.textContent = state.families.length ? "" : "No stored observations yet: paste an inline law.";
    return;
  }
  const parts = [`${family.n_runs} runs, ${family.n_observations} points${family.reference ? " (reference data)" : ""}`];
  if (method) {
    parts.push(`${method.method}: ${method.n_runs} runs, tokens ${count(method.tokens[0])}–${count(method.tokens[1])}`);
    parts.push(method.default_fit_id ? `default fit ${method.default_form} ${method.default_fit_id.slice(0, 8)}` : "no default fit: fit one or paste an inline law");
  }
  info.textContent = parts.join(" · ");
}

function onFamilyChange() {
  fillMethods();
  onMethodChange();
  const family = familyEntry();
  if (family) {
    $("rho-min").value = String(num(family.rho[0], 3));
    $("token-budget").value = Number(family.tokens[1].toPrecision(3)).toExponential();
  }
  plan();
}

function onMethodChange() {
  showFamilyInfo();
  setBounds(true);
  schedule(0);
}

/** Redraw after `delayMs` (slider moves within it make one request); busy from now on. */
function schedule(delayMs = 150) {
  clearTimeout(state.timer);
  document.querySelector("#view-planner .results").setAttribute("aria-busy", "true");
  state.timer = setTimeout(update, delayMs);
}

async function observedRuns() {
  const family = $("family").value;
  const method = $("method").value;
  if (!family || !method) return [];
  const key = `${family}\u0000${method}`;
  if (!state.observations.has(key)) {
    const query = `observations?family=${encodeURIComponent(family)}&method=${encodeURIComponent(method)}`;
    state.observations.set(key, allPages(query).catch(() => []));
  }
  const rows = await state.observations.get(key);
  const runs = new Map();
  for (const row of rows) {
    if (!runs.has(row.run_id)) runs.set(row.run_id, { run_id: row.run_id, n0: row.n0, rho: row.rho, l0: row.l0, points: [] });
    runs.get(row.run_id).points.push({ tokens: row.tokens, loss: row.loss, excluded: row.excluded });
  }
  return [...runs.values()];
}

/** The observed runs nearest to the sliders, in units of the data's span of each variable. */
function nearest(runs, v) {
  const r = dataRanges();
  const span = (lo, hi, fallback) => (hi - lo > 0 ? hi - lo : fallback);
  const sN = r ? span(Math.log10(r.n0[0]), Math.log10(r.n0[1]), 1) : 1;
  const sR = r ? span(r.rho[0], r.rho[1], 0.1) : 0.1;
  const sL = r ? span(r.l0[0], r.l0[1], 0.5) : 0.5;
  const distance = (run) =>
    Math.hypot((Math.log10(run.n0) - Math.log10(v.n0)) / sN, (run.rho - v.rho) / sR, (run.l0 - v.l0) / sL);
  return runs
    .map((run) => ({ ...run, distance: distance(run) }))
    .sort((a, b) => a.distance - b.distance)
    .slice(0, NEAREST_RUNS)
    .map((run) => ({ ...run, label: `${run.run_id}: N0 ${count(run.n0)}, ρ ${num(run.rho, 3)}, L0 ${num(run.l0, 4)}` }));
}

function logGrid(lo, hi, n) {
  const a = Math.log10(lo);
  const b = Math.log10(hi);
  return Array.from({ length: n }, (_, i) => Number((10 ** (a + ((b - a) * i) / (n - 1))).toPrecision(6)));
}

/**
 * How far a recommendation lies beyond the tokens its fit observed: the answer's
 * `beyond_observed` (null for an inline law, which has no data).
 */
function beyondOf(answer) {
  return answer.beyond_observed ?? null;
}

/** A table cell for a token answer: the count, or the extrapolation it is (tokensAnswer). */
function tokensCell(tokens, beyond, attrs = {}) {
  const shown = tokensAnswer(tokens, beyond);
  const cls = [attrs.class, shown.extrapolated ? "extrapolated" : null].filter(Boolean).join(" ");
  return h("td", {
    ...attrs,
    class: cls || null,
    "data-value": tokens,
    "data-beyond": Number.isFinite(beyond) ? beyond : null,
    title: `${tokens} tokens`,
  }, shown.text);
}

function ruleSetting(rule, body) {
  if (rule === "marginal") return `−dL/dD ≤ ${num(body.threshold)} nats per B tokens`;
  if (rule === "gap") return `L − floor ≤ ${num(body.threshold)} nats`;
  return $("target-loss").value.trim() === ""
    ? `L ≤ floor + ${TARGET_ABOVE_FLOOR} = ${fmtLoss(body.target_loss)}`
    : `L ≤ ${fmtLoss(body.target_loss)}`;
}

function renderRules(results) {
  const rows = results.map(({ rule, ok, body, answer, error }) => {
    const setting = body ? ruleSetting(rule, body) : "–";
    if (!ok) {
      return h("tr", { id: `rule-${rule}`, "data-rule": rule, class: "failed" },
        h("th", { scope: "row" }, rule), h("td", {}, setting),
        h("td", { colspan: 5, class: "rule-error" }, error.message));
    }
    const notes = [answer.capped ? "capped at max_tokens" : null, ...answer.warnings].filter(Boolean);
    const beyond = beyondOf(answer);
    const [lo, hi] = answer.tokens_interval || [null, null];
    return h("tr", { id: `rule-${rule}`, "data-rule": rule, "data-target": body.target_loss ?? "" },
      h("th", { scope: "row" }, rule),
      h("td", {}, setting),
      tokensCell(answer.tokens, beyond, { class: "tokens" }),
      h("td", { class: "tokens-interval" }, answer.tokens_interval ? interval(lo, hi, count) : "–"),
      h("td", { class: "loss", "data-value": answer.predicted_loss }, fmtLoss(answer.predicted_loss)),
      h("td", { class: "floor", "data-value": answer.floor_loss }, fmtLoss(answer.floor_loss)),
      h("td", { class: "note" }, notes.length ? `${notes.length} warning${notes.length > 1 ? "s" : ""}` : ""));
  });
  $("rules-table").tBodies[0].replaceChildren(...rows);
}

/**
 * The API's warnings as a list; `far` (messages about answers beyond FAR_BEYOND) come first,
 * marked, and keep a folded list open: an extrapolation's warnings are never folded away.
 */
function renderWarnings(list, messages, far = []) {
  const unique = [...new Set([...far, ...messages])];
  const marked = new Set(far);
  list.replaceChildren(...unique.map((m) => h("li", { class: marked.has(m) ? "far" : null }, m)));
  const box = list.closest("details");
  if (box) {
    box.hidden = unique.length === 0;
    box.open = far.length > 0;
    box.querySelector("summary").textContent = `${unique.length} warning${unique.length === 1 ? "" : "s"} from the API`;
  }
}

async function update() {
  state.timer = null;
  const seq = ++state.seq;
  const results = document.querySelector("#view-planner .results");
  results.setAttribute("aria-busy", "true");
  // Not busy only when this is the latest request and no other is scheduled.
  const done = () => {
    if (seq !== state.seq) return;
    state.updates += 1;
    results.dataset.updates = String(state.updates);
    if (state.timer === null) results.setAttribute("aria-busy", "false");
  };
  const box = $("planner-error");
  let choice;
  try {
    choice = lawChoice();
  } catch (error) {
    showError(box, error);
    done();
    return;
  }
  showError(box, null);
  const v = sliderValues();
  const level = Number($("interval").value);
  const common = { ...choice, ...v, interval: level, interval_kind: $("interval-kind").value };
  const ask = (rule, extra) => {
    const body = { ...common, rule, ...extra };
    return api("recommend", { method: "POST", body }).then(
      (answer) => ({ rule, ok: true, body, answer }),
      (error) => ({ rule, ok: false, body, error }),
    );
  };
  const marginal = ask("marginal", { threshold: Number($("marginal-threshold").value) });
  const gap = ask("gap", { threshold: Number($("gap-threshold").value) });
  const typed = $("target-loss").value.trim();
  const target = typed !== ""
    ? ask("target", { target_loss: Number(typed) })
    : Promise.all([marginal, gap]).then(([m, g]) => {
        const floor = [m, g].find((x) => x.ok)?.answer.floor_loss;
        if (floor === undefined) return { rule: "target", ok: false, body: null, error: new Error("needs the law's floor, which no other rule gave") };
        return ask("target", { target_loss: floor + TARGET_ABOVE_FLOOR });
      });
  const rules = await Promise.all([marginal, gap, target]);
  if (seq !== state.seq) return;
  renderRules(rules);

  const answers = rules.filter((r) => r.ok).map((r) => r.answer.tokens);
  const ranges = dataRanges();
  let lo = Math.min(...answers, ...(ranges ? [ranges.tokens[0]] : []));
  let hi = Math.max(...answers, ...(ranges ? [ranges.tokens[1]] : []));
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) [lo, hi] = [1e7, 1e10];
  const tokens = logGrid(Math.max(lo / 10, 1), hi * 10, GRID_POINTS);
  let prediction;
  try {
    prediction = await api("predict", {
      method: "POST",
      body: {
        ...choice,
        columns: { n0: tokens.map(() => v.n0), rho: tokens.map(() => v.rho), l0: tokens.map(() => v.l0), tokens },
        interval: level,
        interval_kind: common.interval_kind,
      },
    });
  } catch (error) {
    if (seq !== state.seq) return;
    showError(box, error);
    $("chart").replaceChildren();
    done();
    return;
  }
  const runs = nearest(await observedRuns(), v);
  if (seq !== state.seq) return;
  const markers = rules.filter((r) => r.ok).map((r) => {
    const shown = tokensAnswer(r.answer.tokens, beyondOf(r.answer));
    return {
      rule: r.rule,
      tokens: r.answer.tokens,
      loss: r.answer.predicted_loss,
      label: `${r.rule}: ${shown.short}, ${fmtLoss(r.answer.predicted_loss)}`,
    };
  });
  const summary = [
    `Loss predicted by the ${prediction.form} law from ${count(tokens[0])} to ${count(tokens[tokens.length - 1])} tokens`,
    prediction.lower ? ` with a ${Math.round(level * 100)}% ${common.interval_kind} band` : " without a band",
    `. ${markers.map((m) => m.label).join("; ")}.`,
  ].join("");
  drawChart($("chart"), {
    curve: { tokens, loss: prediction.loss, lower: prediction.lower, upper: prediction.upper },
    runs,
    markers,
    data: ranges ? ranges.tokens : null,
    summary,
  });
  const far = rules
    .filter((r) => r.ok && tokensAnswer(r.answer.tokens, beyondOf(r.answer)).extrapolated)
    .map((r) => `${r.rule}: ${tokensAnswer(r.answer.tokens, beyondOf(r.answer)).text}; the law has not been checked that far`);
  renderWarnings($("planner-warnings"), [
    ...prediction.warnings.map((w) => `curve: ${w}`),
    ...rules.filter((r) => r.ok).flatMap((r) => r.answer.warnings.map((w) => `${r.rule}: ${w}`)),
  ], far);
  done();
}

async function plan(event) {
  if (event) event.preventDefault();
  const box = $("plan-error");
  const body = $("plan-table").tBodies[0];
  if (!$("family").value) return;
  const v = sliderValues();
  const level = Number($("interval").value);
  try {
    const answer = await api("plan", {
      method: "POST",
      body: {
        family: $("family").value,
        n0: v.n0,
        l0: v.l0,
        rho_min: Number($("rho-min").value),
        token_budget: Number($("token-budget").value),
        interval: level,
        interval_kind: $("interval-kind").value,
        max_options: Number($("plan-options").value),
      },
    });
    showError(box, null);
    body.replaceChildren(
      ...answer.options.map((o, i) =>
        h("tr", { class: i === 0 ? "best" : null, "data-rank": i + 1, "data-method": o.method },
          h("td", {}, String(i + 1), i === 0 ? h("span", { class: "badge" }, "best") : null),
          h("td", {}, o.method),
          h("td", {}, num(o.rho, 3)),
          tokensCell(o.tokens, o.beyond_observed ?? null, { class: "tokens" }),
          h("td", {}, fmtLoss(o.predicted_loss)),
          h("td", {}, interval(o.lower, o.upper)),
          h("td", {}, count(o.n_after))),
      ),
    );
    const far = answer.warnings.filter((w) => /extrapolation/.test(w));
    renderWarnings($("plan-warnings"), [`Compared: ${answer.methods.join(", ")}`, ...answer.warnings], far);
  } catch (error) {
    showError(box, error);
    body.replaceChildren();
    renderWarnings($("plan-warnings"), []);
  }
}

/** Fill the family choices and draw the first curve. */
export async function initPlanner() {
  $("inline-law").value = JSON.stringify(EXAMPLE_LAW, null, 2);
  try {
    state.families = await loadFamilies();
  } catch (error) {
    state.families = [];
    showError($("planner-error"), error);
  }
  const answers = (f) => f.methods.some((m) => m.default_fit_id);
  $("family").replaceChildren(
    ...state.families.map((f) => h("option", { value: f.family }, answers(f) ? f.family : `${f.family} (no default fit)`)),
  );
  // Start on a family a law answers for (a family with only fresh job runs has no fit yet).
  const answering = state.families.find(answers);
  if (answering) $("family").value = answering.family;
  if (!state.families.length) document.querySelector('input[name="law-source"][value="inline"]').checked = true;
  onLawSource();
  $("family").addEventListener("change", onFamilyChange);
  $("method").addEventListener("change", onMethodChange);
  for (const radio of document.querySelectorAll('input[name="law-source"]')) radio.addEventListener("change", onLawSource);
  for (const name of ["n0", "rho", "l0"]) {
    $(name).addEventListener("input", () => {
      showValues();
      schedule();
    });
  }
  $("beyond").addEventListener("change", () => {
    setBounds(false);
    schedule(0);
  });
  for (const id of ["marginal-threshold", "gap-threshold", "target-loss", "interval", "interval-kind", "inline-law"]) {
    $(id).addEventListener("change", () => schedule(0));
  }
  $("planner-form").addEventListener("submit", (event) => {
    event.preventDefault();
    schedule(0);
  });
  $("plan-form").addEventListener("submit", plan);
  onFamilyChange();
}

function onLawSource() {
  const inline = lawSource() === "inline";
  $("inline-law-box").hidden = !inline;
  schedule(0);
}
