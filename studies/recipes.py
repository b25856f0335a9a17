"""The recipes study: one pruned model recovered by full post-training, LoRA and distillation.

    .venv/bin/python -m studies.recipes --out studies/results/recipes            # collect + analyse
    .venv/bin/python -m studies.recipes --out studies/results/recipes --analyse-only
    .venv/bin/python -m studies.recipes --out /tmp/recipes-quick --quick          # smoke (minutes)

Every run is a job through the job's own pipeline (`studies/p2_small_models.py`'s `run_pruned`
and `run_control`, which build the `JobRequest` a user would submit, with its `recipe`), so what
is measured here is what `POST /jobs/prune-finetune` does:

- `recipe-llama` and `recipe-qwen2`: the wide pass's two smallest shapes (XS ~25k and S ~51k
  parameters, vocabulary 512; `studies/p2_wide.py`), pretrained here at 20 tokens per parameter;
  depth and 2:4 at rho 0.25 and width at rho 0.15, 0.25 and 0.35, each recovered by the three
  recipes for 1 x N0 tokens (12 log-spaced checkpoints), and a dense control per recipe;
- `smollm2-135m`: the real pretrained SmolLM2-135M, depth, width and 2:4 at rho 0.25 recovered
  by LoRA and by distillation for 8,192 tokens (7 checkpoints), the wide pass's SmolLM2 setup,
  so its full post-training runs (`studies/results/wide/smollm2`, the same run ids, protocol and
  learning rate) are the third recipe.

Each recipe runs at the learning rate its users give it: full and distillation at the pass's
post-training LR (5% of the pretraining peak), LoRA at 10x that (adapters start at zero and
train few parameters; LoRA recipes commonly use ~10x the full fine-tuning LR). LoRA's rank is 4
on the small models (hidden size 16-32) and 16 on SmolLM2, alpha 2 x rank, on every attention
and MLP projection. Distillation: temperature 1, alpha 1 (the KL term alone, as Minitron).

Work runs in `--workers` one-thread processes (pretraining first, then each model's runs as
soon as it exists); everything is cached under `--var` as in the other passes: a rerun skips
finished models and runs and resumes an interrupted run from its last checkpoint.

The analysis writes to `--out`: observations.csv (this pass's runs in POST /observations' columns,
with `recipe`),
fits.json (P² fitted per family, recipe and method on every protocol the data allow, with
held-out MAPE and the 80% calibrated interval's coverage), comparison.json (per pruned model:
the tokens and training FLOPs each recipe needed to reach the loss all three reached) and
summary.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from studies import p2_small_models as base
from studies import p2_wide as wide
from studies.p2_small_models import StudyConfig, log

ROOT = Path(__file__).resolve().parents[1]

RECIPES = ("full", "lora", "distill")
#: The LR of each recipe as a multiple of the pass's post-training LR (the module docstring).
LR_FACTOR = {"full": 1.0, "lora": 10.0, "distill": 1.0}
DISTILL: dict[str, Any] = {"kind": "distill", "temperature": 1.0, "alpha": 1.0}
#: (method, rho) of each pruned model of a small family: every method at 0.25, width at three rho.
SMALL_RUNS: tuple[tuple[str, float], ...] = (
    ("depth", 0.25),
    ("2:4", 0.25),
    ("width", 0.15),
    ("width", 0.25),
    ("width", 0.35),
)
SMOLLM2_RUNS: tuple[tuple[str, float], ...] = (("depth", 0.25), ("width", 0.25), ("2:4", 0.25))
#: SmolLM2's full post-training runs: the wide pass's (same run ids, protocol and LR).
SMOLLM2_FULL = ROOT / "studies/results/wide/smollm2/observations.csv"

_SMALL = StudyConfig(
    sizes={size: wide.WIDE_SIZES[size] for size in ("XS", "S")},
    vocab=512,
    pretrain_tpp=20.0,
    post_tpp=1.0,
)
_QUICK_SMALL = replace(wide.QUICK["llama"], sizes=dict(wide.QUICK["llama"].sizes))


@dataclass(frozen=True)
class Family:
    """One family of the pass: its base config (full recipe), its runs and LoRA's rank."""

    key: str
    cfg: StudyConfig
    runs: tuple[tuple[str, float], ...]
    lora_rank: int
    recipes: tuple[str, ...] = RECIPES
    controls: bool = True

    def config(self, recipe: str) -> StudyConfig:
        """The config of one recipe: its `JobRequest.recipe` and its learning rate."""
        spec: dict[str, Any] | None = None
        if recipe == "lora":
            spec = {"kind": "lora", "rank": self.lora_rank}
        elif recipe == "distill":
            spec = dict(DISTILL)
        return replace(
            self.cfg, recipe=spec, post_lr_frac=self.cfg.post_lr_frac * LR_FACTOR[recipe]
        )


