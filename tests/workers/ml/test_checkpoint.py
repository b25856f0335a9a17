"""The training state: one DCP format, written atomically, read without running a pickle."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from tests.workers.ml.pipeline_helpers import MEASURED, tiny_llama
from workers.ml import checkpoint
from workers.ml.checkpoint import COMPLETE, Collective, StateRecord
from workers.ml.job import CheckpointPoint

ALONE = Collective(is_main=True, run_id="test", no_dist=True)


def _record(step: int, masks: list[str]) -> StateRecord:
    return StateRecord(
        format=checkpoint.STATE_FORMAT,
        resume_key={"rho": 0.2},
        step=step,
        tokens_done=step * 64,
        stream={"n_blocks": 10, "batch_size": 2, "seed": 0, "epoch": 1, "cursor": 4},
        rng_python=list(random.getstate()),
        mask_names=masks,
        measured=MEASURED,
        points=[CheckpointPoint(tokens=64, loss=3.4, below_l0=False, note=None)],
    )


def _trained() -> tuple[torch.nn.Module, torch.optim.AdamW, dict[str, torch.Tensor]]:
    model = tiny_llama(64, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    name = "model.layers.0.mlp.up_proj.weight"
    mask = torch.rand_like(dict(model.named_parameters())[name]) > 0.5
    return model, optimizer, {name: mask}


def _save(workdir: Path, step: int) -> tuple[Path, torch.nn.Module, torch.optim.AdamW, dict]:
    model, optimizer, masks = _trained()
    torch.manual_seed(step)
    state = checkpoint.save_state(
        workdir,
        tensors=checkpoint.tensor_state(model, optimizer, masks, torch.device("cpu")),
        record=_record(step, sorted(masks)),
        write_model_files=model.config.save_pretrained,
        writers=ALONE,
    )
    return state, model, optimizer, masks


def test_weights_moments_masks_and_rng_come_back_equal(tmp_path: Path) -> None:
    state, model, optimizer, masks = _save(tmp_path, 3)
    rng = torch.manual_seed(3).get_state()
    assert (state / COMPLETE).is_file() and checkpoint.latest_complete_state(tmp_path) == state

    other = tiny_llama(64, seed=7)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=5e-2)
    template = checkpoint.tensor_state(
        other,
        other_optimizer,
        {n: torch.zeros_like(m) for n, m in masks.items()},
        torch.device("cpu"),
    )
    loaded = checkpoint.load_tensors(state, template, no_dist=True)
    checkpoint.apply_tensors(other, other_optimizer, loaded)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert other_optimizer.state_dict()["param_groups"][0]["lr"] == 1e-3
    for a, b in zip(
        optimizer.state_dict()["state"].values(),
        other_optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and float(a["step"]) == float(
            b["step"]
        )
    assert all(torch.equal(loaded["masks"][n], m) for n, m in masks.items())
    assert torch.equal(loaded["rng"]["cpu"], rng)
    record = checkpoint.read_record(state)
    assert record is not None and record.measured == MEASURED and record.step == 3


def test_only_the_newest_complete_state_is_kept_and_half_written_ones_are_ignored(
    tmp_path: Path,
) -> None:
    first, *_ = _save(tmp_path, 1)
    second, *_ = _save(tmp_path, 2)
    assert not first.exists() and [p.name for p in tmp_path.iterdir()] == [second.name]
    (second / COMPLETE).unlink()
    assert checkpoint.latest_complete_state(tmp_path) is None


def test_a_state_of_another_format_is_not_read(tmp_path: Path) -> None:
    state, *_ = _save(tmp_path, 1)
    meta = (
        (state / "meta.json")
        .read_text()
        .replace(f'"format": {checkpoint.STATE_FORMAT}', '"format": 2')
    )
    (state / "meta.json").write_text(meta)
    assert checkpoint.read_record(state) is None
    assert checkpoint.latest_complete_state(tmp_path) is None


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_planted_index_is_refused_before_its_code_runs(tmp_path: Path) -> None:
    state, model, optimizer, masks = _save(tmp_path / "w", 1)
    marker = tmp_path / "code-ran"
    (state / "dcp" / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    template = checkpoint.tensor_state(model, optimizer, masks, torch.device("cpu"))
    with pytest.raises(pickle.UnpicklingError, match="may not build"):
        checkpoint.load_tensors(state, template, no_dist=True)
    assert not marker.exists()
