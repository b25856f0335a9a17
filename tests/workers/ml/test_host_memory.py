"""A process's host memory from /proc: the peak of a phase, resetting the mark, the load report."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch
from torch import nn

from workers.ml import host_memory

linux = pytest.mark.skipif(
    not host_memory.CLEAR_REFS.exists(), reason="needs Linux's /proc/self/clear_refs"
)
MiB = 2**20


@linux
def test_a_window_sees_the_peak_of_its_block_and_not_an_earlier_one() -> None:
    earlier = bytearray(96 * MiB)  # touched: resident, then freed before the window
    del earlier
    with host_memory.watch(reset=True) as quiet:
        pass
    with host_memory.watch(reset=True) as busy:
        block = bytearray(64 * MiB)
        del block
    assert quiet.peak_since == busy.peak_since == "phase"
    assert quiet.growth_bytes is not None and quiet.growth_bytes < 16 * MiB
    assert busy.growth_bytes is not None and busy.growth_bytes >= 60 * MiB
    assert busy.rss_after_bytes is not None and busy.peak_bytes is not None
    assert busy.rss_after_bytes < busy.peak_bytes


def test_without_a_resettable_mark_the_peak_is_the_process_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(host_memory, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    assert host_memory.reset_peak() is False
    with host_memory.watch(reset=True) as window:
        pass
    assert window.peak_since == "process start"


@linux
def test_without_a_reset_the_process_keeps_its_lifetime_peak() -> None:
    """A worker's child or a benchmark reads the process's peak (``ru_maxrss``) afterwards."""
    earlier = bytearray(96 * MiB)
    del earlier
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with host_memory.watch(reset=False) as window:
        pass
    assert window.peak_since == "process start"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= lifetime
    assert window.growth_bytes is not None and window.growth_bytes >= 90 * MiB


def test_without_proc_the_readings_are_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(host_memory, "STATUS", tmp_path / "status")
    assert host_memory.resident_bytes() is None and host_memory.peak_bytes() is None
    with host_memory.watch(reset=True) as window:
        pass
    assert window.growth_bytes is None


def test_a_tied_weight_counts_once() -> None:
    shared = torch.zeros(10, 4)
    whole, local = host_memory.tensor_bytes([shared, shared, torch.zeros(3, dtype=torch.bool)])
    assert whole == local == 10 * 4 * 4 + 3


def test_the_load_report_counts_weights_moments_and_masks(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4, bias=False))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    masks = {"1.weight": torch.ones(4, 16, dtype=torch.bool)}
    window = host_memory.Window(100, "phase", peak_bytes=160, rss_after_bytes=120, seconds=0.5)
    path = host_memory.write_load_report(
        tmp_path, window, rank=1, world=2, step=3, model=model, optimizer=optimizer, masks=masks
    )
    assert path == tmp_path / "host-memory-rank1.json"
    report = json.loads(path.read_text())
    weights = 4 * (8 * 16 + 16 + 16 * 4)
    assert report["model_fp32_bytes"] == weights
    # AdamW's exp_avg and exp_avg_sq per parameter; its 0-d step counters are not counted
    assert report["loaded_whole_bytes"] == report["loaded_shard_bytes"] == 3 * weights + 64
    assert (report["rank"], report["world"], report["step"], report["phase"]) == (1, 2, 3, "load")
    assert report["growth_bytes"] == 60 and report["peak_since"] == "phase"
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary left beside it
