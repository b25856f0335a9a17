"""The whole job: L0, prune, post-train with log-spaced checkpoints, atomic resume, decisions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from tests.workers.ml.pipeline_helpers import CrashError, Recorder, write_model_and_corpus
from workers.ml import data
from workers.ml.checkpoint import COMPLETE, latest_complete_state
from workers.ml.evaluate import eval_loss
from workers.ml.host_memory import REPORT_PREFIX
from workers.ml.job import Decision, JobSpec, PipelineError
from workers.ml.pipeline import prune_and_post_train

torch.set_num_threads(1)

SEQ, BATCH = 32, 4
TOKENS_PER_STEP = SEQ * BATCH


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model_and_corpus(tmp_path_factory.mktemp("assets"))


def _spec(
    assets: tuple[Path, Path],
    method: str = "depth",
    rho: float = 0.25,
    tokens: int = 24 * TOKENS_PER_STEP,
    **fields: object,
) -> JobSpec:
    """A job spec the way the worker builds one: a validated request, then JobSpec.build."""
    model_dir, corpus = assets
    request = JobRequest.model_validate(
        {
            "model": str(model_dir),
            "method": method,
            "rho": rho,
            "tokens": tokens,
            "dataset": {"path": str(corpus), "eval_tokens": 8 * SEQ},
            "checkpoints": 5,
            "seq_len": SEQ,
            "batch_size": BATCH,
            "lr": 1e-3,
            "warmup_frac": 0.1,
            "seed": 3,
            "device": "cpu",
            **fields,
        }
    )
    return JobSpec.build(request, JobPaths(str(model_dir), corpus, None), cuda=False)


@pytest.mark.parametrize("method", ["depth", "2:4"])
def test_job_end_to_end(assets: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    spec = _spec(assets, method=method, rho=0.25 if method == "depth" else 0.2)
    hooks = Recorder()
    out = prune_and_post_train(
        spec, workdir=tmp_path / "work", artifact_dir=tmp_path / "art", hooks=hooks
    )

    assert out.status == "succeeded" and out.reason is None
    m = out.measured
    assert hooks.measured == [m] and hooks.resumed == []
    assert 0 < m.rho < 1 and m.n_after < m.n0
    # A random model loses little to pruning; both losses are measured on the same set.
    assert math.isfinite(m.loss_after_prune) and m.l0 > 0 and m.eval_noise > 0
    assert m.protocol.startswith("eval:") and m.protocol.endswith(f":seq{SEQ}:n{8 * SEQ}")
    assert m.schedule == "wsd lr=0.001 warmup=8% decay=21% floor=0"  # the default recipe
    assert [p.tokens for p in out.points] == [s * TOKENS_PER_STEP for s in [1, 2, 5, 11, 24]]
    assert hooks.points == out.points
    assert all(math.isfinite(p.loss) for p in out.points)
    assert out.points[-1].loss < m.loss_after_prune - 0.1
    assert hooks.progress[-1] == (24 * TOKENS_PER_STEP, 24 * TOKENS_PER_STEP)

    # The artifact is a normal HF model whose held-out loss is the last checkpoint's.
    assert out.artifact is not None
    reloaded = AutoModelForCausalLM.from_pretrained(out.artifact)
    model_dir, corpus = assets
    from transformers import AutoTokenizer

    splits = data.make_splits(
        corpus, AutoTokenizer.from_pretrained(model_dir), SEQ, eval_tokens=8 * SEQ
    )
    loss, _ = eval_loss(reloaded, splits.eval, batch_size=BATCH)
    assert loss == pytest.approx(out.points[-1].loss, abs=1e-4)
    if method == "depth":
        assert reloaded.config.num_hidden_layers < 4
    else:
        # 2:4 zeros survive post-training: at most 2 non-zeros in each group of 4 inputs.
        sparse = [
            w
            for n, w in reloaded.named_parameters()
            if n.endswith("proj.weight") and (w.view(w.shape[0], -1, 4) != 0).sum(-1).max() <= 2
        ]
        assert sparse
    # Only the latest complete state is kept, beside the report of the load's host memory.
    report = tmp_path / "work" / f"{REPORT_PREFIX}0.json"
    states = [p for p in (tmp_path / "work").iterdir() if p != report]
    assert len(states) == 1 and (states[0] / COMPLETE).is_file()
    # the process is not the job's own: its lifetime peak (ru_maxrss) is left as it is
    assert json.loads(report.read_text())["peak_since"] == "process start"


def test_crash_after_a_checkpoint_resumes_there_and_matches_an_uninterrupted_run(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = _spec(assets)
    reference = prune_and_post_train(
        spec, workdir=tmp_path / "ref", artifact_dir=tmp_path / "ref-art", hooks=Recorder()
    )

    work = tmp_path / "work"
    with pytest.raises(CrashError):
        prune_and_post_train(
            spec, workdir=work, artifact_dir=tmp_path / "art", hooks=Recorder(crash_at=3)
        )
    saved = latest_complete_state(work)
    assert saved is not None and saved.name.endswith(f"{5:012d}")
    # A half-written later state (no COMPLETE marker) must be ignored.
    fake = work / f"state-{11:012d}"
    shutil.copytree(saved, fake)
    (fake / COMPLETE).unlink()

    hooks = Recorder()
    # The retry reads the spec back from its JSON (as a rank does): the same spec all the same.
    retry = JobSpec.model_validate_json(spec.model_dump_json())
    out = prune_and_post_train(retry, workdir=work, artifact_dir=tmp_path / "art", hooks=hooks)
    assert hooks.resumed and hooks.resumed[0][0] == 5 * TOKENS_PER_STEP
    assert [p.tokens for p in hooks.resumed[0][1]] == [p.tokens for p in reference.points[:3]]
    assert hooks.measured == [reference.measured]
    # Only the remaining checkpoints were trained and evaluated again.
    assert [p.tokens for p in hooks.points] == [p.tokens for p in reference.points[3:]]
    assert hooks.progress[0][0] > 5 * TOKENS_PER_STEP
    assert out.status == "succeeded"
    for a, b in zip(out.points, reference.points, strict=True):
        assert a.tokens == b.tokens and a.loss == pytest.approx(b.loss, abs=1e-5)
    assert not fake.exists()


def test_cancel_ends_without_an_artifact(assets: tuple[Path, Path], tmp_path: Path) -> None:
    hooks = Recorder(decide_at=2, decision=Decision.CANCEL)
    out = prune_and_post_train(
        _spec(assets), workdir=tmp_path / "w", artifact_dir=tmp_path / "art", hooks=hooks
    )
    assert out.status == "cancelled" and out.artifact is None and out.reason == "cancel by test"
    assert len(out.points) == 2 and not (tmp_path / "art").exists()


def test_stop_saves_the_model_trained_so_far(assets: tuple[Path, Path], tmp_path: Path) -> None:
    hooks = Recorder(decide_at=3, decision=Decision.STOP)
    out = prune_and_post_train(
        _spec(assets), workdir=tmp_path / "w", artifact_dir=tmp_path / "art", hooks=hooks
    )
    assert out.status == "stopped_early" and out.reason == "stop by test"
    assert [p.tokens for p in out.points] == [s * TOKENS_PER_STEP for s in [1, 2, 5]]
    assert out.artifact is not None and (out.artifact / "config.json").is_file()


def test_a_state_from_another_spec_is_not_resumed(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = _spec(assets)
    with pytest.raises(CrashError):
        prune_and_post_train(
            spec, workdir=tmp_path / "w", artifact_dir=tmp_path / "a", hooks=Recorder(crash_at=1)
        )
    with pytest.raises(PipelineError, match="different job spec"):
        prune_and_post_train(
            _spec(assets, rho=0.5),
            workdir=tmp_path / "w",
            artifact_dir=tmp_path / "a",
            hooks=Recorder(),
        )


def _crash_after_first_checkpoint(
    assets: tuple[Path, Path], tmp_path: Path
) -> tuple[JobSpec, Path, Path]:
    """A job killed after its first checkpoint: (spec, workdir, its saved state)."""
    spec = _spec(assets)
    work = tmp_path / "w"
    with pytest.raises(CrashError):
        prune_and_post_train(
            spec, workdir=work, artifact_dir=tmp_path / "a", hooks=Recorder(crash_at=1)
        )
    saved = latest_complete_state(work)
    assert saved is not None
    return spec, work, saved


class _Planted:
    """A pickle that would create a file if unpickled with code execution allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling this creates the marker file


def test_a_pickle_planted_in_the_saved_state_is_refused_without_running(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    import pickle

    spec, work, saved = _crash_after_first_checkpoint(assets, tmp_path)
    marker = tmp_path / "code-ran"
    # The checkpoint's index is a pickle that DCP would read with pickle.load.
    (saved / "dcp" / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(pickle.UnpicklingError):
        prune_and_post_train(spec, workdir=work, artifact_dir=tmp_path / "a", hooks=Recorder())
    assert not marker.exists()


def test_a_state_of_the_pickled_format_is_not_read_and_the_job_starts_over(
    assets: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    spec, work, saved = _crash_after_first_checkpoint(assets, tmp_path)
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    hooks = Recorder()
    out = prune_and_post_train(spec, workdir=work, artifact_dir=tmp_path / "a", hooks=hooks)
    assert hooks.resumed == [] and out.status == "succeeded" and len(out.points) == 5
