"""What a pruning method can reach on a model, read from its `config.json` alone.

The API must answer a 2:4 request above the pattern's reach with a 422 that states the maximum
(p2-law.md §1) *before* a job is queued, without importing torch or loading weights. For the
decoder families the workers support (Llama, Qwen2, Mistral, Qwen3) the parameter count follows
from the config: this module counts it the way `workers.ml.models.count_parameters` counts the
loaded model (a tied head once), and the 2:4-eligible weights the way the 2:4 pruner does (every
attention and MLP projection whose input width is a multiple of 4; half of each can be zeroed).
A config it does not recognise gives None, and the worker's own check decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Families whose decoder layer is q/k/v/o attention + gate/up/down MLP + two RMSNorms.
_LLAMA_LIKE = {"llama", "qwen2", "mistral", "qwen3"}


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
    """The model's N0 and 2:4-zeroable weights from its HF config, or None when unknown."""
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
    except (KeyError, TypeError, ValueError):
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
    zeroable = layers * sum(o * i // 2 for o, i in projections if i % 4 == 0)
    return Capacity(n0=n0, zeroable_2of4=zeroable)
