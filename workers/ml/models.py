"""Load, save, build and inspect Hugging Face causal language models.

Everything here finds the parts of a model by structure (which modules hold which linear
children), never by hard-coded attribute paths, so that one code path serves every decoder-only
architecture with separate q/k/v/o projections and a gated MLP.

Supported architectures: ``LlamaForCausalLM`` and ``Qwen2ForCausalLM`` are tested with every
pruning method; ``MistralForCausalLM`` and ``Qwen3ForCausalLM`` share the shape and are tested
with every method too (prune, save, reload, generate), on tiny models built from a config in
``tests/workers/ml``. Qwen3's extra q/k norms act per head on ``head_dim`` entries, so removing
whole heads leaves them valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from app.core import atomic

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "LayerParts",
    "UnsupportedModelError",
    "build_tiny_model",
    "count_nonzero",
    "count_parameters",
    "decoder_layers",
    "decoder_layers_owner",
    "layer_parts",
    "load_causal_lm",
    "load_tokenizer",
    "materialize",
    "model_from_config",
    "parameter_breakdown",
    "parameters_on_meta",
    "prunable_linears",
    "save_model_files",
    "save_pretrained",
]

#: Architectures exercised by the test suite (tiny models from a config).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
    "Qwen3ForCausalLM",
)

# Names of the linear children that identify each projection. Llama, Qwen2, Qwen3 and Mistral use
# the *_proj names; the short names cover Llama-style ports that keep Meta's original naming.
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "wq"),
    "k": ("k_proj", "wk"),
    "v": ("v_proj", "wv"),
    "o": ("o_proj", "wo"),
    "gate": ("gate_proj", "w1"),
    "up": ("up_proj", "w3"),
    "down": ("down_proj", "w2"),
}
_ATTN_ROLES = ("q", "k", "v", "o")
_MLP_ROLES = ("gate", "up", "down")
_INPUT_NORM_NAMES = ("input_layernorm", "attention_norm", "ln_1")
_POST_NORM_NAMES = ("post_attention_layernorm", "ffn_norm", "ln_2")


class UnsupportedModelError(ValueError):
    """The model does not have the decoder shape this package knows how to prune."""


@dataclass
class LayerParts:
    """The modules of one decoder layer, found by structure.

    ``q``/``k``/``v``/``o`` are the attention projections (q/k/v read the same input), ``gate``/
    ``up``/``down`` the gated MLP (gate/up read the same input). Norms are ``None`` when a layer
    has no recognisable pre-attention / pre-MLP norm.
    """

    attn: nn.Module
    mlp: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    input_norm: nn.Module | None
    post_norm: nn.Module | None

    def linears(self) -> dict[str, nn.Linear]:
        """The seven projections by role, in forward order."""
        return {
            "q": self.q,
            "k": self.k,
            "v": self.v,
            "o": self.o,
            "gate": self.gate,
            "up": self.up,
            "down": self.down,
        }


def _linear_children(module: nn.Module) -> dict[str, nn.Linear]:
    """The linear children of ``module`` by name; a LoRA wrapper (peft's ``lora.Linear``, which
    keeps the name and holds the layer as ``base_layer``) counts as the layer it wraps."""
    found: dict[str, nn.Linear] = {}
    for name, child in module.named_children():
        base = getattr(child, "base_layer", None)
        if isinstance(child, nn.Linear):
            found[name] = child
        elif isinstance(base, nn.Linear):
            found[name] = base
    return found


def _match_roles(module: nn.Module, roles: tuple[str, ...]) -> dict[str, nn.Linear] | None:
    """Map each role to a direct linear child of ``module``, or None if one is missing."""
    children = _linear_children(module)
    found: dict[str, nn.Linear] = {}
    for role in roles:
        for name in _ROLE_NAMES[role]:
            if name in children:
                found[role] = children[name]
                break
        else:
            return None
    return found


def _find_holder(
    layer: nn.Module, roles: tuple[str, ...]
) -> tuple[nn.Module, dict[str, nn.Linear]]:
    for module in layer.modules():
        found = _match_roles(module, roles)
        if found is not None:
            return module, found
    raise UnsupportedModelError(
        f"{type(layer).__name__}: no submodule with linear children for roles {roles} "
        f"(accepted names: {[_ROLE_NAMES[r] for r in roles]}); fused projections are not supported"
    )


def _is_block(module: nn.Module) -> bool:
    try:
        _find_holder(module, _ATTN_ROLES)
        _find_holder(module, _MLP_ROLES)
    except UnsupportedModelError:
        return False
    return True


def decoder_layers_owner(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """Find the decoder blocks: ``(parent module, attribute name, the ModuleList)``.

    The blocks are the largest ``nn.ModuleList`` whose every element contains an attention module
    (q/k/v/o linear children) and a gated MLP (gate/up/down). The parent and name let structural
    pruning replace the list.
    """
    best: tuple[nn.Module, str, nn.ModuleList] | None = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            if best is not None and len(child) <= len(best[2]):
                continue
            if all(_is_block(block) for block in child):
                best = (parent, name, child)
    if best is None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no ModuleList of decoder blocks with attention (q/k/v/o) "
            "and gated MLP (gate/up/down) linear layers"
        )
    return best


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model``, found by structure (see ``decoder_layers_owner``)."""
    return decoder_layers_owner(model)[2]


