// The fits view: stored fits grouped by family, method and recipe, so that forms fitted to the
// same data can be compared on their metrics, held-out error and interval coverage per protocol.

import { api, showError } from "./api.js";
import { count, h, num } from "./format.js";

const $ = (id) => document.getElementById(id);
const PROTOCOLS = ["D", "N0", "rho"];

function coverageCell(fit, protocol, best) {
  const c = fit.coverage.find((entry) => entry.protocol === protocol);
  if (!c) return h("td", { class: "na" }, "–");
  const isBest = best.get(protocol) === fit.id;
  return h("td", { class: isBest ? "best" : null, "data-protocol": protocol },
    `${num(c.prediction, 2)} / ${num(c.confidence, 2)} @ ${num(c.level, 2)}`,
    h("br"),
    `MAPE ${num(c.mape, 3)}% · ${c.points} pts`,
    isBest ? h("span", { class: "badge" }, "best") : null);
}

function groupBest(fits) {
  // Per group and protocol: the fit with the lowest held-out MAPE.
  const best = new Map();
  for (const protocol of PROTOCOLS) {
    let chosen = null;
    for (const fit of fits) {
      const c = fit.coverage.find((entry) => entry.protocol === protocol);
      if (c && c.mape !== null && (chosen === null || c.mape < chosen.mape)) chosen = { id: fit.id, mape: c.mape };
    }
    if (chosen && fits.length > 1) best.set(protocol, chosen.id);
  }
  return best;
}

/** The forms an `auto` fit compared: held-out MAPE per fold, their means, and why not. */
function selectionTable(selection) {
  const folds = selection.folds.map((f) => f.name);
  return h("table", { class: "data compact selection" },
    h("caption", {}, `Forms compared by held-out error (select_by ${selection.select_by}; chosen: ${selection.chosen})`),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Form"),
      h("th", { scope: "col" }, "Mean MAPE %"),
      h("th", { scope: "col" }, "Mean RMSE"),
      folds.map((name) => h("th", { scope: "col" }, `${name} MAPE %`)),
      h("th", { scope: "col" }, "Reason"))),
    h("tbody", {}, selection.table.map((row) =>
      h("tr", { class: row.form === selection.chosen ? "best" : null },
        h("th", { scope: "row" }, row.form, row.form === selection.chosen ? h("span", { class: "badge" }, "chosen") : null),
        h("td", {}, num(row.mean_mape, 3)),
        h("td", {}, num(row.mean_rmse, 3)),
        folds.map((_, i) => h("td", {}, num((row.mape || [])[i], 3))),
        h("td", {}, row.reason || "")))));
}

async function details(id) {
  const box = $("fit-details");
  try {
    const fit = await api(`fits/${encodeURIComponent(id)}`);
    const parts = [
      h("h3", {}, `Fit ${fit.id.slice(0, 8)}: ${fit.form} on ${fit.family || "any family"} · ${fit.method || "any method"}`),
      h("p", { class: "hint" }, `${fit.n_observations} points, ${fit.n_runs} runs, protocol ${fit.protocol || "–"}, ${fit.bootstrap} bootstrap refits, ${fit.converged ? "converged" : "not converged"}: ${fit.message}`),
      h("table", { class: "data compact" },
        h("caption", {}, "Parameters (billions convention)"),
        h("tbody", {}, Object.entries(fit.params).map(([name, value]) => h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, num(value, 5)))))),
      h("table", { class: "data compact" },
        h("caption", {}, "Coverage of the intervals per protocol"),
        h("thead", {}, h("tr", {}, ["Protocol", "Level", "Prediction", "Confidence", "Held-out MAPE %", "Points", "Runs"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, fit.coverage.map((c) => h("tr", {}, h("th", { scope: "row" }, c.protocol), h("td", {}, num(c.level, 2)), h("td", {}, num(c.prediction, 3)), h("td", {}, num(c.confidence, 3)), h("td", {}, num(c.mape, 3)), h("td", {}, c.points), h("td", {}, c.runs))))),
      fit.selection ? selectionTable(fit.selection) : null,
      fit.interval_notes.length ? h("ul", { class: "warnings" }, fit.interval_notes.map((n) => h("li", {}, n))) : null,
      h("img", { src: `fits/${encodeURIComponent(fit.id)}/plot.png`, alt: `Observed points and fitted curves of fit ${fit.id.slice(0, 8)}`, class: "fit-plot" }),
    ];
    box.replaceChildren(...parts.filter(Boolean));
    box.hidden = false;
    showError($("fits-error"), null);
  } catch (error) {
    showError($("fits-error"), error);
  }
}

/** Read the fits (newest 200) and redraw the table. */
export async function refreshFits() {
  const box = $("fits-error");
  try {
    const page = await api("fits?limit=200");
    const groups = new Map();
    for (const fit of page.items) {
      const recipe = fit.recipe && fit.recipe !== "full" ? ` · ${fit.recipe}` : "";
      const key = `${fit.family || "*"} · ${fit.method || "*"}${recipe}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(fit);
    }
    const rows = [];
    for (const [key, fits] of [...groups.entries()].sort(([a], [b]) => a.localeCompare(b))) {
      const best = groupBest(fits);
      fits.sort((a, b) => Number(b.is_default) - Number(a.is_default) || a.form.localeCompare(b.form));
      for (const fit of fits) {
        const holdout = fit.holdout_metrics ? `${num(fit.holdout_metrics.mape, 3)} (${fit.holdout_protocol})` : "–";
        rows.push(h("tr", { "data-fit-id": fit.id },
          h("td", { title: fit.id }, h("code", {}, fit.id.slice(0, 8)), fit.is_default ? h("span", { class: "badge" }, "default") : null),
          h("td", {}, key),
          h("td", {}, fit.form, fit.selection ? ` (auto by ${fit.selection.select_by})` : ""),
          h("td", {}, `${count(fit.n_observations)} · ${fit.n_runs}`),
          h("td", {}, num(fit.metrics.r2, 4)),
          h("td", {}, num(fit.metrics.mape, 3)),
          h("td", {}, holdout),
          ...PROTOCOLS.map((p) => coverageCell(fit, p, best)),
          h("td", {}, h("button", { type: "button", "aria-label": `Details of fit ${fit.id.slice(0, 8)}`, onclick: () => details(fit.id) }, "Details"))));
      }
    }
    $("fits-table").tBodies[0].replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 11 }, "No fits yet."))]));
    showError(box, null);
  } catch (error) {
    showError(box, error);
  }
}
