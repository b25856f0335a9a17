"""Model utilities: structure discovery, counting, tiny models, atomic save and reload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from workers.ml.models import (
    UnsupportedModelError,
    build_tiny_model,
    count_nonzero,
    count_parameters,
    decoder_layers,
    layer_parts,
    load_causal_lm,
    parameter_breakdown,
    prunable_linears,
    save_pretrained,
)


class _Wrapper(nn.Module):
    """Holds a causal LM under an unusual attribute, next to a smaller unrelated ModuleList."""

    def __init__(self, inner: PreTrainedModel) -> None:
        super().__init__()
        self.extras = nn.ModuleList([nn.Linear(4, 4)])
        self.backbone_holder = nn.ModuleDict({"lm": inner})


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_model_is_small_and_has_the_requested_shape(arch: str) -> None:
    model = build_tiny_model(arch, num_layers=3)  # type: ignore[arg-type]
    assert count_parameters(model) < 1_000_000
    assert len(decoder_layers(model)) == 3
    parts = layer_parts(decoder_layers(model)[0])
    assert parts.q.out_features == 64 and parts.k.out_features == 32
    assert parts.gate.out_features == 128 and parts.down.in_features == 128
    assert parts.input_norm is not None and parts.post_norm is not None


def test_same_seed_builds_identical_weights() -> None:
    a = build_tiny_model("llama", seed=3)
    b = build_tiny_model("llama", seed=3)
    c = build_tiny_model("llama", seed=4)
    wa, wb, wc = (dict(m.named_parameters())["model.embed_tokens.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_decoder_layers_found_inside_a_wrapper_without_known_paths(
    tiny_llama: PreTrainedModel,
) -> None:
    wrapped = _Wrapper(tiny_llama)
    layers = decoder_layers(wrapped)
    assert layers is decoder_layers(tiny_llama)
    assert len(layers) == 4


def test_model_without_decoder_blocks_is_rejected() -> None:
    with pytest.raises(UnsupportedModelError, match="no ModuleList of decoder blocks"):
        decoder_layers(nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4)])))


def test_layer_without_gated_mlp_names_what_is_missing() -> None:
    block = nn.Module()
    block.attn = nn.Module()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        setattr(block.attn, name, nn.Linear(4, 4))
    block.mlp = nn.Module()
    block.mlp.fc1 = nn.Linear(4, 8)
    with pytest.raises(UnsupportedModelError, match="gate"):
        layer_parts(block)


def test_tied_head_is_counted_once() -> None:
    untied = build_tiny_model("llama")
    tied = build_tiny_model("llama", tie_word_embeddings=True)
    emb = 256 * 64
    assert count_parameters(untied) - count_parameters(tied) == emb
    head = tied.get_output_embeddings()  # type: ignore[no-untyped-call]
    assert head.weight is tied.get_input_embeddings().weight
    assert sum(p.numel() for p in tied.parameters()) == count_parameters(tied)
    breakdown = parameter_breakdown(tied)
    assert breakdown["head"] == 0 and breakdown["embeddings"] == emb


def test_parameter_breakdown_adds_up(tiny_qwen2: PreTrainedModel) -> None:
    b = parameter_breakdown(tiny_qwen2)
    layers = sum(b[f"layers.{i}"] for i in range(4))
    assert b["total"] == b["embeddings"] + b["head"] + layers + b["other"]
    assert b["layers.0"] == b["layers.0.attention"] + b["layers.0.mlp"] + b["layers.0.norms"]
    # q/k/v carry biases in Qwen2: 64*64+64 + 2*(64*32+32) + 64*64
    assert b["layers.0.attention"] == 4160 + 2 * 2080 + 4096
    assert b["other"] == 64  # final norm


def test_count_nonzero_sees_zeroed_weights(tiny_llama: PreTrainedModel) -> None:
    before = count_nonzero(tiny_llama)
    with torch.no_grad():
        layer_parts(decoder_layers(tiny_llama)[0]).q.weight[:, :10] = 0.0
    assert before - count_nonzero(tiny_llama) == 64 * 10


def test_prunable_linears_excludes_embeddings_head_and_norms(tiny_llama: PreTrainedModel) -> None:
    names = list(prunable_linears(tiny_llama))
    assert len(names) == 4 * 7
    assert all(".layers." in n for n in names)
    assert not any("lm_head" in n or "embed" in n or "norm" in n for n in names)


def test_save_is_reloadable_and_replaces_atomically(
    tmp_path: Path,
    tiny_qwen2: PreTrainedModel,
    eval_batch: torch.Tensor,
    lm_loss: Callable[[PreTrainedModel, torch.Tensor], float],
) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier save")
    assert save_pretrained(tiny_qwen2, None, out) == out
    assert (out / "model.safetensors").is_file()
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left behind
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert lm_loss(reloaded, eval_batch) == pytest.approx(lm_loss(tiny_qwen2, eval_batch), abs=1e-6)


def test_load_refuses_missing_directory_unless_hub_allowed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_causal_lm(tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        load_causal_lm("some-org/some-model")


def _word_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i + 4 for i in range(252)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def test_load_reads_a_saved_directory_with_dtype_and_tokenizer(
    tmp_path: Path, tiny_llama: PreTrainedModel
) -> None:
    out = save_pretrained(tiny_llama, _word_tokenizer(), tmp_path / "m")
    model, tokenizer = load_causal_lm(out, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    assert tokenizer("w1 w2")["input_ids"] == [5, 6]
    assert count_parameters(model) == count_parameters(tiny_llama)