def families(quick: bool) -> dict[str, Family]:
    """The pass's families (`quick`: tiny shapes and short runs, for a smoke test)."""
    small = _QUICK_SMALL if quick else _SMALL
    smol = wide.QUICK["smollm2"] if quick else wide.FULL["smollm2"]
    return {
        "llama": Family(
            "llama", replace(small, arch="llama", family="recipe-llama"), SMALL_RUNS, 4
        ),
        "qwen2": Family(
            "qwen2", replace(small, arch="qwen2", family="recipe-qwen2"), SMALL_RUNS, 4
        ),
        "smollm2": Family(
            "smollm2", smol, SMOLLM2_RUNS, 16, recipes=("lora", "distill"), controls=False
        ),
    }


# --------------------------------------------------------------------------- collection


@dataclass
class Task:
    label: str
    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    family: str = ""
    pretrain: bool = False


def _runs_of(fam: Family, size: str, n0: int, corpus: Path, var: Path) -> list[Task]:
    """Every run of one dense model: per recipe, its control and its pruned models."""
    tasks = []
    for recipe in fam.recipes:
        cfg = fam.config(recipe)
        common: dict[str, Any] = {"n0": n0, "cfg": cfg, "corpus": corpus, "var": var}
        if fam.controls:
            label = f"{cfg.family} control {size}{cfg.recipe_suffix}"
            tasks.append(Task(label, base.run_control, (size,), common, fam.key))
        for method, rho in fam.runs:
            label = base.run_id(size, method, rho, cfg.family, cfg.recipe_suffix)
            tasks.append(Task(label, base.run_pruned, (size, method, rho), common, fam.key))
    return tasks


def collect(fams: dict[str, Family], var_root: Path, workers: int) -> None:
    """Pretrain the small models (largest first), then every run; SmolLM2's runs from the start.
    A failed task is logged and the others go on."""
    first = next(iter(fams.values())).cfg
    corpus = base.prepare_corpus(first, var_root)
    queue: list[Task] = []
    for key, fam in fams.items():
        var = var_root / key
        var.mkdir(parents=True, exist_ok=True)
        if key == "smollm2":
            n0 = int(wide.install_smollm2(var)["parameters"])
            queue += _runs_of(fam, wide.SMOLLM2_SIZE, n0, corpus, var)
            continue
        for size in reversed(list(fam.cfg.sizes)):
            args = (size, fam.cfg, corpus, var)
            label = f"{fam.cfg.family} pretrain {size}"
            queue.insert(0, Task(label, base.pretrain, args, {}, key, pretrain=True))
    done, total = 0, len(queue)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=base.init_worker
    ) as pool:
        running: dict[Future[Any], Task] = {}

        def submit() -> None:
            while queue and len(running) < workers:
                task = queue.pop(0)
                running[pool.submit(task.fn, *task.args, **task.kwargs)] = task
                log(f"started {task.label}")

        submit()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                task = running.pop(fut)
                done += 1
                try:
                    value = fut.result()
                except Exception as exc:  # one failure must not stop the other runs
                    log(f"FAILED {task.label}: {type(exc).__name__}: {exc}")
                    continue
                if task.pretrain:
                    size, _cfg, _corpus, var = task.args
                    runs = _runs_of(fams[task.family], size, int(value["n_params"]), corpus, var)
                    queue[0:0] = runs  # this model's runs next
                    total += len(runs)
                log(f"progress: {done}/{total} tasks done ({task.label})")
            submit()


# --------------------------------------------------------------------------- analysis


def load_results(fams: dict[str, Family], var_root: Path) -> list[dict[str, Any]]:
    """Every cached run result of the pass."""
    results = []
    for key in fams:
        results += [
            json.loads(p.read_text()) for p in sorted((var_root / key / "runs").glob("*.json"))
        ]
    return results


def smollm2_full_rows(path: Path = SMOLLM2_FULL) -> list[dict[str, Any]]:
    """SmolLM2's full post-training observations of the pruned models this pass recovers."""
    import csv

    if not path.is_file():
        return []
    wanted = {base.run_id(wide.SMOLLM2_SIZE, m, r, wide.SMOLLM2) for m, r in SMOLLM2_RUNS}
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["run_id"] not in wanted:
                continue
            rows.append(
                {
                    **row,
                    "n0": int(float(row["n0"])),
                    "rho": float(row["rho"]),
                    "l0": float(row["l0"]),
                    "tokens": int(float(row["tokens"])),
                    "loss": float(row["loss"]),
                    "recipe": "full",
                    "_below_l0": False,
                }
            )
    return rows


