"""Analysis of the wide pass (studies/p2_wide.py): every form per family, method and protocol.

For each family (`wide-llama`, `wide-qwen2`, `smollm2-135m`) and method, on the observations the
pipeline did not flag below L0:

- every form registered in `app.law.FORMS` (iterated at run time, so a form added to the engine
  is analysed without a change here), fitted on all runs (`all`, in-sample metrics) and on the
  train side of each hold-out protocol (`D`, `N0`, `rho`; `N0` only where the family has two
  sizes or more), with MAPE, RMSE, ASD and R² on the held-out side;
- `auto`: the form `app.law.select.select_form` chooses on the *train side* of the protocol (by
  the same protocol inside it where the train side allows, else by grouped folds over its whole
  runs; for `all`: grouped folds over runs), then that form's held-out metrics;
- interval coverage at 80% for every fit, by every method in `COVERAGE_METHODS`: `bootstrap`
  (refits by run, `app.law.refit_runs` + `predict_interval`) and `calibrated` (the engine's
  calibrated prediction intervals, `app.law.intervals`). A new kind of interval plugs in there.

Outputs in the results folder: observations.csv (uploadable to POST /observations), controls.csv,
fits.json, summary.md and one PNG per family and method of the extrapolation (N0 for the small
families, D for SmolLM2) with each form's 80% bootstrap band.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.core import atomic
from app.law import (
    FORMS,
    Dataset,
    FitResult,
    FittedLaw,
    LawError,
    fit,
    get_form,
    predict_interval,
    refit_runs,
    split,
)
from app.law.types import Features
from studies import p2_small_models as base
from studies.p2_small_models import StudyConfig, log

LEVEL = 0.8
PROTOCOLS: tuple[str, ...] = ("all", "D", "N0", "rho")
AUTO = "auto"
#: Forms drawn in the extrapolation plots (the others are in fits.json and summary.md).
PLOT_FORMS: tuple[str, ...] = ("p2", "frantar", "p2-tpp")

# --------------------------------------------------------------------------- interval coverage

CoverageFn = Callable[[str, FitResult, Dataset, Dataset, Sequence[Mapping[str, float]]], float]


def bootstrap_coverage(
    form: str,
    result: FitResult,
    train: Dataset,
    test: Dataset,
    refits: Sequence[Mapping[str, float]],
) -> float:
    """Share of `test` inside the 80% percentile interval of the bootstrap refits."""
    if not refits:
        raise LawError("no bootstrap refits")
    lo, hi = predict_interval(form, refits, test.x, LEVEL)
    return float(np.mean((test.loss >= lo) & (test.loss <= hi)))


def calibrated_coverage(
    form: str,
    result: FitResult,
    train: Dataset,
    test: Dataset,
    refits: Sequence[Mapping[str, float]],
) -> float:
    """Share of `test` inside the engine's calibrated 80% prediction interval (calibrated on
    `train` only: residual pools of held-out runs, docs/law.md §4)."""
    try:
        from app.law import intervals
    except ImportError as exc:  # an engine without calibrated intervals
        raise LawError(f"calibrated intervals not available: {exc}") from None
    cal = intervals.calibrate(form, train, result)
    law = FittedLaw(get_form(form), result.params, tuple(refits), cal)
    band = intervals.interval(law, test.x, level=LEVEL)
    return float(np.mean((test.loss >= band.lower) & (test.loss <= band.upper)))


#: Per-protocol coverage of one fit given its train and test sides: add a method here.
COVERAGE_METHODS: dict[str, CoverageFn] = {
    "bootstrap": bootstrap_coverage,
    "calibrated": calibrated_coverage,
}


def interval_coverage(
    form: str,
    result: FitResult,
    train: Dataset,
    test: Dataset,
    *,
    n_bootstrap: int,
    seed: int = 0,
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Coverage of `test` by every method of COVERAGE_METHODS (or `methods`; a method that fails
    records why), with the bootstrap refits' 10/50/90th percentiles of each constant."""
    out: dict[str, Any] = {"level": LEVEL, "n_bootstrap": n_bootstrap}
    refits: list[dict[str, float]] = []
    if n_bootstrap > 0:
        try:
            refits = refit_runs(form, train, result, n_bootstrap, seed=seed)
        except LawError as exc:
            out["bootstrap_error"] = str(exc)
    if refits and form != "curve":
        keys = list(result.params)
        out["param_percentiles_10_50_90"] = {
            k: [float(v) for v in np.percentile([r[k] for r in refits], [10, 50, 90])] for k in keys
        }
    for name, method in COVERAGE_METHODS.items():
        if methods is not None and name not in methods:
            continue
        try:
            out[name] = method(form, result, train, test, refits)
        except (LawError, ValueError, KeyError) as exc:
            out[name] = None
            out[f"{name}_error"] = str(exc)[:300]
    return out


