"""The wide pass of the study (studies/p2_wide.py): its design, and its SmolLM2 throughput probe
on a tiny stand-in model (the real one is the pass's own run)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from studies import p2_wide as wide
from tests.workers.ml.pipeline_helpers import small_tokenizer, tiny_llama


@pytest.fixture
def one_thread_restored() -> Iterator[None]:
    """The probe sets torch to one thread as the pass's workers run; other tests get theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_configs_keep_the_pass_design() -> None:
    small = wide.FULL["llama"]
    assert wide.FULL["qwen2"].arch == "qwen2" and small.arch == "llama"
    assert len(small.sizes) >= 4
    # One decoder layer is ~1/12 of N0 for every shape (Llama count; Qwen2 adds 2 x hidden).
    n0s = []
    for shape in small.sizes.values():
        h, inter = shape.hidden, shape.intermediate
        kv = h // shape.heads * shape.kv_heads
        layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
        n0 = small.vocab * h + shape.layers * layer + h
        for k, target in ((2, 0.15), (3, 0.25), (4, 0.35)):
            assert abs(k * layer / n0 - target) <= 0.02
        n0s.append(n0)
    assert max(n0s) / min(n0s) >= 8
    assert wide.FULL["smollm2"].family == "smollm2-135m"


@pytest.mark.usefixtures("one_thread_restored")
def test_smollm2_probe_times_the_trainer_and_the_eval(
    tmp_path: Path, made_trainers: list[Any]
) -> None:
    tok = small_tokenizer(vocab=256)
    model_dir = tmp_path / "dense" / wide.SMOLLM2_SIZE
    tiny_llama(len(tok), layers=2).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = replace(wide.QUICK["smollm2"], vocab=len(tok), seq_len=16)
    probe = wide.probe_smollm2(tmp_path, cfg, steps=2)
    assert [t.step for t in made_trainers] == [3]  # one warm-up step, then the two timed ones
    assert probe["train"] > 0 and probe["eval"] > 0
