// The planner's chart: loss against post-training tokens on a log axis, as inline SVG.

import { count, loss as fmtLoss } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 860;
const HEIGHT = 330;
const MARGIN = { left: 62, right: 16, top: 14, bottom: 42 };
const RUN_COLOURS = ["#b5532a", "#6d8f2e", "#7b4f9d"];
const RULE_COLOURS = { marginal: "#1f6fb2", gap: "#a23b72", target: "#2e7d32" };
/** Colour and dashes of each curve when several are drawn (one per recipe compared). */
const CURVE_STYLES = [
  { colour: "#234e70", dash: "none" },
  { colour: "#c05621", dash: "8 4" },
  { colour: "#6b46c1", dash: "2 3" },
  { colour: "#2c7a7b", dash: "12 3 2 3" },
];

function s(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, wanted = 5) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / wanted;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.ceil(lo); e <= Math.floor(hi); e += 1) ticks.push(e);
  if (ticks.length >= 2) return ticks;
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e += 1) {
    for (const m of [1, 2, 5]) {
      const t = e + Math.log10(m);
      if (t >= lo && t <= hi) ticks.push(t);
    }
  }
  return ticks;
}

/**
 * Draw into `box`:
 * - curves: [{recipe, label, tokens: [...], loss: [...], lower: [...]|null, upper: [...]|null}],
 *   all on the same tokens; several are told apart by colour and dashes, and named in the legend
 * - runs: [{run_id, label, curve, points: [{tokens, loss, excluded}]}] (observed, nearest
 *   first; a run with a `curve` index takes that curve's colour)
 * - markers: [{rule, tokens, loss, label}]
 * - data: [lo, hi] tokens of the observations (outside it is shaded: the law extrapolates), or null
 * - summary: text read by screen readers
 */
