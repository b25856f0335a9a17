// The planner view: a law, a pruned model on sliders, the predicted curve with its band, the
// observed runs nearest to the sliders, each rule's recommended tokens, and the joint plan;
// for a family with several recovery recipes, the same per recipe, side by side.

import { allPages, api, showError } from "./api.js";
import { drawChart } from "./chart.js";
import { families as loadFamilies, recipeOf } from "./families.js";
import { count, flops, h, interval, loss as fmtLoss, num, tokensAnswer } from "./format.js";

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
const RULES = ["marginal", "gap", "target"];
/** What each recovery recipe is (docs/jobs.md, "Recipes"). */
const RECIPE_TITLES = { full: "full post-training", lora: "LoRA adapters", distill: "distillation from the dense model" };
/** How many plan options a comparison of recipes reads (the API's most): the whole grid. */
const ALL_OPTIONS = 1000;

const state = { families: [], observations: new Map(), seq: 0, timer: null, updates: 0 };

function familyEntry() {
  return state.families.find((f) => f.family === $("family").value) || null;
}

/** The family's recovery recipes (a service that lists none has only "full"). */
function familyRecipes() {
  return familyEntry()?.recipes ?? ["full"];
}

/** Whether the page names recipes: not for a family of full post-training alone. */
function showsRecipes() {
  const recipes = familyRecipes();
  return recipes.length > 1 || recipes[0] !== "full";
}

/** Whether requests name a recipe: only a service whose families list recipes takes it. */
function namesRecipes() {
  return Array.isArray(familyEntry()?.recipes);
}

/**
 * The recipes the curve and the rules answer for: the one chosen, or with "all" the family's
 * recipes that have a default fit for the method (every one when none has).
 */
function comparedRecipes() {
  if ($("recipe").value !== "all") return [$("recipe").value || "full"];
  const fitted = familyRecipes().filter((r) => familyEntry()?.methods.some(
    (m) => m.method === $("method").value && recipeOf(m) === r && m.default_fit_id));
  return fitted.length ? fitted : familyRecipes();
}

/** The method's entries of GET /families, one per compared recipe it has data for. */
function methodEntries() {
  const recipes = comparedRecipes();
  return (familyEntry()?.methods ?? []).filter((m) => m.method === $("method").value && recipes.includes(recipeOf(m)));
}

/** The data ranges the sliders are bounded by: the chosen method's (over the recipes
 * compared), else its family's. */
function dataRanges() {
  const entries = methodEntries();
  if (!entries.length) return familyEntry();
  const span = (name) => [Math.min(...entries.map((m) => m[name][0])), Math.max(...entries.map((m) => m[name][1]))];
  return { n0: span("n0"), rho: span("rho"), l0: span("l0"), tokens: span("tokens") };
}

function lawSource() {
  return document.querySelector('input[name="law-source"]:checked').value;
}

/** The request fields that choose the law (docs/api.md "Choosing a law"), without the recipe. */
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

/** A method's choice: its default fit's form, per recipe when the family has several. */
function methodLabel(method, entries) {
  const fitted = entries.filter((m) => m.default_fit_id);
  if (!fitted.length) return `${method} (no default fit)`;
  if (!showsRecipes()) return `${method} (${fitted[0].default_form})`;
  return `${method} (${fitted.map((m) => `${recipeOf(m)} ${m.default_form}`).join(", ")})`;
}

function fillMethods() {
  const family = familyEntry();
  const select = $("method");
  const before = select.value;
  const names = [...new Set((family ? family.methods : []).map((m) => m.method))];
  select.replaceChildren(
    ...names.map((name) => h("option", { value: name }, methodLabel(name, family.methods.filter((m) => m.method === name)))),
  );
  if (names.includes(before)) select.value = before;
  else if (family) select.value = (family.methods.find((m) => m.default_fit_id) || family.methods[0] || {}).method || "";
}

/** The recipe choice: the family's recipes, and "all" when there are several; hidden for a
 * family of full post-training alone. */