def _named_norm(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    children = dict(layer.named_children())
    for name in names:
        if name in children:
            return children[name]
    return None


def layer_parts(layer: nn.Module) -> LayerParts:
    """The attention, MLP, their seven projections and the two norms of one decoder layer.

    Raises ``UnsupportedModelError`` (a ``ValueError``) naming what is missing when the layer has
    no separate q/k/v/o projections or no gated MLP.
    """
    attn, a = _find_holder(layer, _ATTN_ROLES)
    mlp, m = _find_holder(layer, _MLP_ROLES)
    if attn is mlp:
        raise UnsupportedModelError(f"{type(layer).__name__}: attention and MLP are one module")
    return LayerParts(
        attn=attn,
        mlp=mlp,
        q=a["q"],
        k=a["k"],
        v=a["v"],
        o=a["o"],
        gate=m["gate"],
        up=m["up"],
        down=m["down"],
        input_norm=_named_norm(layer, _INPUT_NORM_NAMES),
        post_norm=_named_norm(layer, _POST_NORM_NAMES),
    )


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every attention/MLP projection of every decoder layer, by full parameter-owner name.

    Embeddings, the LM head and norms are never included: weight pruning touches only these.
    """
    module_names = {id(module): name for name, module in model.named_modules()}
    out: dict[str, nn.Linear] = {}
    for layer in decoder_layers(model):
        for linear in layer_parts(layer).linears().values():
            out[module_names[id(linear)]] = linear
    return out


def _unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters with shared storage (tied embeddings/head) listed once."""
    seen: set[tuple[int, int]] = set()
    unique: list[torch.Tensor] = []
    for _name, param in module.named_parameters(remove_duplicate=False):
        # data_ptr identifies the storage; meta tensors all report 0, so fall back to the object id
        key = (param.data_ptr(), param.numel()) if param.data_ptr() != 0 else (id(param), -1)
        if key in seen:
            continue
        seen.add(key)
        unique.append(param)
    return unique


def count_parameters(model: nn.Module) -> int:
    """All parameters, embeddings and head included, a tied (shared) tensor counted once.

    This is N0 of the P² law (docs/law.md §1) when called on the dense model.
    """
    return sum(p.numel() for p in _unique_tensors(model))


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameter entries, shared tensors counted once."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(p).item()) for p in _unique_tensors(model))


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter counts per part, shared tensors counted once.

    Keys: ``total``; ``embeddings`` (input embeddings); ``head`` (0 when tied to the embeddings);
    ``layers.{i}`` per decoder layer with ``layers.{i}.attention``, ``layers.{i}.mlp`` and
    ``layers.{i}.norms`` inside it; ``other`` (final norm and anything else). The top-level parts
    add up: ``total = embeddings + head + sum(layers.{i}) + other``.
    """
    total = count_parameters(model)
    counted: set[tuple[int, int]] = set()

    def count(module: nn.Module | None) -> int:
        if module is None:
            return 0
        n = 0
        for p in _unique_tensors(module):
            key = (p.data_ptr(), p.numel())
            if key not in counted:
                counted.add(key)
                n += p.numel()
        return n

    out: dict[str, int] = {"total": total}
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    out["embeddings"] = count(get_in() if callable(get_in) else None)
    out["head"] = count(get_out() if callable(get_out) else None)
    layers_sum = 0
    for i, layer in enumerate(decoder_layers(model)):
        parts = layer_parts(layer)
        attn = count(parts.attn)
        mlp = count(parts.mlp)
        rest = count(layer)
        out[f"layers.{i}"] = attn + mlp + rest
        out[f"layers.{i}.attention"] = attn
        out[f"layers.{i}.mlp"] = mlp
        out[f"layers.{i}.norms"] = rest
        layers_sum += attn + mlp + rest
    out["other"] = total - out["embeddings"] - out["head"] - layers_sum
    return out


def load_causal_lm(
    path_or_id: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_hub: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local HF directory (or a hub id if allowed).

    Local directories are read with ``local_files_only`` so nothing touches the network. A string
    that is not an existing directory is treated as a hub id only with ``allow_hub=True``;
    otherwise ``FileNotFoundError``. Use bf16 on GPU and fp32 on CPU.
    """
    path = Path(path_or_id)
    local = path.is_dir()
    if not local and not allow_hub:
        raise FileNotFoundError(f"model directory not found: {path_or_id}")
    source = str(path) if local else str(path_or_id)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, local_files_only=local
    )
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        source, local_files_only=local
    )
    nn.Module.to(model, torch.device(device))
    nn.Module.eval(model)
    return model, tokenizer