export function drawChart(box, { curves, runs = [], markers = [], data = null, summary = "" }) {
  const { tokens } = curves[0];
  const x0 = Math.log10(tokens[0]);
  const x1 = Math.log10(tokens[tokens.length - 1]);
  const inRange = (t) => t >= tokens[0] && t <= tokens[tokens.length - 1];
  const ys = [];
  for (const curve of curves) {
    ys.push(...curve.loss);
    if (curve.lower) ys.push(...curve.lower.filter(Number.isFinite));
    if (curve.upper) ys.push(...curve.upper.filter(Number.isFinite));
  }
  for (const run of runs) for (const p of run.points) if (inRange(p.tokens)) ys.push(p.loss);
  let y0 = Math.min(...ys);
  let y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.06 || 0.05;
  y0 -= pad;
  y1 += pad;
  const px = (t) => MARGIN.left + ((Math.log10(t) - x0) / (x1 - x0 || 1)) * (WIDTH - MARGIN.left - MARGIN.right);
  const py = (v) => MARGIN.top + (1 - (v - y0) / (y1 - y0)) * (HEIGHT - MARGIN.top - MARGIN.bottom);

  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: "img",
    "aria-labelledby": "chart-title chart-desc",
    class: "chart",
  });
  svg.append(s("title", { id: "chart-title" }, "Predicted loss against post-training tokens"));
  svg.append(s("desc", { id: "chart-desc" }, summary));

  const axes = s("g", { class: "axes" });
  for (const e of logTicks(x0, x1)) {
    const x = px(10 ** e);
    axes.append(s("line", { x1: x, x2: x, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom, class: "grid" }));
    axes.append(s("text", { x, y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, count(10 ** e)));
  }
  for (const v of niceTicks(y0, y1)) {
    const y = py(v);
    axes.append(s("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y, class: "grid" }));
    axes.append(s("text", { x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" }, String(v)));
  }
  axes.append(s("text", { x: (WIDTH + MARGIN.left) / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "axis-label" }, "post-training tokens (log scale)"));
  axes.append(s("text", { x: 14, y: (HEIGHT - MARGIN.bottom) / 2, transform: `rotate(-90 14 ${(HEIGHT - MARGIN.bottom) / 2})`, "text-anchor": "middle", class: "axis-label" }, "loss (nats)"));
  svg.append(axes);

  const clip = s("clipPath", { id: "plot-area" });
  clip.append(s("rect", { x: MARGIN.left, y: MARGIN.top, width: WIDTH - MARGIN.left - MARGIN.right, height: HEIGHT - MARGIN.top - MARGIN.bottom }));
  svg.append(clip);
  const plot = s("g", { "clip-path": "url(#plot-area)" });
  if (data) {
    const top = MARGIN.top;
    const height = HEIGHT - MARGIN.top - MARGIN.bottom;
    const left = Math.max(MARGIN.left, px(data[0]));
    const right = Math.min(WIDTH - MARGIN.right, px(data[1]));
    if (left > MARGIN.left) plot.append(s("rect", { class: "outside", x: MARGIN.left, y: top, width: left - MARGIN.left, height }));
    if (right < WIDTH - MARGIN.right) plot.append(s("rect", { class: "outside", x: right, y: top, width: WIDTH - MARGIN.right - right, height }));
  }

  // One curve keeps the page's colour and the ids curve-line and curve-band; several are
  // curve-line-<recipe>, each in its own colour and dashes, with a lighter band.
  const several = curves.length > 1;
  const styleOf = (index) => CURVE_STYLES[index % CURVE_STYLES.length];
  curves.forEach((curve, index) => {
    const id = several ? `-${curve.recipe}` : "";
    // Inline styles: the stylesheet's .curve and .band would win over SVG attributes.
    const style = several ? { style: `stroke: ${styleOf(index).colour}; stroke-dasharray: ${styleOf(index).dash}` } : {};
    const recipe = curve.recipe ? { "data-recipe": curve.recipe } : {};
    if (curve.lower && curve.upper) {
      const top = tokens.map((t, i) => `${px(t).toFixed(1)},${py(curve.upper[i]).toFixed(1)}`);
      const bottom = tokens.map((t, i) => `${px(t).toFixed(1)},${py(curve.lower[i]).toFixed(1)}`).reverse();
      const fill = several ? { style: `fill: ${styleOf(index).colour}; opacity: 0.1` } : {};
      plot.append(s("polygon", { id: `curve-band${id}`, class: "band", points: [...top, ...bottom].join(" "), ...fill, ...recipe }));
    }
    const d = tokens.map((t, i) => `${i ? "L" : "M"}${px(t).toFixed(2)},${py(curve.loss[i]).toFixed(2)}`).join("");
    plot.append(s("path", { id: `curve-line${id}`, class: "curve", d, ...style, ...recipe }));
  });

  const runColour = (run, index) =>
    several && run.curve !== undefined ? styleOf(run.curve).colour : RUN_COLOURS[index % RUN_COLOURS.length];
  runs.forEach((run, index) => {
    const colour = runColour(run, index);
    for (const p of run.points) {
      if (!inRange(p.tokens)) continue;
      const dot = s("circle", {
        class: "obs",
        cx: px(p.tokens).toFixed(1),
        cy: py(p.loss).toFixed(1),
        r: 3.5,
        stroke: colour,
        fill: p.excluded ? "none" : colour,
      });
      dot.append(s("title", {}, `${run.run_id}: ${count(p.tokens)} tokens, loss ${fmtLoss(p.loss)}${p.excluded ? " (excluded)" : ""}`));
      plot.append(dot);
    }
  });

  markers.forEach((m, index) => {
    const colour = RULE_COLOURS[m.rule] || "#333";
    const x = px(m.tokens);
    const y = py(m.loss);
    const g = s("g", { class: "marker", "data-rule": m.rule });
    g.append(s("line", { x1: x, x2: x, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom, stroke: colour, "stroke-dasharray": "4 3" }));
    g.append(s("circle", { cx: x, cy: y, r: 5, fill: colour }));
    const right = x < WIDTH - 190;
    g.append(s("text", {
      x: right ? x + 6 : x - 6,
      y: MARGIN.top + 14 + index * 15,
      "text-anchor": right ? "start" : "end",
      fill: colour,
      class: "marker-label",
    }, m.label));
    plot.append(g);
  });
  svg.append(plot);

  const legend = document.createElement("ul");
  legend.className = "legend";
  legend.setAttribute("aria-label", several ? "Curves and observed runs drawn" : "Observed runs drawn");
  if (several) {
    curves.forEach((curve, index) => {
      const item = document.createElement("li");
      item.dataset.recipe = curve.recipe;
      const line = document.createElement("span");
      line.className = "line";
      line.style.borderTop = `3px ${styleOf(index).dash === "none" ? "solid" : "dashed"} ${styleOf(index).colour}`;
      item.append(line, curve.label);
      legend.append(item);
    });
  }
  runs.forEach((run, index) => {
    const item = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = runColour(run, index);
    item.append(dot, run.label);
    legend.append(item);
  });
  if (!runs.length) legend.append(Object.assign(document.createElement("li"), { textContent: "No observed runs of this family and method." }));
  box.replaceChildren(svg, legend);
}