# --------------------------------------------------------------------------- fits


def _sides(data: Dataset, proto: str) -> tuple[Dataset, Dataset]:
    if proto == "all":
        return data, data
    mask_train, mask_test = split(data, proto)  # type: ignore[arg-type]
    return data.take(mask_train), data.take(mask_test)


def _fit_entry(
    form: str,
    data: Dataset,
    proto: str,
    *,
    n_bootstrap: int,
    seed: int,
    coverage: Sequence[str] | None = None,
) -> tuple[dict[str, Any], FitResult | None]:
    started = time.monotonic()
    try:
        res = fit(form, data, holdout=None if proto == "all" else proto)  # type: ignore[arg-type]
        train, test = _sides(data, proto)
    except LawError as exc:
        return {"error": str(exc)[:300]}, None
    summary = base.fit_summary(res, time.monotonic() - started)
    summary["n_test"] = len(test) if proto != "all" else 0
    summary["test_metrics"] = (summary["holdout_metrics"] or summary["metrics"]) | {}
    summary["coverage"] = interval_coverage(
        form, res, train, test, n_bootstrap=n_bootstrap, seed=seed, methods=coverage
    )
    return summary, res


def _auto_entry(data: Dataset, proto: str, forms: Sequence[str] | None = None) -> dict[str, Any]:
    """The form chosen on the train side of `proto` (see the module docstring).

    The choice never sees the held-out side: it uses the same protocol inside the train side
    where that is possible (D always; N0 and rho only with enough sizes or rho levels left), and
    grouped folds over the train side's whole runs otherwise (`select_by` says which).
    """
    try:
        from app.law.select import select_form
    except ImportError as exc:
        return {"error": f"form selection not available: {exc}"}
    try:
        train, _test = _sides(data, proto)
    except LawError as exc:
        return {"error": str(exc)[:300]}
    selection = None
    errors = []
    for select_by in dict.fromkeys(("runs" if proto == "all" else proto, "runs")):
        try:
            selection = select_form(train, select_by, forms=forms)
            break
        except LawError as exc:
            errors.append(f"{select_by}: {exc}"[:300])
    if selection is None:
        return {"error": "; ".join(errors)}
    chosen = selection.chosen
    entry: dict[str, Any] = {"chosen": chosen, "select_by": selection.select_by}
    if errors:
        entry["fallback_from"] = errors
    table = getattr(selection, "table", ())
    entry["table"] = [
        {
            k: getattr(row, k)
            for k in ("form", "mape", "rmse", "error")
            if hasattr(row, k) and isinstance(getattr(row, k), (str, float, int, type(None)))
        }
        for row in table
    ]
    return entry


