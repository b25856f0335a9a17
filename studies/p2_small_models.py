"""Measurement study: real pruning and post-training curves on small Llama models, and P² fits.

    .venv/bin/python -m studies.p2_small_models --out studies/results          # full (~1 h, 2 CPUs)
    .venv/bin/python -m studies.p2_small_models --out /tmp/quick --quick       # smoke (minutes)

Steps (docs/law.md §3 and §6):
1. a short throughput probe per model shape (tokens/s), printed and recorded;
2. three dense Llama models of one family (one tokenizer, one corpus: the Python standard
   library's sources), pretrained with `make_model` (cosine decay to 1% of the peak learning
   rate) for `--pretrain-tpp` tokens per parameter, cached under `<var>/dense/<size>`;
3. per size x method {depth, width, 2:4} x target rho {0.15, 0.25, 0.35}: `run_pipeline`
   (prune, then post-train at a constant LR of 5% of the pretraining peak after a 2% warm-up,
   log-spaced checkpoints), plus one dense control per size given the same post-training;
   finished runs are cached as JSON under `<var>/runs` and skipped on a rerun, and an interrupted
   run resumes from the pipeline's last complete state;
4. per method: the `p2` fit on all runs, the D, N0 and rho hold-out protocols, a bootstrap by
   run, and the `frantar` (all protocols) and `curve` (D protocol) forms for comparison;
5. outputs in `--out`: observations.csv (the columns POST /observations takes), controls.csv
   (the dense controls, rho = 0, which the API does not accept), fits.json, one PNG per method.

Two worker processes with one torch thread each (`--workers`), so the machine stays usable.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.law import (
    Dataset,
    FitResult,
    LawError,
    fit,
    predict_interval,
    refit_runs,
    split,
)
from app.law.metrics import RHO_TEST, RHO_TOLERANCE, RHO_TRAIN
from app.schemas.observations import CSV_COLUMNS, CSV_OPTIONAL, ObservationIn

if TYPE_CHECKING:
    from torch import nn

    from workers.ml.job import JobOutcome, JobSpec
    from workers.ml.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

FAMILY = "study-llama"
SOURCE = "study"
METHODS = ("depth", "width", "2:4")
RHOS = (0.15, 0.25, 0.35)
PROTOCOLS = ("D", "N0", "rho")


@dataclass(frozen=True)
class ShapeSpec:
    """A Llama shape; the layer share of N0 is ~1/12 so that removing 2, 3 or 4 layers lands
    within 0.02 of rho = 0.15, 0.25, 0.35 (the rho protocol's tolerance)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines the study's numbers."""

    sizes: dict[str, ShapeSpec]
    vocab: int = 1024
    seq_len: int = 128
    corpus_bytes: int | None = None  # None: the whole stdlib corpus
    pretrain_tpp: float = 20.0  # pretraining tokens per parameter
    pretrain_batch: int = 16
    peak_lr: float = 3e-3
    post_lr_frac: float = 0.05  # post-training LR as a fraction of the pretraining peak
    # Post-training tokens per dense parameter (N0): 2.5 N0 is ~3.3x the pruned model's
    # parameters, what the CPU share here allows for 30 runs (10-20x would be better).
    post_tpp: float = 2.5
    post_batch: int = 16  # 16 x 128 tokens a step: half the per-token overhead of 8
    warmup_frac: float = 0.02
    checkpoints: int = 12
    methods: tuple[str, ...] = METHODS
    rhos: tuple[float, ...] = RHOS
    bootstrap: int = 50
    seed: int = 0
    arch: str = "llama"  # make_model's architecture: llama or qwen2
    family: str = FAMILY  # the observations' family label
    post_tokens: int | None = None  # post-training tokens of every run (None: post_tpp x N0)
    post_tpp_by_size: dict[str, float] = field(default_factory=dict)  # post_tpp per size
    eval_tokens: int | None = None  # held-out set size (None: the job default, 128 sequences)
    calib_samples: int | None = None  # pruning calibration sequences (None: the job default)
    # The job's recovery recipe (JobRequest.recipe; None: full post-training). A run of another
    # recipe than full has its name in its run id and result files (studies/recipes.py).
    recipe: dict[str, Any] | None = None

    @property
    def recipe_kind(self) -> str:
        return str((self.recipe or {}).get("kind", "full"))

    @property
    def recipe_suffix(self) -> str:
        """'' for full post-training, '-<kind>' otherwise (run ids and file names)."""
        return "" if self.recipe_kind == "full" else f"-{self.recipe_kind}"

    @property
    def post_lr(self) -> float:
        return self.peak_lr * self.post_lr_frac

    def post_tokens_for(self, n0: int, size: str | None = None) -> int:
        """Post-training tokens of one run of a model (of `size`) with `n0` parameters."""
        if self.post_tokens is not None:
            return self.post_tokens
        return int(self.post_tpp_by_size.get(size or "", self.post_tpp) * n0)


# Roughly 0.076M, 0.10M and 0.17M parameters (vocabulary 1024, tied embeddings), sized to the
# CPU time this machine gives the study: its two cores are shared, and the niced workers get
# about a third of a core each, ~3k tokens/s on these shapes (a 1.2M model would train at
# ~0.6k tokens/s, so 20 tokens/parameter alone would take 11 hours).
FULL = StudyConfig(
    sizes={
        "S": ShapeSpec(hidden=24, layers=8, heads=4, kv_heads=2, intermediate=64),
        "M": ShapeSpec(hidden=32, layers=8, heads=4, kv_heads=2, intermediate=56),
        "L": ShapeSpec(hidden=40, layers=9, heads=4, kv_heads=2, intermediate=80),
    }
)
# Minutes-long smoke version: two tiny sizes (the N0 protocol needs two), short runs.
QUICK = StudyConfig(
    sizes={
        "S": ShapeSpec(hidden=16, layers=6, heads=2, kv_heads=1, intermediate=32),
        "M": ShapeSpec(hidden=24, layers=6, heads=2, kv_heads=1, intermediate=48),
    },
    vocab=256,
    seq_len=64,
    corpus_bytes=1_500_000,
    pretrain_tpp=2.0,
    post_tpp=0.5,
    checkpoints=6,
    bootstrap=5,
)


def log(msg: str) -> None:
    """A timestamped progress line (workers share the parent's stdout)."""
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')} pid {os.getpid()}] {msg}", flush=True)


def method_slug(method: str) -> str:
    """A file-name-safe method label."""
    return method.replace(":", "of")


def run_id(size: str, method: str, rho: float, family: str = FAMILY, recipe: str = "") -> str:
    """The observation run id of one pruned run (``recipe``: StudyConfig.recipe_suffix)."""
    return f"{family}-{size}-{method}-{rho:.2f}{recipe}"


# --------------------------------------------------------------------------- workers


def init_worker() -> None:
    """A study worker process: one torch thread, no progress bars."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    # One bar per save and load would drown the progress log.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def probe_throughput(shape: ShapeSpec, cfg: StudyConfig, steps: int = 4) -> dict[str, float]:
    """Tokens/s of pretraining steps of a fresh model of `shape` (one thread), and its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from workers.ml.train import TrainConfig

    torch.manual_seed(cfg.seed)
    config_cls: Any = Qwen2Config if cfg.arch == "qwen2" else LlamaConfig
    model_cls: Any = Qwen2ForCausalLM if cfg.arch == "qwen2" else LlamaForCausalLM
    model = model_cls(
        config_cls(
            vocab_size=cfg.vocab + 2,
            hidden_size=shape.hidden,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            intermediate_size=shape.intermediate,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
        )
    )
    n_params = sum(p.numel() for p in model.parameters())
    # make_model's pretraining settings: cosine, weight decay 0.1, gradient clipping at 1.
    pretraining = TrainConfig(
        lr=cfg.peak_lr,
        schedule="cosine",
        min_lr_ratio=0.01,
        weight_decay=0.1,
        batch_size=cfg.pretrain_batch,
        grad_clip=1.0,
        seed=cfg.seed,
    )
    tokens_per_s = trainer_tokens_per_s(model, pretraining, cfg.vocab, cfg.seq_len, steps)
    return {"n_params": float(n_params), "tokens_per_s": tokens_per_s}


def trainer_tokens_per_s(
    model: nn.Module, config: TrainConfig, vocab: int, seq_len: int, steps: int
) -> float:
    """Tokens/s of `steps` optimizer steps of the job's `Trainer` with `config` on random blocks,
    after one warm-up step (allocations and first-call overheads)."""
    import torch

    from workers.ml.train import Trainer

    config = replace(config, total_steps=steps + 1)
    blocks = torch.randint(0, vocab, (config.batch_size * (steps + 1), seq_len))
    trainer = Trainer(model, blocks, config)
    trainer.train_until(1)
    started = time.perf_counter()
    trainer.train_until(1 + steps)
    return steps * trainer.tokens_per_step / (time.perf_counter() - started)


def pretrain(size: str, cfg: StudyConfig, corpus: Path, var: Path) -> dict[str, Any]:
    """Pretrain (or load the cached) dense model of `size`; its make_model info."""
    out = var / "dense" / size
    info_path = out / "p2law_make_model.json"
    lock = var / "dense" / f"{size}.pretraining"
    _wait_for_other_pretraining(lock, info_path)
    if info_path.is_file():  # written last by make_model: the model is complete
        log(f"dense {size}: cached at {out}")
        return dict(json.loads(info_path.read_text()), cached=True, path=str(out))
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
        return _pretrain(size, cfg, corpus, out, info_path)
    finally:
        lock.unlink(missing_ok=True)


def _finished_info(info_path: Path) -> bool:
    try:
        return "tokens_per_s" in json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False


def _wait_for_other_pretraining(lock: Path, info_path: Path) -> None:
    """Another invocation sharing the cache is pretraining this size (its pid in `lock`):
    wait until its model is saved and its info complete, or until that process is gone."""
    waited = False
    while lock.is_file() and not _finished_info(info_path):
        try:
            pid = int(lock.read_text().strip() or "0")
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            lock.unlink(missing_ok=True)  # a stale lock: its process is gone
            break
        if not waited:
            log(f"waiting for pid {pid}, which is pretraining {lock.stem}")
            waited = True
        time.sleep(10)


def _pretrain(
    size: str, cfg: StudyConfig, corpus: Path, out: Path, info_path: Path
) -> dict[str, Any]:
    from workers.ml.make_model import Shape, make_model

    shape = cfg.sizes[size]
    probe = probe_throughput(shape, cfg)
    n = int(probe["n_params"])
    tokens = int(cfg.pretrain_tpp * n)
    log(
        f"dense {size}: {n:,} parameters, {tokens:,} tokens at ~{probe['tokens_per_s']:.0f} "
        f"tokens/s (probe) = ~{tokens / probe['tokens_per_s'] / 60:.1f} min"
    )
    started = time.monotonic()
    make_model(
        out,
        arch=cfg.arch,
        size=None,
        shape=Shape(**asdict(shape)),
        corpus=corpus,
        tokens=tokens,
        vocab=cfg.vocab,
        seq_len=cfg.seq_len,
        batch_size=cfg.pretrain_batch,
        lr=cfg.peak_lr,
        seed=cfg.seed,
        progress=False,
    )
    info = json.loads(info_path.read_text())
    elapsed = time.monotonic() - started
    info["probe_tokens_per_s"] = probe["tokens_per_s"]
    info["tokens_per_s"] = info["tokens"] / elapsed
    info_path.write_text(json.dumps(info, indent=1))
    log(f"dense {size}: L0 {info['eval_loss']:.4f}, {elapsed:.0f} s")
    return dict(info, cached=False, path=str(out))


class Collector:
    """JobHooks that print what the pipeline measured and each checkpoint (the results come
    from the job's outcome)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def on_measured(self, measured: Any) -> None:
        log(
            f"{self.label}: rho {measured.rho:.4f}, L0 {measured.l0:.4f}, after pruning "
            f"{measured.loss_after_prune:.4f}"
        )

    def on_resume(self, tokens_done: int, points: list[Any]) -> None:
        log(f"{self.label}: resumed at {tokens_done:,} tokens ({len(points)} checkpoints)")

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        return None

    def on_checkpoint(self, point: Any, points: list[Any]) -> tuple[Any, str | None]:
        from workers.ml.job import Decision

        flag = " BELOW L0" if point.below_l0 else ""
        log(f"{self.label}: D={point.tokens:,} loss {point.loss:.4f}{flag}")
        return Decision.CONTINUE, None


def job_spec(
    size: str, method: str, rho: float, *, n0: int, cfg: StudyConfig, corpus: Path, var: Path
) -> JobSpec:
    """The job a study run is: the request a user would submit, the spec the worker builds."""
    from app.core.paths import JobPaths
    from app.schemas.jobs import JobRequest
    from workers.ml.job import JobSpec

    dataset: dict[str, Any] = {"path": str(corpus)}
    if cfg.eval_tokens is not None:
        dataset["eval_tokens"] = cfg.eval_tokens
    optional: dict[str, Any] = {}
    if cfg.calib_samples is not None:
        optional["calib_samples"] = cfg.calib_samples
    if cfg.recipe is not None:
        optional["recipe"] = cfg.recipe
    request = JobRequest.model_validate(
        {
            **optional,
            "model": str(var / "dense" / size),
            "method": method,
            "rho": rho,
            "tokens": cfg.post_tokens_for(n0, size),
            "dataset": dataset,
            "checkpoints": cfg.checkpoints,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.post_batch,
            "lr": cfg.post_lr,
            # The recipe the committed results were measured with (before clipping and the wsd
            # default): a rerun reproduces them.
            "schedule": "constant",
            "grad_clip": None,
            "warmup_frac": cfg.warmup_frac,
            "seed": cfg.seed,
            "device": "cpu",
        }
    )
    return JobSpec.build(request, JobPaths(str(var / "dense" / size), corpus, None), cuda=False)


def run_job(spec: JobSpec, workdir: Path, label: str) -> JobOutcome:
    """The job's own pipeline on one device; the work folder is removed after (the results go
    to the study's JSON, the weights are not kept). The artifact is written beside the work
    folder, never in it, as a worker lays them out: the last state's asynchronous publishing
    cleans the work folder's temporary entries while the artifact is being written."""
    from workers.ml.pipeline import prune_and_post_train

    artifact = workdir.with_name(f"{workdir.name}.artifact")
    try:
        return prune_and_post_train(
            spec, workdir=workdir, artifact_dir=artifact, hooks=Collector(label)
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(artifact, ignore_errors=True)


def write_result(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """A run's result file, atomically; returns the result marked as not cached."""
    from app.core import atomic

    atomic.write_json(path, result)
    return dict(result, cached=False)


def run_pruned(
    size: str, method: str, rho: float, *, n0: int, cfg: StudyConfig, corpus: Path, var: Path
) -> dict[str, Any]:
    """One prune -> post-train run through the job's pipeline; cached as JSON when finished."""
    from workers.ml.prune import PruneError

    rid = run_id(size, method, rho, cfg.family, cfg.recipe_suffix)
    slug = f"{size}-{method_slug(method)}-{rho:.2f}{cfg.recipe_suffix}"
    result_path = var / "runs" / f"{slug}.json"
    if result_path.is_file():
        log(f"{rid}: cached")
        return dict(json.loads(result_path.read_text()), cached=True)
    spec = job_spec(size, method, rho, n0=n0, cfg=cfg, corpus=corpus, var=var)
    started = time.monotonic()
    base: dict[str, Any] = {
        "run_id": rid,
        "family": cfg.family,
        "size": size,
        "method": method,
        "target_rho": rho,
        "recipe": cfg.recipe_kind,
        "spec": spec.model_dump(mode="json"),
    }
    try:
        outcome = run_job(spec, var / "work" / slug, rid)
    except PruneError as exc:  # e.g. 2:4 above its maximum: a property of the model, not a bug
        log(f"{rid}: skipped ({exc})")
        return write_result(result_path, dict(base, status="skipped", reason=str(exc)))
    elapsed = time.monotonic() - started
    log(f"{rid}: {outcome.status} in {elapsed:.0f} s")
    return write_result(
        result_path,
        dict(
            base,
            status=outcome.status,
            measured=asdict(outcome.measured),
            points=[asdict(p) for p in outcome.points],
            seconds=round(elapsed, 1),
            tokens_per_s=outcome.points[-1].tokens / elapsed if outcome.points else None,
        ),
    )


def run_control(size: str, *, n0: int, cfg: StudyConfig, corpus: Path, var: Path) -> dict[str, Any]:
    """The dense model given the pruned runs' post-training, evaluated at the same checkpoints:
    the same job as theirs with the pruning step left out (``JobSpec.prune``)."""
    result_path = var / "runs" / f"{size}-control{cfg.recipe_suffix}.json"
    if result_path.is_file():
        log(f"control {size}: cached")
        return dict(json.loads(result_path.read_text()), cached=True)
    spec = job_spec(size, "depth", 0.25, n0=n0, cfg=cfg, corpus=corpus, var=var)
    spec = spec.model_copy(update={"prune": False})
    started = time.monotonic()
    label = f"{size}-control{cfg.recipe_suffix}"
    outcome = run_job(spec, var / "work" / label, f"control {label}")
    measured = outcome.measured
    return write_result(
        result_path,
        {
            "run_id": f"{cfg.family}-{size}-dense-control{cfg.recipe_suffix}",
            "family": cfg.family,
            "recipe": cfg.recipe_kind,
            "size": size,
            "n0": measured.n0,
            "l0": measured.l0,
            "eval_noise": measured.eval_noise,
            "protocol": measured.protocol,
            "schedule": measured.schedule,
            "points": [{"tokens": p.tokens, "loss": p.loss} for p in outcome.points],
            "seconds": round(time.monotonic() - started, 1),
        },
    )


# --------------------------------------------------------------------------- scheduling


def prepare_corpus(cfg: StudyConfig, var: Path) -> Path:
    """The corpus file every model and run reads (written once, atomically)."""
    from workers.ml.corpus import write_corpus

    path = var / "corpus.txt"
    if not path.is_file():
        write_corpus(path, max_bytes=cfg.corpus_bytes)
    return path


def run_all(cfg: StudyConfig, var: Path, workers: int) -> tuple[dict[str, Any], list[Any]]:
    """Pretrain every size, then every run of a size as soon as its dense model exists.

    Sizes are pretrained largest first (the longest task starts first); a size's control and
    runs are queued the moment its model is ready, so no worker idles while one pretrains.
    """
    corpus = prepare_corpus(cfg, var)
    dense: dict[str, Any] = {}
    results: list[Any] = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker) as pool:
        pending: dict[Future[Any], tuple[str, str]] = {}
        for size in reversed(list(cfg.sizes)):
            pending[pool.submit(pretrain, size, cfg, corpus, var)] = ("pretrain", size)
        total_runs = len(cfg.sizes) * (1 + len(cfg.methods) * len(cfg.rhos))
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, size = pending.pop(fut)
                value = fut.result()
                if kind == "pretrain":
                    dense[size] = value
                    n0 = int(value["n_params"])
                    common: dict[str, Any] = {"n0": n0, "cfg": cfg, "corpus": corpus, "var": var}
                    pending[pool.submit(run_control, size, **common)] = ("run", size)
                    for m in cfg.methods:
                        for r in cfg.rhos:
                            pending[pool.submit(run_pruned, size, m, r, **common)] = ("run", size)
                else:
                    results.append(value)
                    log(f"progress: {len(results)}/{total_runs} runs done")
    return dense, results


# --------------------------------------------------------------------------- fits


def observation_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per checkpoint of every finished pruned run, in POST /observations' columns,
    plus the pipeline's below-L0 flag (kept apart from the CSV)."""
    rows = []
    for res in results:
        if res.get("status") not in ("succeeded", "stopped_early") or "measured" not in res:
            continue
        m = res["measured"]
        for p in res["points"]:
            rows.append(
                {
                    "run_id": res["run_id"],
                    "family": res.get("family", FAMILY),
                    "method": res["method"],
                    "n0": int(m["n0"]),
                    "rho": float(m["rho"]),
                    "l0": float(m["l0"]),
                    "tokens": int(p["tokens"]),
                    "loss": float(p["loss"]),
                    "protocol": m["protocol"],
                    "recipe": res.get("recipe", "full"),
                    "source": SOURCE,
                    "_below_l0": bool(p["below_l0"]),
                }
            )
    rows.sort(key=lambda r: (r["method"], r["recipe"], r["n0"], r["rho"], r["tokens"]))
    return rows


def write_observations_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The CSV that uploads as is to POST /observations (every row validated by its schema)."""
    columns = [*CSV_COLUMNS, *CSV_OPTIONAL]
    for row in rows:
        ObservationIn.model_validate({k: row[k] for k in columns})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    **row,
                    "rho": f"{row['rho']:.6f}",
                    "l0": f"{row['l0']:.6f}",
                    "loss": f"{row['loss']:.6f}",
                }
            )


def fit_summary(result: FitResult, seconds: float) -> dict[str, Any]:
    """A FitResult as JSON (the constants, optimiser status, metrics, ranges)."""
    return {
        "params": result.params,
        "objective": result.objective,
        "converged": result.converged,
        "message": result.message,
        "n_starts": result.n_starts,
        "n_observations": result.n_observations,
        "n_runs": result.n_runs,
        "metrics": result.metrics.as_dict(),
        "holdout_metrics": result.holdout_metrics.as_dict() if result.holdout_metrics else None,
        "ranges": result.ranges.as_dict(),
        "seconds": round(seconds, 2),
    }


def bootstrap_summary(
    form: str, train: Dataset, test: Dataset, result: FitResult, *, n: int, seed: int
) -> dict[str, Any]:
    """Bootstrap by run: 10/50/90th percentiles of each constant, and how many points of
    `test` fall inside the 80% prediction interval (coverage; nominal 0.8)."""
    if n <= 0:
        return {}
    started = time.monotonic()
    refits = refit_runs(form, train, result, n, seed=seed)
    lo, hi = predict_interval(form, refits, test.x, 0.8)
    inside = (test.loss >= lo) & (test.loss <= hi)
    keys = list(result.params)
    pct = {k: [float(v) for v in np.percentile([r[k] for r in refits], [10, 50, 90])] for k in keys}
    return {
        "n": n,
        "param_percentiles_10_50_90": pct,
        "coverage_80": float(np.mean(inside)),
        "mean_interval_width": float(np.mean(hi - lo)),
        "seconds": round(time.monotonic() - started, 2),
    }


def rho_split_report(data: Dataset) -> dict[str, Any]:
    """Measured rho of each run and which side of the rho protocol it lands on."""
    runs = {}
    for r, rid in enumerate(data.run_ids):
        idx = np.flatnonzero(data.run == r)
        if idx.size == 0:
            continue
        rho = float(data.x.rho[idx[0]])
        dist = {t: abs(rho - t) for t in (*RHO_TRAIN, RHO_TEST)}
        nearest = min(dist, key=lambda t: dist[t])
        side = (
            "none"
            if dist[nearest] > RHO_TOLERANCE
            else ("test" if nearest == RHO_TEST else "train")
        )
        runs[rid] = {"rho": rho, "nearest": nearest, "side": side}
    sides = [v["side"] for v in runs.values()]
    return {
        "runs": runs,
        "worked": "train" in sides and "test" in sides,
        "n_outside_tolerance": sides.count("none"),
    }


def fit_method(rows: Sequence[dict[str, Any]], cfg: StudyConfig) -> dict[str, Any]:
    """Every fit of one method's runs; points the pipeline flagged below L0 are left out."""
    kept = [r for r in rows if not r["_below_l0"]]
    report: dict[str, Any] = {
        "n_runs": len({r["run_id"] for r in rows}),
        "n_points": len(rows),
        "n_below_l0_flagged": len(rows) - len(kept),
        "n_below_l0_raw": sum(r["loss"] < r["l0"] for r in rows),
        "fits": {},
    }
    if not kept:
        return report
    data = Dataset.from_rows(kept)
    report["rho_split"] = rho_split_report(data)
    plan: list[tuple[str, str | None]] = [("p2", None), ("frantar", None)]
    plan += [(form, proto) for proto in PROTOCOLS for form in ("p2", "frantar")]
    plan += [("curve", "D")]
    for form, proto in plan:
        key = proto or "all"
        started = time.monotonic()
        try:
            res = fit(form, data, holdout=proto)  # type: ignore[arg-type]
        except LawError as exc:
            report["fits"].setdefault(form, {})[key] = {"error": str(exc)}
            log(f"fit {form} {key}: {exc}")
            continue
        summary = fit_summary(res, time.monotonic() - started)
        if proto is None:
            train, test = data, data
        else:
            mask_train, mask_test = split(data, proto)  # type: ignore[arg-type]
            train, test = data.take(mask_train), data.take(mask_test)
        summary["n_test"] = len(test) if proto else 0
        if form == "p2":
            try:
                summary["bootstrap"] = bootstrap_summary(
                    form, train, test, res, n=cfg.bootstrap, seed=cfg.seed
                )
            except LawError as exc:
                summary["bootstrap"] = {"error": str(exc)}
        report["fits"].setdefault(form, {})[key] = summary
        hm = summary["holdout_metrics"] or summary["metrics"]
        log(
            f"fit {form:8s} {key:4s}: MAPE {hm['mape']:.3f}% ASD {hm['asd']:.4g} "
            f"R2 {hm['r2']:.3f} ({summary['seconds']:.1f} s)"
        )
    return report


def reference_extrapolation(
    reference: dict[str, Any], rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Metrics of the reference study's `p2` (all runs) fit on this study's points with D
    above the largest D the reference fitted, per method; flagged points left out."""
    from app.law import evaluate

    out: dict[str, Any] = {}
    for method, m in reference.get("methods", {}).items():
        ref = m.get("fits", {}).get("p2", {}).get("all")
        if not ref or "params" not in ref:
            continue
        d_max = float(ref["ranges"]["tokens"][1])
        beyond = [
            r for r in rows if r["method"] == method and r["tokens"] > d_max and not r["_below_l0"]
        ]
        if not beyond:
            out[method] = {"error": f"no points beyond the reference's D = {d_max:,.0f}"}
            continue
        metrics = evaluate("p2", ref["params"], Dataset.from_rows(beyond))
        out[method] = {
            "reference_max_tokens": d_max,
            "max_tokens": max(r["tokens"] for r in beyond),
            "n_points": len(beyond),
            "n_runs": len({r["run_id"] for r in beyond}),
            "metrics": metrics.as_dict(),
        }
    return out


def control_summary(ctrl: dict[str, Any]) -> dict[str, Any]:
    """Whether the dense control drops below L0 beyond 2x the evaluation noise (§3)."""
    losses = [p["loss"] for p in ctrl["points"]]
    low = min(losses)
    return {
        "l0": ctrl["l0"],
        "eval_noise": ctrl["eval_noise"],
        "min_loss": low,
        "final_loss": losses[-1],
        "min_minus_l0": low - ctrl["l0"],
        "below_l0_beyond_noise": bool(low < ctrl["l0"] - 2 * ctrl["eval_noise"]),
    }


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    import scipy
    import torch
    import transformers

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "git_commit": commit,
    }


#: What a report says of each dense model.
DENSE_FIELDS = (
    "n_params",
    "tokens",
    "eval_loss",
    "eval_stderr",
    "protocol",
    "schedule",
    "seconds",
    "tokens_per_s",
    "probe_tokens_per_s",
)


def config_summary(cfg: StudyConfig) -> dict[str, Any]:
    """A study's configuration as a report records it."""
    return {
        **{k: v for k, v in asdict(cfg).items() if k != "sizes"},
        "sizes": {k: asdict(v) for k, v in cfg.sizes.items()},
        "post_lr": cfg.post_lr,
    }


def dense_summary(
    dense: Mapping[str, Mapping[str, Any]], extra: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """DENSE_FIELDS (and `extra`) of each dense model, by size."""
    return {size: {k: info.get(k) for k in (*DENSE_FIELDS, *extra)} for size, info in dense.items()}


def runs_table(
    pruned: Sequence[dict[str, Any]],
    extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per pruned run, by method, size and target ρ: what was asked, then what was
    measured and where the run ended (with `extra`'s fields), or why it has no result."""
    table = []
    for r in sorted(pruned, key=lambda r: (r["method"], r["size"], r["target_rho"])):
        entry = {k: r.get(k) for k in ("run_id", "size", "method", "target_rho", "status")}
        if "measured" in r:
            m = r["measured"]
            entry |= {
                "rho": m["rho"],
                "n0": m["n0"],
                "n_after": m["n_after"],
                "l0": m["l0"],
                "loss_after_prune": m["loss_after_prune"],
                "final_loss": r["points"][-1]["loss"] if r["points"] else None,
                "tokens": r["points"][-1]["tokens"] if r["points"] else None,
                "seconds": r.get("seconds"),
            }
            if extra is not None:
                entry |= extra(r)
        else:
            entry["reason"] = r.get("reason")
        table.append(entry)
    return table


def analyse(
    cfg: StudyConfig,
    dense: dict[str, Any],
    results: list[dict[str, Any]],
    out: Path,
    timings: dict[str, float],
    *,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write observations.csv, controls.csv, fits.json and one plot per method.

    With `reference` (another study's fits.json), each method's `p2` fit on all of that study's
    runs also predicts this study's points beyond the reference's largest D: an extrapolation
    in D by runs the reference never saw (same dense models, longer post-training).
    """
    from app.plotting import plot_fit

    out.mkdir(parents=True, exist_ok=True)
    rows = observation_rows(results)
    write_observations_csv(rows, out / "observations.csv")
    controls = sorted((r for r in results if "control" in r["run_id"]), key=lambda r: r["n0"])
    with (out / "controls.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run_id", "family", "n0", "l0", "tokens", "loss", "protocol"])
        for c in controls:
            for p in c["points"]:
                writer.writerow(
                    [
                        c["run_id"],
                        FAMILY,
                        c["n0"],
                        f"{c['l0']:.6f}",
                        p["tokens"],
                        f"{p['loss']:.6f}",
                        c["protocol"],
                    ]
                )
    pruned = [r for r in results if "control" not in r["run_id"]]
    methods: dict[str, Any] = {}
    for method in cfg.methods:
        mine = [r for r in rows if r["method"] == method]
        log(f"fitting {method}: {len(mine)} points")
        methods[method] = fit_method(mine, cfg)
        p2 = methods[method]["fits"].get("p2", {}).get("all")
        if p2 and "params" in p2:
            kept = [r for r in mine if not r["_below_l0"]]
            png = plot_fit(
                "p2",
                p2["params"],
                Dataset.from_rows(kept),
                title=f"P² law, {method} pruning, {FAMILY} ({len(kept)} points)",
            )
            (out / f"fit_{method_slug(method)}.png").write_bytes(png)
    run_table = runs_table(pruned, lambda r: {"schedule": r["measured"]["schedule"]})
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "family": FAMILY,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads_per_worker": 1,
        },
        "versions": versions(),
        "config": config_summary(cfg),
        "timings": timings,
        "dense": dense_summary(dense),
        "controls": {c["size"]: control_summary(c) for c in controls},
        "runs": run_table,
        "methods": methods,
        "reference_extrapolation": (
            reference_extrapolation(reference, rows) if reference is not None else None
        ),
    }
    (out / "fits.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def write_summary(report: dict[str, Any], path: Path) -> None:
    """Markdown tables of fits.json (dense models, controls, runs, fits) for docs/study.md."""
    lines = [
        "## Dense models",
        "",
        "| size | N0 | tokens | tokens/param | L0 ± s.e. | s | tokens/s |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for size, d in report["dense"].items():
        n, t = d.get("n_params"), d.get("tokens")
        tpp = t / n if n and t else None
        lines.append(
            f"| {size} | {_fmt(n, ',')} | {_fmt(t, ',')} | {_fmt(tpp, '.1f')} | "
            f"{_fmt(d.get('eval_loss'), '.4f')} ± {_fmt(d.get('eval_stderr'), '.4f')} | "
            f"{_fmt(d.get('seconds'), '.0f')} | {_fmt(d.get('tokens_per_s'), '.0f')} |"
        )
    lines += ["", "## Dense controls (same post-training, no pruning)", ""]
    lines += ["| size | L0 | eval noise | min L | final L | min L − L0 | below L0 − 2·noise |"]
    lines.append("|---|---|---|---|---|---|---|")
    for size, c in report["controls"].items():
        lines.append(
            f"| {size} | {c['l0']:.4f} | {c['eval_noise']:.4f} | {c['min_loss']:.4f} | "
            f"{c['final_loss']:.4f} | {c['min_minus_l0']:+.4f} | {c['below_l0_beyond_noise']} |"
        )
    lines += ["", "## Runs", ""]
    lines += ["| method | size | target ρ | measured ρ | L0 | L after pruning | final L | D | s |"]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        if r.get("status") == "skipped":
            lines.append(
                f"| {r['method']} | {r['size']} | {r['target_rho']} | skipped: "
                f"{str(r.get('reason'))[:90]} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['method']} | {r['size']} | {r['target_rho']} | {_fmt(r.get('rho'), '.4f')} | "
            f"{_fmt(r.get('l0'), '.4f')} | {_fmt(r.get('loss_after_prune'), '.4f')} | "
            f"{_fmt(r.get('final_loss'), '.4f')} | {_fmt(r.get('tokens'), ',')} | "
            f"{_fmt(r.get('seconds'), '.0f')} |"
        )
    lines += ["", "## Fits", ""]
    lines += [
        "Metrics on the held-out side for D, N0 and rho; on the fitted points for `all`. "
        "MAPE in percent, ASD in nats per billion tokens (docs/law.md §5); coverage: share of "
        "the evaluated points inside the bootstrap's 80% interval.",
        "",
        "| method | form | protocol | fit pts | test pts | MAPE % | RMSE | ASD | R² | "
        "80% coverage | converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in report["methods"].items():
        for form, by_proto in m["fits"].items():
            for proto, f in by_proto.items():
                if "error" in f:
                    lines.append(f"| {method} | {form} | {proto} | {f['error'][:100]} |||||||| ")
                    continue
                hm = f["holdout_metrics"] or f["metrics"]
                boot = f.get("bootstrap") or {}
                cov = boot.get("coverage_80")
                lines.append(
                    f"| {method} | {form} | {proto} | {f['n_observations']} | "
                    f"{f.get('n_test', '—') if proto != 'all' else '—'} | {hm['mape']:.3f} | "
                    f"{hm['rmse']:.4f} | {hm['asd']:.3g} | {hm['r2']:.3f} | {_fmt(cov, '.2f')} | "
                    f"{f['converged']} |"
                )
        split_ok = m.get("rho_split", {}).get("worked")
        lines.append(
            f"| {method} | points below L0 (flagged / raw) | {m['n_below_l0_flagged']} / "
            f"{m['n_below_l0_raw']} of {m['n_points']} | rho split worked: {split_ok} ||||||||"
        )
    extra = report.get("reference_extrapolation")
    if extra:
        lines += ["", "## Extrapolation of the reference fits beyond their D range", ""]
        lines += ["| method | reference max D | points (runs) | max D | MAPE % | RMSE | ASD |"]
        lines.append("|---|---|---|---|---|---|---|")
        for method, e in extra.items():
            if "error" in e:
                lines.append(f"| {method} | {e['error']} ||||||")
                continue
            em = e["metrics"]
            lines.append(
                f"| {method} | {e['reference_max_tokens']:,.0f} | {e['n_points']} "
                f"({e['n_runs']}) | {e['max_tokens']:,} | {em['mape']:.3f} | "
                f"{em['rmse']:.4f} | {em['asd']:.3g} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--var", type=Path, help="cache of models and runs (default var/study)")
    p.add_argument("--quick", action="store_true", help="minutes-long smoke version")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--post-tpp", type=float, help="post-training tokens per N0")
    p.add_argument("--pretrain-tpp", type=float, help="pretraining tokens per parameter")
    p.add_argument("--bootstrap", type=int, help="bootstrap refits per p2 fit")
    p.add_argument(
        "--analyse-only",
        action="store_true",
        help="fit and write outputs from the cached runs; train nothing",
    )
    p.add_argument(
        "--sizes",
        help="comma-separated subset of the sizes to train now (e.g. S,M); the others are left "
        "to another invocation sharing the cache",
    )
    p.add_argument(
        "--no-analyse", action="store_true", help="train only; fit later with --analyse-only"
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="another run's fits.json: its p2 fits predict this run's points beyond its D range",
    )
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    overrides: dict[str, Any] = {}
    if a.post_tpp is not None:
        overrides["post_tpp"] = a.post_tpp
    if a.pretrain_tpp is not None:
        overrides["pretrain_tpp"] = a.pretrain_tpp
    if a.bootstrap is not None:
        overrides["bootstrap"] = a.bootstrap
    cfg = replace(cfg, **overrides)
    var = a.var or ROOT / ("var/study-quick" if a.quick else "var/study")
    var.mkdir(parents=True, exist_ok=True)
    # One thread per worker for every pool a library might start (BLAS, the tokenizer's rayon).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log(f"study: {len(cfg.sizes)} sizes, cache {var}, out {a.out}, {a.workers} workers")
    started = time.monotonic()
    if a.analyse_only:
        dense, results = load_cached(cfg, var)
    else:
        chosen = a.sizes.split(",") if a.sizes else list(cfg.sizes)
        unknown = [k for k in chosen if k not in cfg.sizes]
        if unknown:
            p.error(f"unknown sizes {unknown} (one of {list(cfg.sizes)})")
        subset = replace(cfg, sizes={k: cfg.sizes[k] for k in chosen})
        dense, results = run_all(subset, var, a.workers)
        if a.no_analyse:
            log(f"trained {chosen} in {time.monotonic() - started:.0f} s; not fitting")
            return 0
        if a.sizes:  # fit on everything in the cache, not only this invocation's sizes
            dense, results = load_cached(cfg, var)
    train_s = time.monotonic() - started
    fit_started = time.monotonic()
    timings = {"train_wall_s": round(train_s, 1)}
    reference = json.loads(a.reference.read_text()) if a.reference else None
    analyse(cfg, dense, results, a.out, timings, reference=reference)
    timings["fit_wall_s"] = round(time.monotonic() - fit_started, 1)
    report_path = a.out / "fits.json"
    report = json.loads(report_path.read_text())
    report["timings"] = timings
    report_path.write_text(json.dumps(report, indent=1, default=str))
    write_summary(report, a.out / "summary.md")
    log(f"done: {a.out} (train {train_s:.0f} s, fits {timings['fit_wall_s']:.0f} s)")
    return 0


def load_cached(cfg: StudyConfig, var: Path) -> tuple[dict[str, Any], list[Any]]:
    """Dense models and finished runs in the cache `var` (what `--analyse-only` fits)."""
    dense = {}
    for size in cfg.sizes:
        info = var / "dense" / size / "p2law_make_model.json"
        if info.is_file():
            dense[size] = json.loads(info.read_text())
    results = [json.loads(p.read_text()) for p in sorted((var / "runs").glob("*.json"))]
    return dense, results


if __name__ == "__main__":
    raise SystemExit(main())