def model_from_config(
    config: Path | PretrainedConfig, *, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A model of the architecture of ``config`` (or of ``config/config.json``), its weights not
    yet loaded (a saved training state, or a gathered state dict, fills them in)."""
    if not isinstance(config, PretrainedConfig):
        config = AutoConfig.from_pretrained(config, local_files_only=True)
    model: PreTrainedModel = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        config, dtype=dtype
    )
    return model


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Models built inside get their parameters on the meta device (no memory, no values) and
    keep their buffers real: the rotary tables and other non-persistent buffers are computed in
    the constructors and saved nowhere, so they must be made here.

    Each parameter is created as usual and moved to meta at registration (one layer's weights
    exist at a time); a parameter that is already meta is registered as it is, so tied weights
    (``lm_head.weight is embed_tokens.weight``) stay one parameter.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def materialize(model: nn.Module, device: torch.device) -> None:
    """Give a model built by :func:`parameters_on_meta` (sharded or not) storage on ``device``;
    the values come from a loaded state. Buffers keep their values and tied weights stay tied
    (``to_empty`` replaces every tensor, and on an unsharded model the two names of a tied
    weight would each get their own)."""
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    tied: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    model.to_empty(device=device)
    for name, buf in model.named_buffers():
        buf.copy_(buffers[name])
    for names in tied.values():
        first = model.get_parameter(names[0])
        for other in names[1:]:
            owner, _, attr = other.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, first)


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory``."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        directory, local_files_only=True
    )
    return tokenizer


def save_model_files(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> None:
    """The model's configuration and the tokenizer, without weights, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def save_pretrained(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: Path,
) -> Path:
    """Save model (safetensors) and tokenizer to ``out_dir`` atomically; return ``out_dir``.

    Everything is written into a temporary sibling directory, fsynced, then renamed into place,
    so a crash leaves either the previous directory or the complete new one, never a partial
    save. An existing ``out_dir`` is replaced. The result reloads with ``from_pretrained``.
    """
    with atomic.building_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def build_tiny_model(
    arch: Literal["llama", "qwen2", "mistral", "qwen3"],
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    **overrides: Any,
) -> PreTrainedModel:
    """A small randomly initialised causal LM built from a config (no download).

    Defaults give about 0.18M parameters. ``head_dim`` is set explicitly
    (``hidden_size // num_heads``) so width pruning can change the head count without changing
    it. Extra keyword arguments override config fields.
    """
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "head_dim": hidden_size // num_heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    common.update(overrides)
    config: PretrainedConfig
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "mistral":
        common.setdefault("sliding_window", None)
        config = MistralConfig(**common)
    elif arch == "qwen3":
        config = Qwen3Config(**common)
    else:
        raise ValueError(
            f"unknown tiny architecture {arch!r}; expected llama, qwen2, mistral or qwen3"
        )
    torch.manual_seed(seed)
    model: PreTrainedModel = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    nn.Module.eval(model)
    return model
