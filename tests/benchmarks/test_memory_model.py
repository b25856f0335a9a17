"""The memory model (app/core/memory.py) as benchmarks/memory_model.py prints it: parameter counts
against the published totals, the project's capacity rule and the Hugging Face models; the
activation formulas against what autograd saves in a tiny model; the stage model against the
profiler's peak on CPU; the tables of docs/scaling.md."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from app.core.capacity import capacity_from_config
from benchmarks import memory_model as mm
from benchmarks.memory_model import SHAPES, ModelShape, Precision, Setup, estimate
from workers.ml.models import count_parameters

#: Safetensors totals of the hub checkpoints (the model cards round them to `published`).
HUB_TOTALS = {
    "SmolLM2-135M": 134_515_008,
    "Qwen2.5-0.5B": 494_032_768,
    "Llama-3.2-1B": 1_235_814_400,
    "Qwen2.5-1.5B": 1_543_714_304,
    "Qwen2.5-3B": 3_085_938_688,
    "Llama-3.2-3B": 3_212_749_824,
    "Llama-3.1-8B": 8_030_261_248,
}


def _rounded(n: int, published: str) -> bool:
    unit = {"B": 1e9, "M": 1e6}[published[-1]]
    digits = len(published[:-1].split(".")[1]) if "." in published else 0
    return round(n / unit, digits) == float(published[:-1])


def _hf_model(shape: ModelShape, **overrides: object) -> PreTrainedModel:
    cfg = {**shape.hf_config(), "max_position_embeddings": 4096, **overrides}
    cfg.pop("model_type")
    if shape.model_type == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**cfg))
    if shape.model_type == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**cfg))
    return LlamaForCausalLM(LlamaConfig(**cfg))


@pytest.mark.parametrize("name", sorted(HUB_TOTALS))
def test_parameter_counts_match_the_published_totals(name: str) -> None:
    shape = SHAPES[name]
    assert shape.n_params == HUB_TOTALS[name]
    assert _rounded(shape.n_params, shape.published)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_parameter_count_matches_the_capacity_rule_and_the_model(name: str) -> None:
    shape = SHAPES[name]
    capacity = capacity_from_config(shape.hf_config())
    assert capacity is not None and capacity.n0 == shape.n_params
    with torch.device("meta"):
        model = _hf_model(shape)
    assert count_parameters(model) == shape.n_params
    layer = model.model.layers[0]
    assert sum(p.numel() for p in layer.parameters()) == shape.layer_params


# --------------------------------------------------------------------------- activations

TINY = {
    "llama": ModelShape("tiny-llama", 96, 1, 6, 3, 200, 1000, tied=True),
    "qwen2": ModelShape("tiny-qwen2", 128, 1, 8, 2, 352, 1000, tied=True, qkv_bias=True,
                        model_type="qwen2"),
    "qwen3": ModelShape("tiny-qwen3", 128, 1, 8, 2, 352, 1000, tied=True, head_dim_=32,
                        model_type="qwen3", qk_norm=True),
}  # fmt: skip


def _saved_bytes(model: PreTrainedModel, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes of the tensors autograd saves in one forward, parameters and their casts aside."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    weight_shapes |= {s[::-1] for s in weight_shapes}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and tuple(t.shape) not in weight_shapes:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids, labels=ids, use_cache=False)
        else:
            model(input_ids=ids, labels=ids, use_cache=False)
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("mode", ["bf16", "autocast", "fp32"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_saved_activations_match_the_formulas(arch: str, mode: str, attention: str) -> None:
    """bf16: a model cast to bf16 (FSDP's bf16 parameters); autocast: fp32 weights under
    autocast (the job's recipe); fp32: fp32 throughout (a CPU job)."""
    shape = TINY[arch]
    autocast, compute_bytes = mode == "autocast", 4 if mode == "fp32" else 2
    b, s = 3, 40
    ids = torch.randint(0, shape.vocab, (b, s), generator=torch.Generator().manual_seed(0))
    saved = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        model = _hf_model(replace(shape, layers=layers), attn_implementation=attention)
        if mode == "bf16":
            torch.nn.Module.to(model, torch.bfloat16)
        saved[layers] = _saved_bytes(model.train(), ids, autocast)
    per_layer = mm.layer_activation_bytes(
        shape,
        autocast=autocast,
        seq_len=s,
        attention=attention,  # type: ignore[arg-type]
        compute_bytes=compute_bytes,
    )
    assert saved[2] - saved[1] == per_layer * b * s
    outside = saved[1] - per_layer * b * s
    expected = mm.head_activation_bytes(shape, autocast=autocast, compute_bytes=compute_bytes)
    expected *= b * s
    expected += mm.rope_bytes(shape, autocast=autocast, seq_len=s, compute_bytes=compute_bytes)
    assert 0 <= outside - expected <= 16  # the loss scalar


# --------------------------------------------------------------------------- peak on CPU


def _measured_peak(shape: ModelShape, setup: Setup, *, autocast: bool, tmp_path: Path) -> int:
    """Bytes above the parameters at the peak of one forward + backward (profiler timeline)."""
    torch.manual_seed(0)
    model = _hf_model(shape).train()
    if not autocast:
        torch.nn.Module.to(model, torch.bfloat16)
    if setup.checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    ids = torch.randint(0, shape.vocab, (setup.micro_batch, setup.seq_len))

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.enable_grad()
        with ctx:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()

    step()
    model.zero_grad(set_to_none=True)
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        profile_memory=True,
        record_shapes=True,
        with_stack=True,
    )
    with profiler:
        step()
    out = tmp_path / "timeline.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated for CUDA in favour of memory snapshots
        profiler.export_memory_timeline(str(out), device="cpu")
    _times, sizes = json.loads(out.read_text())
    totals = [int(sum(row)) for row in sizes]
    return max(totals) - totals[0]


@pytest.mark.parametrize(
    ("autocast", "vocab", "checkpointing"),
    [(False, 8000, False), (False, 64, True), (True, 64, False), (True, 8000, True)],
    ids=["bf16-logits-full", "bf16-layers-ckpt", "autocast-layers-full", "autocast-logits-ckpt"],
)
def test_peak_of_a_step_matches_the_stage_model(
    autocast: bool, vocab: int, checkpointing: bool, tmp_path: Path
) -> None:
    """A large vocabulary puts the peak at the loss, a small one inside the layers."""
    if not hasattr(torch.profiler.profile, "export_memory_timeline"):
        pytest.skip("this torch has no profiler memory timeline")
    shape = ModelShape("tiny", 128, 4, 8, 2, 352, vocab, tied=True)
    setup = Setup(1, 64, 2, checkpointing, fsdp=not autocast)
    precision = Precision.of(shape, setup) if autocast else Precision.bf16_model(shape)
    predicted = mm.dynamic_peak(shape, setup, precision)
    measured = _measured_peak(shape, setup, autocast=autocast, tmp_path=tmp_path)
    # Exact up to the CPU checkpoint's RNG states where the loss dominates; a bound (the layer
    # workspace) where a layer's backward does.
    assert 0.99 * measured <= predicted <= 1.06 * measured, (predicted, measured)


# --------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("name", ["Llama-3.2-1B", "Llama-3.1-8B"])
def test_sharding_divides_the_states_not_the_activations(name: str) -> None:
    shape = SHAPES[name]
    one, eight = estimate(shape, Setup(1)), estimate(shape, Setup(8))
    for field in ("parameters", "gradients", "optimizer"):
        assert getattr(eight, field) == pytest.approx(getattr(one, field) / 8, abs=1)
    assert eight.activations == one.activations and eight.buffers == one.buffers
    assert one.parameters + one.gradients + one.optimizer == pytest.approx(16 * shape.n_params)
    assert eight.total < one.total


@pytest.mark.parametrize("fsdp", [True, False])
def test_checkpointing_keeps_one_input_per_layer(fsdp: bool) -> None:
    shape = SHAPES["Llama-3.2-3B"]
    full = estimate(shape, Setup(1, 4096, 4, False, fsdp=fsdp))
    ckpt = estimate(shape, Setup(1, 4096, 4, True, fsdp=fsdp))
    assert ckpt.activations < full.activations
    assert ckpt.total < full.total
    assert ckpt.logits == full.logits  # the head is not checkpointed
    saved = full.activations - ckpt.activations
    tokens = 4 * 4096
    per_layer = mm.layer_activation_bytes(shape, autocast=not fsdp, seq_len=4096)
    kept = mm.checkpoint_input_bytes(shape, autocast=not fsdp)
    copies = 0 if fsdp else shape.layers * 2 * shape.layer_linear_params
    assert saved == shape.layers * (per_layer - kept) * tokens + copies


def test_logits_dominate_large_vocabularies() -> None:
    est = estimate(SHAPES["Llama-3.2-1B"], Setup(1, 2048, 1, True))
    assert est.logits == 12 * 128256 * 2048
    assert est.logits > 0.9 * est.activations


def test_gradient_accumulation_keeps_the_gradients_alongside_the_activations() -> None:
    shape = SHAPES["Llama-3.2-1B"]
    one = estimate(shape, Setup(2, 4096, 4, False))
    accum = estimate(shape, Setup(2, 4096, 4, False, grad_accum=4))
    assert accum.total >= one.total
    assert accum.dynamic >= one.activations + one.gradients


def test_fewest_devices_is_the_first_count_that_fits() -> None:
    device = mm.DEVICES[0]
    found = []
    for name in ("Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B"):
        shape = SHAPES[name]
        n = mm.fewest_devices(shape, device, seq_len=2048, micro_batch=1, checkpointing=True)
        assert n is not None
        assert estimate(shape, mm.job_setup(n, 2048, 1, True)).fits(device.bytes)
        if n > 1:
            assert not estimate(shape, mm.job_setup(n // 2, 2048, 1, True)).fits(device.bytes)
        found.append(n)
    assert found == sorted(found)


@pytest.mark.parametrize(
    "kwargs",
    [{"devices": 0}, {"micro_batch": 0}, {"fsdp": False, "devices": 2}, {"attention": "flash"}],
)
def test_setup_refuses_what_cannot_run(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Setup(**kwargs)  # type: ignore[arg-type]


def test_docs_hold_the_current_tables() -> None:
    assert mm.embedded(mm.DOCS) == mm.markdown(), (
        "docs/scaling.md is stale: python benchmarks/memory_model.py --update-docs"
    )


def test_update_docs_rewrites_only_the_generated_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "scaling.md"
    doc.write_text(f"# before\n{mm.BEGIN}\nold\n{mm.END}\nafter\n")
    assert mm.main(["--model", "SmolLM2-135M", "--update-docs", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(f"# before\n{mm.BEGIN}\n") and text.endswith(f"{mm.END}\nafter\n")
    assert "#### SmolLM2-135M" in text and "old" not in text
    assert mm.main(["--model", "SmolLM2-135M", "--update-docs", str(doc)]) == 0
    assert "already up to date" in capsys.readouterr().out