def fit_family_method(
    rows: Sequence[dict[str, Any]],
    cfg: StudyConfig,
    *,
    forms: Sequence[str] | None = None,
    coverage: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every form (and `auto`) on every protocol the data allow, for one family and method."""
    kept = [r for r in rows if not r["_below_l0"]]
    report: dict[str, Any] = {
        "n_runs": len({r["run_id"] for r in rows}),
        "n_points": len(rows),
        "n_below_l0_flagged": len(rows) - len(kept),
        "n_below_l0_raw": sum(r["loss"] < r["l0"] for r in rows),
        "sizes": sorted({r["n0"] for r in rows}),
        "fits": {},
    }
    if not kept:
        return report
    data = Dataset.from_rows(kept)
    report["rho_split"] = base.rho_split_report(data)
    protocols = [p for p in PROTOCOLS if p != "N0" or len(report["sizes"]) >= 2]
    report["protocols"] = protocols
    names = list(FORMS) if forms is None else list(forms)
    for proto in protocols:
        by_form: dict[str, Any] = {}
        for form in names:
            entry, _ = _fit_entry(
                form, data, proto, n_bootstrap=cfg.bootstrap, seed=cfg.seed, coverage=coverage
            )
            by_form[form] = entry
            tm = entry.get("test_metrics")
            if tm:
                cov = entry["coverage"]
                log(
                    f"  {form:11s} {proto:4s}: MAPE {tm['mape']:.3f}% ASD {tm['asd']:.4g} "
                    f"cov boot {_fmt(cov.get('bootstrap'), '.2f')} "
                    f"cal {_fmt(cov.get('calibrated'), '.2f')}"
                )
        auto = _auto_entry(data, proto, forms)
        if "chosen" in auto and auto["chosen"] in by_form:
            auto["fit"] = {
                k: v
                for k, v in by_form[auto["chosen"]].items()
                if k in ("test_metrics", "coverage")
            }
        by_form[AUTO] = auto
        report["fits"][proto] = by_form
    return report


# --------------------------------------------------------------------------- plots


def plot_extrapolation(
    rows: Sequence[dict[str, Any]],
    proto: str,
    *,
    title: str,
    n_bootstrap: int,
    seed: int = 0,
    forms: Sequence[str] = PLOT_FORMS,
) -> bytes | None:
    """Observed curves (train side grey, held-out side coloured) and, per form, the prediction
    of each held-out run with its 80% bootstrap band; PNG bytes, None if nothing could be fit."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    kept = [r for r in rows if not r["_below_l0"]]
    if not kept:
        return None
    data = Dataset.from_rows(kept)
    try:
        train, test = _sides(data, proto)
    except LawError:
        return None
    usable = [f for f in forms if f in FORMS]
    fig, axes = plt.subplots(
        1, len(usable), figsize=(5.2 * len(usable), 4.2), squeeze=False, sharey=True
    )
    cmap = plt.get_cmap("viridis")
    drew = False
    for ax, form in zip(axes[0], usable, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("post-training tokens D")
        for r in np.unique(train.run):
            idx = np.flatnonzero(train.run == r)
            gap = train.loss[idx] - train.x.l0[idx]
            ok = gap > 0
            ax.plot(train.x.tokens[idx][ok], gap[ok], ".", color="0.75", ms=3)
        try:
            res = fit(form, train)
            refits = refit_runs(form, train, res, n_bootstrap, seed=seed) if n_bootstrap else []
        except LawError as exc:
            ax.set_title(f"{form}: {str(exc)[:60]}", fontsize=8)
            continue
        test_runs = np.unique(test.run)
        for i, r in enumerate(test_runs):
            idx = np.flatnonzero(test.run == r)
            color = cmap(i / max(1, len(test_runs) - 1))
            l0 = float(test.x.l0[idx[0]])
            gap = test.loss[idx] - l0
            ok = gap > 0
            ax.plot(test.x.tokens[idx][ok], gap[ok], "o", color=color, ms=3)
            # The whole run (the D protocol holds out only its last checkpoints).
            tmin = float(np.min(data.x.tokens[data.run == r]))
            tmax = float(np.max(test.x.tokens[idx]))
            grid = np.geomspace(tmin, tmax, 60)
            first = idx[0]
            x = Features(
                np.full_like(grid, test.x.n0[first]),
                np.full_like(grid, test.x.rho[first]),
                np.full_like(grid, test.x.l0[first]),
                grid,
            )
            with np.errstate(all="ignore"):
                centre = get_form(form).predict(res.params, x)
            ax.plot(grid, centre - l0, "-", color=color, lw=1)
            if refits:
                try:
                    lo, hi = predict_interval(form, refits, x, LEVEL)
                    ax.fill_between(grid, lo - l0, hi - l0, color=color, alpha=0.2, lw=0)
                except LawError:
                    pass
            drew = True
        metrics = fit(form, data, holdout=proto).holdout_metrics  # type: ignore[arg-type]
        mape = f"held-out MAPE {metrics.mape:.2f}%" if metrics is not None else ""
        ax.set_title(f"{form}: fit {proto}-train, {mape}", fontsize=9)
    axes[0][0].set_ylabel("L − L0 (nats; grey: fitted runs, colour: held out)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue() if drew else None


# --------------------------------------------------------------------------- outputs


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def write_controls(
    families: Mapping[str, tuple[StudyConfig, dict[str, Any], list[Any]]], path: Path
) -> list[dict[str, Any]]:
    """controls.csv (one row per checkpoint of every dense control); the control records."""
    controls = []
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run_id", "family", "n0", "l0", "tokens", "loss", "protocol"])
        for cfg, _dense, results in families.values():
            for c in sorted(
                (r for r in results if "control" in r["run_id"]), key=lambda r: r["n0"]
            ):
                controls.append(dict(c, family=c.get("family", cfg.family)))
                for p in c["points"]:
                    writer.writerow(
                        [
                            c["run_id"],
                            c.get("family", cfg.family),
                            c["n0"],
                            f"{c['l0']:.6f}",
                            p["tokens"],
                            f"{p['loss']:.6f}",
                            c["protocol"],
                        ]
                    )
    return controls


def _run_table(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    pruned = [r for r in results if "control" not in r["run_id"]]
    return base.runs_table(
        pruned,
        lambda r: {"eval_noise": r["measured"]["eval_noise"], "n_points": len(r["points"])},
    )


def analyse_all(
    families: Mapping[str, tuple[StudyConfig, dict[str, Any], list[Any]]],
    out: Path,
    *,
    timings: dict[str, float] | None = None,
    options: Options | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Write every output of the wide pass to `out` from the families' cached results
    (key -> (config, dense models, run results)); returns the fits.json report. Each family
    and method is fitted in one of `workers` processes."""
    opts = options or Options()
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for _cfg, _dense, results in families.values():
        rows += base.observation_rows(results)
    base.write_observations_csv(rows, out / "observations.csv")
    controls = write_controls(families, out / "controls.csv")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads_per_worker": 1,
        },
        "versions": base.versions(),
        "forms": list(FORMS) if opts.forms is None else list(opts.forms),
        "coverage_methods": list(opts.coverage or COVERAGE_METHODS),
        "level": LEVEL,
        "families": {},
    }
    jobs: list[Job] = []
    for key, (cfg, dense, results) in families.items():
        fam_rows = [r for r in rows if r["family"] == cfg.family]
        fam: dict[str, Any] = {
            "key": key,
            "config": base.config_summary(cfg),
            "dense": base.dense_summary(dense, extra=("source",)),
            "controls": {
                c["size"]: base.control_summary(c) for c in controls if c["family"] == cfg.family
            },
            "runs": _run_table(results),
            "methods": {},
        }
        for method in cfg.methods:
            jobs.append((cfg.family, method, [r for r in fam_rows if r["method"] == method], cfg))
        report["families"][cfg.family] = fam
    for family, method, analysed, png in _run_jobs(jobs, workers, opts):
        report["families"][family]["methods"][method] = analysed
        if png is not None:
            proto = "N0" if "N0" in analysed.get("protocols", []) else "D"
            name = f"extrapolation_{proto}_{family}_{base.method_slug(method)}.png"
            (out / name).write_bytes(png)
    report["timings"] = dict(timings or {}, analyse_wall_s=round(time.monotonic() - started, 1))
    (out / "fits.json").write_text(json.dumps(report, indent=1, default=str))
    write_summary(report, out / "summary.md")
    log(f"analysis written to {out} ({time.monotonic() - started:.0f} s)")
    return report


@dataclass(frozen=True)
class Options:
    """What the analysis computes: forms (None: the registry), coverage methods (None: all of
    COVERAGE_METHODS), plots; and where finished (family, method) results are cached."""

    forms: tuple[str, ...] | None = None
    coverage: tuple[str, ...] | None = None
    plots: bool = True
    cache: Path | None = None


Job = tuple[str, str, list[dict[str, Any]], StudyConfig]


def _cache_path(job: Job, opts: Options) -> Path | None:
    """One file per (family, method, inputs): the rows, the settings and the engine's forms."""
    if opts.cache is None:
        return None
    family, method, rows, cfg = job
    key = json.dumps(
        {
            "rows": rows,
            "bootstrap": cfg.bootstrap,
            "seed": cfg.seed,
            "forms": list(opts.forms) if opts.forms is not None else list(FORMS),
            "coverage": list(opts.coverage or COVERAGE_METHODS),
            "plots": opts.plots,
            "level": LEVEL,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return opts.cache / f"{family}_{base.method_slug(method)}_{digest}.json"


def analyse_one(job: Job, opts: Options) -> tuple[str, str, dict[str, Any], bytes | None]:
    """Fits (and the extrapolation plot) of one family and method; from the cache if there."""
    family, method, rows, cfg = job
    cached = _cache_path(job, opts)
    if cached is not None and cached.is_file():
        raw = json.loads(cached.read_text())
        log(f"{family} {method}: cached analysis {cached.name}")
        png_cached = base64.b64decode(raw["png"]) if raw.get("png") else None
        return family, method, raw["analysed"], png_cached
    log(f"fitting {family} {method}: {len(rows)} points")
    analysed = fit_family_method(rows, cfg, forms=opts.forms, coverage=opts.coverage)
    png = None
    if opts.plots and rows:
        proto = "N0" if "N0" in analysed.get("protocols", []) else "D"
        png = plot_extrapolation(
            rows,
            proto,
            title=f"{family}, {method}: extrapolation in {proto} (80% bootstrap bands)",
            n_bootstrap=cfg.bootstrap,
            seed=cfg.seed,
        )
    if cached is not None:
        blob = {"analysed": analysed, "png": base64.b64encode(png).decode() if png else None}
        atomic.write_json(cached, blob, indent=None)
    return family, method, analysed, png


def _run_jobs(
    jobs: Sequence[Job], workers: int, opts: Options
) -> list[tuple[str, str, dict[str, Any], bytes | None]]:
    if workers <= 1 or len(jobs) <= 1:
        return [analyse_one(job, opts) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # Largest first: the pool's tail is the smallest job.
    ordered = sorted(jobs, key=lambda j: -len(j[2]))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_analysis
    ) as pool:
        futures = [pool.submit(analyse_one, job, opts) for job in ordered]
        return [fut.result() for fut in futures]


def _init_analysis() -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def write_summary(report: dict[str, Any], path: Path) -> None:
    """Markdown tables of fits.json for docs/study.md."""
    lines = ["# Wide pass: results", ""]
    for family, fam in report["families"].items():
        lines += [f"## {family}", "", "### Dense models", ""]
        lines += ["| size | N0 | pretraining tokens | L0 ± s.e. | s |", "|---|---|---|---|---|"]
        for size, d in fam["dense"].items():
            lines.append(
                f"| {size} | {_fmt(d.get('n_params'), ',')} | {_fmt(d.get('tokens'), ',')} | "
                f"{_fmt(d.get('eval_loss'), '.4f')} ± {_fmt(d.get('eval_stderr'), '.4f')} | "
                f"{_fmt(d.get('seconds'), '.0f')} |"
            )
        lines += ["", "### Dense controls", ""]
        lines += [
            "| size | L0 | eval noise | min L − L0 | final L − L0 | below L0 − 2·noise |",
            "|---|---|---|---|---|---|",
        ]
        for size, c in fam["controls"].items():
            lines.append(
                f"| {size} | {c['l0']:.4f} | {c['eval_noise']:.4f} | {c['min_minus_l0']:+.4f} | "
                f"{c['final_loss'] - c['l0']:+.4f} | {c['below_l0_beyond_noise']} |"
            )
        lines += ["", "### Runs", ""]
        lines += [
            "| method | size | target ρ | measured ρ | L0 | L after pruning | final L | D | pts |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fam["runs"]:
            if "measured" not in r and r.get("status") == "skipped":
                lines.append(
                    f"| {r['method']} | {r['size']} | {r['target_rho']} | skipped: "
                    f"{str(r.get('reason'))[:80]} ||||||"
                )
                continue
            lines.append(
                f"| {r['method']} | {r['size']} | {r['target_rho']} | {_fmt(r.get('rho'), '.4f')} "
                f"| {_fmt(r.get('l0'), '.4f')} | {_fmt(r.get('loss_after_prune'), '.4f')} | "
                f"{_fmt(r.get('final_loss'), '.4f')} | {_fmt(r.get('tokens'), ',')} | "
                f"{r.get('n_points', '—')} |"
            )
        lines += [
            "",
            "### Fits",
            "",
            "Held-out side for D, N0 and ρ; fitted points for `all`. MAPE in %, ASD in nats per "
            "billion tokens; coverage: share of the evaluated points inside the 80% interval "
            "(bootstrap by run; calibrated prediction interval). `auto`: the form chosen on the "
            "train side.",
            "",
            "| method | protocol | form | fit pts | test pts | MAPE % | RMSE | ASD | R² | "
            "boot cov | cal cov |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, m in fam["methods"].items():
            for proto, by_form in m.get("fits", {}).items():
                for form, f in by_form.items():
                    if form == AUTO:
                        fitted = f.get("fit") or {}
                        tm = fitted.get("test_metrics")
                        cov = fitted.get("coverage") or {}
                        label = (
                            f"auto → {f['chosen']} (by {f.get('select_by')})"
                            if "chosen" in f
                            else "auto"
                        )
                    else:
                        tm = f.get("test_metrics")
                        cov = f.get("coverage") or {}
                        label = form
                    if not tm:
                        err = str(f.get("error", "no fit"))[:90]
                        lines.append(f"| {method} | {proto} | {label} | {err} ||||||||")
                        continue
                    nfit = f.get("n_observations") or by_form.get(f.get("chosen", ""), {}).get(
                        "n_observations"
                    )
                    ntest = f.get("n_test") if form != AUTO else "—"
                    lines.append(
                        f"| {method} | {proto} | {label} | {_fmt(nfit, 'd')} | "
                        f"{ntest if proto != 'all' else '—'} | {tm['mape']:.3f} | "
                        f"{tm['rmse']:.4f} | {tm['asd']:.3g} | {tm['r2']:.3f} | "
                        f"{_fmt(cov.get('bootstrap'), '.2f')} | "
                        f"{_fmt(cov.get('calibrated'), '.2f')} |"
                    )
            lines.append(
                f"| {method} | below L0 (flagged / raw): {m['n_below_l0_flagged']} / "
                f"{m['n_below_l0_raw']} of {m['n_points']} | ρ split worked: "
                f"{m.get('rho_split', {}).get('worked')} |||||||||"
            )
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
