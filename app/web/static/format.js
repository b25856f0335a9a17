// Number formats shared by the views.

/** A count such as 3.47e8 as "347M" (k, M, B, T), 3 significant digits. */
export function count(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) {
    if (Math.abs(value) >= size) return `${Number((value / size).toPrecision(3))}${unit}`;
  }
  return String(Number(value.toPrecision(3)));
}

/** Training FLOPs as "3.2e15 FLOPs" (2 significant digits). */
export function flops(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const [mantissa, exponent] = value.toExponential(1).split("e");
  return `${mantissa}e${Number(exponent)} FLOPs`;
}

/** A float with `digits` significant digits, "–" when missing. */
export function num(value, digits = 4) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return String(Number(value.toPrecision(digits)));
}

/** A loss in nats with 4 decimals. */
export function loss(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value.toFixed(4);
}

/** "[lo, hi]" with `fmt`, "–" when there is no interval. */
export function interval(lo, hi, fmt = loss) {
  if ((lo === null || lo === undefined) && (hi === null || hi === undefined)) return "–";
  return `[${fmt(lo)}, ${hi === null || hi === undefined ? "not reached" : fmt(hi)}]`;
}

/** Seconds as "1 h 05 min", "4 min 10 s" or "12 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

/** Create an element with attributes and children (strings become text, never HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Beyond this many times the most tokens a fit observed, a token answer is an extrapolation
 * (the API's `app.law.ranges.FAR_BEYOND`). */
export const FAR_BEYOND = 10;

/**
 * How a token answer reads given `beyond` (the API's `beyond_observed`: tokens over the most
 * tokens the fit observed). Within FAR_BEYOND, or with no factor, the count itself; beyond it,
 * "≈ 7.8T tokens — extrapolated 950× beyond the 8,192 tokens observed", never a bare number;
 * `short` is the same for a chart label.
 */
export function tokensAnswer(tokens, beyond) {
  const far = Number.isFinite(tokens) && Number.isFinite(beyond) && beyond > FAR_BEYOND;
  if (!far) return { extrapolated: false, text: count(tokens), short: `${count(tokens)} tokens` };
  const observed = Math.round(tokens / beyond).toLocaleString("en-US");
  const factor = Number(beyond.toPrecision(2)).toLocaleString("en-US");
  return {
    extrapolated: true,
    text: `≈ ${count(tokens)} tokens — extrapolated ${factor}× beyond the ${observed} tokens observed`,
    short: `≈ ${count(tokens)} tokens (${factor}× the data)`,
  };
}