function fillRecipes() {
  const recipes = familyRecipes();
  const select = $("recipe");
  // A recipe chosen among several stays chosen; otherwise "all" when there are several.
  const before = select.options.length > 1 ? select.value : null;
  const values = recipes.length > 1 ? ["all", ...recipes] : recipes;
  select.replaceChildren(...values.map((r) =>
    h("option", { value: r }, r === "all" ? "all: compare them" : `${r}${RECIPE_TITLES[r] ? ` (${RECIPE_TITLES[r]})` : ""}`)));
  select.value = values.includes(before) ? before : values[0];
  $("recipe-row").hidden = !showsRecipes();
}

function showFamilyInfo() {
  const family = familyEntry();
  const info = $("family-info");
  if (!family) {
    info.textContent = state.families.length ? "" : "No stored observations yet: paste an inline law.";
    return;
  }
  const parts = [`${family.n_runs} runs, ${family.n_observations} points${family.reference ? " (reference data)" : ""}`];
  for (const method of methodEntries()) {
    const name = showsRecipes() ? `${method.method} · ${recipeOf(method)}` : method.method;
    parts.push(`${name}: ${method.n_runs} runs, tokens ${count(method.tokens[0])}–${count(method.tokens[1])}`);
    parts.push(method.default_fit_id ? `default fit ${method.default_form} ${method.default_fit_id.slice(0, 8)}` : "no default fit: fit one or paste an inline law");
  }
  info.textContent = parts.join(" · ");
}

function onFamilyChange() {
  fillRecipes();
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

function onRecipeChange() {
  showFamilyInfo();
  setBounds(false);
  schedule(0);
  plan();
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
    if (!runs.has(row.run_id)) runs.set(row.run_id, { run_id: row.run_id, recipe: recipeOf(row), n0: row.n0, rho: row.rho, l0: row.l0, points: [] });
    runs.get(row.run_id).points.push({ tokens: row.tokens, loss: row.loss, excluded: row.excluded });
  }
  return [...runs.values()];
}

/**
 * The observed runs of each recipe in `recipes` nearest to the sliders, in units of the data's
 * span of each variable; with several recipes, fewer of each, named with their recipe.
 */
