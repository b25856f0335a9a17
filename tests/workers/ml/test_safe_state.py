"""Training state saved without pickle: it comes back whole; a planted pickle never runs."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from workers.ml import safe_state


def test_an_optimizer_and_rng_state_come_back_equal(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {
        "step": 7,
        "optimizer": optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_python": random.getstate(),
    }
    safe_state.save(state, tmp_path, "trainer")
    back = safe_state.load(tmp_path, "trainer")
    assert back["step"] == 7
    assert back["rng_python"] == state["rng_python"]  # a tuple of tuples, as random wants it
    random.setstate(back["rng_python"])
    assert torch.equal(back["rng_cpu"], state["rng_cpu"])
    groups = back["optimizer"]["param_groups"]
    assert groups[0]["betas"] == (0.9, 0.95) and groups[0]["params"] == [0, 1]
    for key, per_param in state["optimizer"]["state"].items():
        assert isinstance(key, int)
        for name, tensor in per_param.items():
            assert torch.equal(back["optimizer"]["state"][key][name], tensor)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back["optimizer"])


def test_objects_that_are_not_state_are_refused_at_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot save a"):
        safe_state.save({"x": object()}, tmp_path, "trainer")


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling this creates the marker file


def test_a_planted_pickle_is_refused_before_its_code_runs(tmp_path: Path) -> None:
    safe_state.save({"step": 1}, tmp_path, "trainer")
    marker = tmp_path / "code-ran"
    torch.save({"0": _Planted(marker)}, tmp_path / "trainer.pt")
    with pytest.raises(pickle.UnpicklingError):
        safe_state.load(tmp_path, "trainer")
    assert not marker.exists()
