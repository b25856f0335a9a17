"""What pruning can reach on a model: the one 2:4 reach rule, and a model's counts from its config.

2:4 sparsity zeroes 2 of every 4 consecutive inputs of a projection, so each sparsified projection
loses exactly half its weights. Eligible are the attention and MLP projections of the decoder
layers whose input width is a multiple of 4; embeddings, norms and the head never are. The largest
ρ 2:4 can reach is therefore (half of the eligible projections' weights) ÷ N0, and a target above
it is refused with one message that names the maximum (docs/law.md §1).

Both sides use the functions below: the API, at submission and without torch, from the model's
``config.json`` (:func:`capacity_from_config`); the worker, from the loaded model's projections
(``workers.ml.prune.semistructured``). Pure Python, no imports from the project, so both may
depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: Whatever the model, 2:4 zeroes at most half of a weight, so ρ stays below one half. The bound
#: used at submission when the config is not one :func:`capacity_from_config` can read.
UPPER_BOUND_2OF4 = 0.5

#: Families whose decoder layer is q/k/v/o attention + gate/up/down MLP + two RMSNorms.
_LLAMA_LIKE = {"llama", "qwen2", "mistral", "qwen3"}


class OutOfReachError(ValueError):
    """A pruning target above what the method can reach on this model; the message names it."""


def eligible_2of4(in_features: int) -> bool:
    """Whether a projection with this input width can carry the 2:4 pattern."""
    return in_features > 0 and in_features % 4 == 0


def zeroable_2of4(shapes: Iterable[tuple[int, int]]) -> int:
    """Weights 2:4 zeroes when every eligible projection of ``(out, in)`` shapes is sparsified."""
    return sum(out * inp // 2 for out, inp in shapes if eligible_2of4(inp))


def check_2of4_reach(rho: float, max_rho: float) -> None:
    """Raise :class:`OutOfReachError` naming ``max_rho`` when ``rho`` lies above it."""
    if rho > max_rho:
        raise OutOfReachError(
            f"2:4 sparsity can zero at most rho={max_rho:.4f} of this model's parameters (half "
            f"of every attention and MLP projection; embeddings, norms and the head are never "
            f"pruned); requested rho={rho:.4f}: ask for rho <= {max_rho:.4f}"
        )


@dataclass(frozen=True)
class Capacity:
    """A model's parameter count and the weights 2:4 sparsity can zero."""

    n0: int
    zeroable_2of4: int

    @property
    def max_rho_2of4(self) -> float:
        """The largest ρ a 2:4 pattern on every eligible projection reaches."""
        return self.zeroable_2of4 / self.n0


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise KeyError(key)
    return int(value)


def capacity_from_config(config: Mapping[str, Any]) -> Capacity | None:
    """The model's N0 and 2:4-zeroable weights from its HF config, or None when unknown.

    Counted the way ``workers.ml.models.count_parameters`` counts the loaded model (a tied head
    once); a test compares the two on every family listed here.
    """
    if config.get("model_type") not in _LLAMA_LIKE:
        return None
    try:
        hidden = _int(config, "hidden_size")
        layers = _int(config, "num_hidden_layers")
        vocab = _int(config, "vocab_size")
        inter = _int(config, "intermediate_size")
        heads = _int(config, "num_attention_heads")
        kv_heads = _int(config, "num_key_value_heads", heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    model_type = config["model_type"]
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    # (out_features, in_features) of the seven projections of one decoder layer.
    projections = [
        (q_out, hidden),
        (kv_out, hidden),
        (kv_out, hidden),
        (hidden, q_out),
        (inter, hidden),
        (inter, hidden),
        (hidden, inter),
    ]
    weights = sum(o * i for o, i in projections)
    if model_type == "qwen2":
        biases = q_out + 2 * kv_out  # q, k and v carry biases; o does not
    elif config.get("attention_bias"):
        biases = q_out + 2 * kv_out + hidden
    else:
        biases = 0
    if config.get("mlp_bias"):
        biases += 2 * inter + hidden
    norms = 2 * hidden + (2 * head_dim if model_type == "qwen3" else 0)
    embeddings = vocab * hidden
    head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    n0 = embeddings + head + hidden + layers * (weights + biases + norms)
    if n0 <= 0:
        return None
    return Capacity(n0=n0, zeroable_2of4=layers * zeroable_2of4(projections))


def max_rho_2of4_from_config(config: Mapping[str, Any] | None) -> float:
    """The 2:4 reach of the model a config describes, or :data:`UPPER_BOUND_2OF4` when the config
    is missing or of an architecture not read here (the worker then checks the exact value)."""
    capacity = capacity_from_config(config) if config is not None else None
    return capacity.max_rho_2of4 if capacity is not None else UPPER_BOUND_2OF4