function nearest(runs, v, recipes) {
  const r = dataRanges();
  const span = (lo, hi, fallback) => (hi - lo > 0 ? hi - lo : fallback);
  const sN = r ? span(Math.log10(r.n0[0]), Math.log10(r.n0[1]), 1) : 1;
  const sR = r ? span(r.rho[0], r.rho[1], 0.1) : 0.1;
  const sL = r ? span(r.l0[0], r.l0[1], 0.5) : 0.5;
  const distance = (run) =>
    Math.hypot((Math.log10(run.n0) - Math.log10(v.n0)) / sN, (run.rho - v.rho) / sR, (run.l0 - v.l0) / sL);
  const several = recipes.length > 1;
  const each = Math.ceil(NEAREST_RUNS / recipes.length);
  return recipes.flatMap((recipe, curve) => runs
    .filter((run) => run.recipe === recipe)
    .map((run) => ({ ...run, distance: distance(run) }))
    .sort((a, b) => a.distance - b.distance)
    .slice(0, each)
    .map((run) => ({
      ...run,
      curve: several ? curve : undefined,
      label: `${run.run_id}${several ? ` (${recipe})` : ""}: N0 ${count(run.n0)}, ρ ${num(run.rho, 3)}, L0 ${num(run.l0, 4)}`,
    })));
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

function ruleSetting(rule, body, several) {
  if (rule === "marginal") return `−dL/dD ≤ ${num(body.threshold)} nats per B tokens`;
  if (rule === "gap") return `L − floor ≤ ${num(body.threshold)} nats`;
  if ($("target-loss").value.trim() !== "") return `L ≤ ${fmtLoss(body.target_loss)}`;
  return `L ≤ ${several ? "highest floor" : "floor"} + ${TARGET_ABOVE_FLOOR} = ${fmtLoss(body.target_loss)}`;
}

/** A rule's answer, named with its recipe when the rules answer for several. */
function ruleName(rule, recipe, several) {
  return several ? `${rule} · ${recipe}` : rule;
}

/** The rules' answers, each rule's recipes side by side (`several`: more than one recipe). */
function renderRules(results, several) {
  const rows = results.map(({ rule, recipe, ok, body, answer, error }) => {
    const setting = body ? ruleSetting(rule, body, several) : "–";
    const id = several ? `rule-${rule}-${recipe}` : `rule-${rule}`;
    if (!ok) {
      return h("tr", { id, "data-rule": rule, "data-recipe": recipe, class: "failed" },
        h("th", { scope: "row" }, ruleName(rule, recipe, several)), h("td", {}, setting),
        h("td", { colspan: 5, class: "rule-error" }, error.message));
    }
    const notes = [answer.capped ? "capped at max_tokens" : null, ...answer.warnings].filter(Boolean);
    const beyond = beyondOf(answer);
    const [lo, hi] = answer.tokens_interval || [null, null];
    return h("tr", { id, "data-rule": rule, "data-recipe": recipe, "data-target": body.target_loss ?? "" },
      h("th", { scope: "row" }, ruleName(rule, recipe, several)),
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
  // One curve per recipe compared; an inline law is one curve of no recipe.
  const recipes = choice.law ? [null] : comparedRecipes();
  const several = recipes.length > 1;
  const lawOf = (recipe) => (recipe && namesRecipes() ? { ...choice, recipe } : choice);
  const v = sliderValues();
  const level = Number($("interval").value);
  const common = { ...v, interval: level, interval_kind: $("interval-kind").value };
  const ask = (recipe, rule, extra) => {
    const body = { ...lawOf(recipe), ...common, rule, ...extra };
    return api("recommend", { method: "POST", body }).then(
      (answer) => ({ rule, recipe, ok: true, body, answer }),
      (error) => ({ rule, recipe, ok: false, body, error }),
    );
  };
  const first = recipes.flatMap((recipe) => [
    ask(recipe, "marginal", { threshold: Number($("marginal-threshold").value) }),
    ask(recipe, "gap", { threshold: Number($("gap-threshold").value) }),
  ]);
  const typed = $("target-loss").value.trim();
  // Without a typed target, one target for every recipe: the highest floor plus a margin.
  const target = typed !== ""
    ? Promise.all(recipes.map((recipe) => ask(recipe, "target", { target_loss: Number(typed) })))
    : Promise.all(first).then((answers) => {
        const floors = answers.filter((x) => x.ok).map((x) => x.answer.floor_loss);
        if (!floors.length) {
          const error = new Error("needs the law's floor, which no other rule gave");
          return recipes.map((recipe) => ({ rule: "target", recipe, ok: false, body: null, error }));
        }
        return Promise.all(recipes.map((recipe) => ask(recipe, "target", { target_loss: Math.max(...floors) + TARGET_ABOVE_FLOOR })));
      });
  const rules = [...(await Promise.all(first)), ...(await target)].sort(
    (a, b) => RULES.indexOf(a.rule) - RULES.indexOf(b.rule) || recipes.indexOf(a.recipe) - recipes.indexOf(b.recipe));
  if (seq !== state.seq) return;
  renderRules(rules, several);

  const answers = rules.filter((r) => r.ok).map((r) => r.answer.tokens);
  const ranges = dataRanges();
  let lo = Math.min(...answers, ...(ranges ? [ranges.tokens[0]] : []));
  let hi = Math.max(...answers, ...(ranges ? [ranges.tokens[1]] : []));
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) [lo, hi] = [1e7, 1e10];
  const tokens = logGrid(Math.max(lo / 10, 1), hi * 10, GRID_POINTS);
  const predictions = await Promise.all(recipes.map((recipe) => api("predict", {
    method: "POST",
    body: {
      ...lawOf(recipe),
      columns: { n0: tokens.map(() => v.n0), rho: tokens.map(() => v.rho), l0: tokens.map(() => v.l0), tokens },
      interval: level,
      interval_kind: common.interval_kind,
    },
  }).then((prediction) => ({ recipe, prediction }), (error) => ({ recipe, error }))));
  if (seq !== state.seq) return;
  const failed = predictions.filter((p) => p.error);
  if (failed.length === predictions.length) {
    showError(box, failed[0].error);
    $("chart").replaceChildren();
    done();
    return;
  }
  if (failed.length) showError(box, new Error(failed.map((p) => `curve ${p.recipe}: ${p.error.message}`).join("\n")));
  const curves = predictions.filter((p) => p.prediction).map(({ recipe, prediction }) => ({
    recipe,
    label: several ? `${recipe} (${prediction.form} law)` : null,
    tokens,
    loss: prediction.loss,
    lower: prediction.lower,
    upper: prediction.upper,
  }));
  const runs = nearest(await observedRuns(), v, choice.law ? comparedRecipes() : recipes);
  if (seq !== state.seq) return;
  const markers = rules.filter((r) => r.ok).map((r) => {
    const shown = tokensAnswer(r.answer.tokens, beyondOf(r.answer));
    return {
      rule: r.rule,
      tokens: r.answer.tokens,
      loss: r.answer.predicted_loss,
      label: `${ruleName(r.rule, r.recipe, several)}: ${shown.short}, ${fmtLoss(r.answer.predicted_loss)}`,
    };
  });
  const forms = [...new Set(predictions.filter((p) => p.prediction).map((p) => p.prediction.form))].join(" and ");
  const summary = [
    `Loss predicted by the ${forms} law${several ? ` for the recipes ${curves.map((c) => c.recipe).join(", ")}` : ""}`,
    ` from ${count(tokens[0])} to ${count(tokens[tokens.length - 1])} tokens`,
    curves.some((c) => c.lower) ? ` with a ${Math.round(level * 100)}% ${common.interval_kind} band` : " without a band",
    `. ${markers.map((m) => m.label).join("; ")}.`,
  ].join("");
  drawChart($("chart"), { curves, runs, markers, data: ranges ? ranges.tokens : null, summary });
  const far = rules
    .filter((r) => r.ok && tokensAnswer(r.answer.tokens, beyondOf(r.answer)).extrapolated)
    .map((r) => `${ruleName(r.rule, r.recipe, several)}: ${tokensAnswer(r.answer.tokens, beyondOf(r.answer)).text}; the law has not been checked that far`);
  renderWarnings($("planner-warnings"), [
    ...predictions.filter((p) => p.prediction).flatMap((p) => p.prediction.warnings.map((w) => `${several ? `curve ${p.recipe}` : "curve"}: ${w}`)),
    ...rules.filter((r) => r.ok).flatMap((r) => r.answer.warnings.map((w) => `${ruleName(r.rule, r.recipe, several)}: ${w}`)),
  ], far);
  done();
}

/**
 * Per recipe, side by side: its best option, and the fewest tokens and the fewest FLOPs with
 * which one of its options reaches the loss every recipe reaches (the highest of their bests).
 */
function renderRecipeSummary(options, recipes) {
  const table = $("plan-recipes");
  const mine = recipes.map((recipe) => options.filter((o) => o.recipe === recipe));
  table.hidden = recipes.length < 2 || mine.some((list) => !list.length);
  if (table.hidden) return;
  const goal = Math.max(...mine.map((list) => list[0].predicted_loss));
  // Options come best first, so a tie keeps the lower loss.
  const least = (list, key) => list.reduce((a, b) => (b[key] < a[key] ? b : a));
  const rows = mine.map((list) => {
    const reach = list.filter((o) => o.predicted_loss <= goal);
    return { best: list[0], tokens: least(reach, "tokens"), flops: least(reach, "flops") };
  });
  const fewest = (key) => Math.min(...rows.map((r) => r[key][key]));
  const what = (o) => `${o.method}, ρ ${num(o.rho, 3)}, loss ${fmtLoss(o.predicted_loss)}`;
  const lowest = { tokens: fewest("tokens"), flops: fewest("flops") };
  table.caption.textContent = `Recipes side by side: the fewest tokens and FLOPs to reach loss ≤ ${fmtLoss(goal)}, the highest of their best losses`;
  table.tBodies[0].replaceChildren(...rows.map((r, i) =>
    h("tr", { "data-recipe": recipes[i] },
      h("th", { scope: "row" }, recipes[i]),
      h("td", { class: "loss", title: what(r.best) }, fmtLoss(r.best.predicted_loss)),
      tokensCell(r.tokens.tokens, r.tokens.beyond_observed ?? null, { class: r.tokens.tokens === lowest.tokens ? "tokens best" : "tokens" }),
      h("td", { title: what(r.tokens) }, `${flops(r.tokens.flops)} (${what(r.tokens)})`),
      h("td", { class: r.flops.flops === lowest.flops ? "flops best" : "flops", "data-value": r.flops.flops }, flops(r.flops.flops)),
      h("td", { title: what(r.flops) }, `${tokensAnswer(r.flops.tokens, r.flops.beyond_observed ?? null).short} (${what(r.flops)})`))));
}

async function plan(event) {
  if (event) event.preventDefault();
  const box = $("plan-error");
  const body = $("plan-table").tBodies[0];
  if (!$("family").value) return;
  const v = sliderValues();
  const level = Number($("interval").value);
  const shown = Number($("plan-options").value);
  // A family with recipes other than full shows each option's recipe and FLOPs; comparing
  // several reads every option of the grid, so that each one's fewest tokens and FLOPs are found.
  const byRecipe = showsRecipes();
  const compare = byRecipe && $("recipe").value === "all";
  for (const cell of $("plan-table").querySelectorAll(".by-recipe")) cell.hidden = !byRecipe;
  try {
    const answer = await api("plan", {
      method: "POST",
      body: {
        family: $("family").value,
        ...(namesRecipes() ? { recipes: $("recipe").value === "all" ? null : [$("recipe").value] } : {}),
        n0: v.n0,
        l0: v.l0,
        rho_min: Number($("rho-min").value),
        token_budget: Number($("token-budget").value),
        interval: level,
        interval_kind: $("interval-kind").value,
        max_options: compare ? Math.max(shown, ALL_OPTIONS) : shown,
      },
    });
    showError(box, null);
    body.replaceChildren(
      ...answer.options.slice(0, shown).map((o, i) =>
        h("tr", { class: i === 0 ? "best" : null, "data-rank": i + 1, "data-method": o.method, "data-recipe": o.recipe },
          h("td", {}, String(i + 1), i === 0 ? h("span", { class: "badge" }, "best") : null),
          h("td", {}, o.method),
          byRecipe ? h("td", { class: "recipe" }, o.recipe) : null,
          h("td", {}, num(o.rho, 3)),
          tokensCell(o.tokens, o.beyond_observed ?? null, { class: "tokens" }),
          byRecipe ? h("td", { class: "flops", "data-value": o.flops }, flops(o.flops)) : null,
          h("td", {}, fmtLoss(o.predicted_loss)),
          h("td", {}, interval(o.lower, o.upper)),
          h("td", {}, count(o.n_after))),
      ),
    );
    renderRecipeSummary(answer.options, answer.recipes ?? []);
    const far = answer.warnings.filter((w) => /extrapolation/.test(w));
    const compared = `Compared: ${answer.methods.join(", ")}${byRecipe ? `; recipes ${(answer.recipes ?? []).join(", ")}` : ""}`;
    renderWarnings($("plan-warnings"), [compared, ...answer.warnings], far);
  } catch (error) {
    showError(box, error);
    body.replaceChildren();
    $("plan-recipes").hidden = true;
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
  $("recipe").addEventListener("change", onRecipeChange);
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