def tokens_to_reach(points: Sequence[tuple[float, float]], target: float) -> float | None:
    """The tokens at which a measured curve first reaches `target` (log-linear between the two
    checkpoints around it); None if it never does."""
    previous: tuple[float, float] | None = None
    for tokens, loss in sorted(points):
        if loss <= target:
            if previous is None or previous[1] <= loss or loss == target:
                return tokens
            t0, l0 = previous
            share = (l0 - target) / (l0 - loss)
            return math.exp(math.log(t0) + share * (math.log(tokens) - math.log(t0)))
        previous = (tokens, loss)
    return None


def compare(rows: Sequence[dict[str, Any]], flops: Any) -> list[dict[str, Any]]:
    """Per pruned model (family, n0, method, rho level): each recipe's final loss, and the tokens
    and training FLOPs it needed to reach the highest of the recipes' final losses (the loss every
    recipe reached). `flops(recipe, method, n0, rho) -> FLOPs per token`."""
    curves: dict[tuple[str, int, str, float], dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        key = (r["family"], int(r["n0"]), r["method"], round(float(r["rho"]), 2))
        curves.setdefault(key, {}).setdefault(r["recipe"], []).append(
            (float(r["tokens"]), float(r["loss"]))
        )
    table = []
    for (family, n0, method, rho), by_recipe in sorted(curves.items()):
        if len(by_recipe) < 2:
            continue
        target = max(min(loss for _t, loss in pts) for pts in by_recipe.values())
        entry: dict[str, Any] = {
            "family": family,
            "n0": n0,
            "method": method,
            "rho": rho,
            "target_loss": target,
            "recipes": {},
        }
        for recipe, pts in sorted(by_recipe.items()):
            reach = tokens_to_reach(pts, target)
            per_token = flops(recipe, method, n0, rho)
            last = max(pts)
            entry["recipes"][recipe] = {
                "final_tokens": last[0],
                "final_loss": last[1],
                "tokens_to_target": reach,
                "flops_per_token": per_token,
                "flops_to_target": None if reach is None else reach * per_token,
            }
        reached = {k: v for k, v in entry["recipes"].items() if v["tokens_to_target"] is not None}
        entry["fewest_tokens"] = min(reached, key=lambda k: reached[k]["tokens_to_target"])
        entry["fewest_flops"] = min(reached, key=lambda k: reached[k]["flops_to_target"])
        table.append(entry)
    return table


def per_token_flops(recipe: str, method: str, n0: float, rho: float) -> float:
    """Training FLOPs per token of a recipe, as `POST /plan` counts them
    (`app.services.plan.option_flops`: parameter counts, the attention term left out)."""
    from app.services.plan import option_flops

    return option_flops(method, recipe, n0=n0, rho=rho, tokens=1.0)


def fit_recipes(rows: Sequence[dict[str, Any]], fams: dict[str, Family]) -> dict[str, Any]:
    """P² per family, recipe and method on every protocol the data allow (held-out MAPE and the
    calibrated 80% interval's coverage; `studies.p2_wide_analysis.fit_family_method`)."""
    from studies.p2_wide_analysis import fit_family_method

    by_family = {fam.cfg.family: fam for fam in fams.values()}
    report: dict[str, Any] = {}
    for family in sorted({r["family"] for r in rows}):
        cfg = by_family[family].cfg if family in by_family else fams["smollm2"].cfg
        for recipe in RECIPES:
            for method in sorted({r["method"] for r in rows if r["family"] == family}):
                chosen = [
                    r
                    for r in rows
                    if r["family"] == family and r["recipe"] == recipe and r["method"] == method
                ]
                if not chosen:
                    continue
                log(f"fitting {family} / {recipe} / {method} ({len(chosen)} points)")
                report.setdefault(family, {}).setdefault(recipe, {})[method] = fit_family_method(
                    chosen, cfg, forms=("p2",), coverage=("calibrated",)
                )
    return report


def analyse(fams: dict[str, Family], var_root: Path, out: Path) -> dict[str, Any]:
    """Every output of the pass (the module docstring) from the cached runs."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(fams, var_root)
    own = base.observation_rows(results)
    own.sort(key=lambda r: (r["family"], r["method"], r["recipe"], r["n0"], r["rho"], r["tokens"]))
    # This pass's runs only: SmolLM2's full runs ship from the wide pass's own file.
    base.write_observations_csv(own, out / "observations.csv")
    rows = own + (smollm2_full_rows() if "smollm2" in fams else [])
    controls = [
        {k: r[k] for k in ("run_id", "family", "recipe", "size", "n0", "l0", "points")}
        for r in results
        if "control" in r["run_id"]
    ]
    comparison = compare(rows, per_token_flops)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1))
    report: dict[str, Any] = {
        "recipes": {"lr_factor": LR_FACTOR, "distill": DISTILL},
        "families": {k: base.config_summary(f.cfg) for k, f in fams.items()},
        "runs": [
            {k: r.get(k) for k in ("run_id", "recipe", "status", "seconds", "tokens_per_s")}
            for r in results
        ],
        "controls": controls,
        "fits": fit_recipes(rows, fams),
        "versions": base.versions(),
    }
    report["analyse_wall_s"] = round(time.monotonic() - started, 1)
    (out / "fits.json").write_text(json.dumps(report, indent=1, default=str))
    write_summary(report, comparison, out / "summary.md")
    log(f"analysis written to {out} ({time.monotonic() - started:.0f} s)")
    return report


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def write_summary(report: dict[str, Any], comparison: list[dict[str, Any]], path: Path) -> None:
    """summary.md: the comparison table and the fits' held-out errors and coverage."""
    lines = [
        "# Recipes study: full post-training, LoRA and distillation",
        "",
        "Generated by `studies/recipes.py`; see docs/study.md for the design and the reading.",
        "",
        "## Tokens and FLOPs to the loss every recipe reached",
        "",
        "| family | N0 | method | ρ | target | full: tokens / FLOPs | lora | distill "
        "| fewest tokens | fewest FLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in comparison:
        cells = []
        for recipe in RECIPES:
            v = e["recipes"].get(recipe)
            if v is None:
                cells.append("—")
            else:
                cells.append(
                    f"{_fmt(v['tokens_to_target'], ',.0f')} / {_fmt(v['flops_to_target'], '.2e')}"
                )
        lines.append(
            f"| {e['family']} | {e['n0']:,} | {e['method']} | {e['rho']:.2f} | "
            f"{e['target_loss']:.4f} | {' | '.join(cells)} | {e['fewest_tokens']} | "
            f"{e['fewest_flops']} |"
        )
    tally: dict[str, dict[str, int]] = {"tokens": {}, "flops": {}}
    for e in comparison:
        for what in ("tokens", "flops"):
            winner = e[f"fewest_{what}"]
            tally[what][winner] = tally[what].get(winner, 0) + 1
    lines += [
        "",
        f"Fewest tokens: {tally['tokens']}; fewest FLOPs: {tally['flops']} "
        f"(of {len(comparison)} pruned models).",
        "",
        "## P² per recipe: held-out MAPE (%) and 80% interval coverage",
        "",
        "| family | recipe | method | runs | D: MAPE / cov | N0 | ρ |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, by_recipe in report["fits"].items():
        for recipe, by_method in by_recipe.items():
            for method, fitted in by_method.items():
                cells = []
                for proto in ("D", "N0", "rho"):
                    entry = fitted.get("fits", {}).get(proto, {}).get("p2", {})
                    tm = entry.get("test_metrics")
                    cov = (entry.get("coverage") or {}).get("calibrated")
                    cells.append("—" if not tm else f"{tm['mape']:.2f} / {_fmt(cov, '.0%')}")
                lines.append(
                    f"| {family} | {recipe} | {method} | {fitted['n_runs']} | {' | '.join(cells)} |"
                )
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--var", type=Path, help="cache root (default var/study-recipes)")
    p.add_argument("--quick", action="store_true", help="minutes-long smoke version")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--families", default="llama,qwen2,smollm2", help="subset of the families")
    p.add_argument("--analyse-only", action="store_true", help="analyse the cached runs only")
    p.add_argument("--no-analyse", action="store_true", help="collect only")
    a = p.parse_args(argv)
    every = families(a.quick)
    chosen = [k.strip() for k in a.families.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in every]
    if unknown:
        p.error(f"unknown families {unknown} (of {list(every)})")
    fams = {k: every[k] for k in chosen}
    var_root = a.var or ROOT / ("var/study-recipes-quick" if a.quick else "var/study-recipes")
    var_root.mkdir(parents=True, exist_ok=True)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ARTIFACT_ROOT", str(var_root / "artifacts"))
    if not a.analyse_only:
        started = time.monotonic()
        collect(fams, var_root, a.workers)
        log(f"collection done in {time.monotonic() - started:.0f} s")
        if a.no_analyse:
            return 0
    analyse(fams, var_root, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
