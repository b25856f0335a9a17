"""The pruning plan: how each method reaches a target ρ on a model, from its ``config.json`` alone.

One plan serves both sides (docs/law.md §1). The API makes it at submission, without torch, to
refuse a ρ the method cannot reach (the message names the maximum) and to show the shape a job
would produce; the worker makes the same plan from the loaded model's config and takes every
count from it (how many layers, KV groups and MLP channels, which projections), choosing only
*which* layers, groups, channels and projections by their calibration scores. ``plan.rho`` is
therefore the ρ the worker measures: removed parameters ÷ N0 for ``depth`` and ``width``,
weights set to zero ÷ N0 for ``2:4`` and ``unstructured`` (counting a weight that was already
zero before pruning as not pruned, so a model with exact zeros in its projections can land a
little below).

The counts, per method (``shape`` of :class:`PrunePlan` says what the pruned model keeps):

- ``depth``: the number of decoder layers (1 to L − 1) whose share of N0 is closest to ρ;
- ``width``: every layer alike (a stock config holds one head count and one MLP width). KV groups
  go whole, so heads per group stay and the config stays valid. The number of groups removed is
  attention's proportional share of the removal (f × groups, f = the removal ÷ the layers'
  attention and MLP parameters) rounded to the nearest whole group, and then down to a count the
  architecture's config accepts (Llama requires ``hidden_size`` divisible by the head count, so
  Llama-3.1-8B can keep only 8, 4, 2 or 1 of its 8 groups); MLP channels make up the rest to
  the nearest channel. The group count therefore rises by one group at a time where the config
  allows it, and attention never loses more than its share rounded to a group;
- ``2:4``: half of a projection's weights go with it, so the plan chooses how many projections of
  each size (projections of equal size form one class: q/o, k/v and gate/up/down on the usual
  shapes) make the zeroed total closest to ρ·N0, exactly; among equally close choices, the one
  that sparsifies every class in the most even share;
- ``unstructured``: the same fraction s = ρ·N0 ÷ (all projection weights) of every projection,
  ``round(s × weights)`` zeros in each.

Pure Python and no imports from the project: the API and the worker both depend on it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ATTENTION_ROLES",
    "LLAMA_LIKE",
    "METHODS",
    "MLP_ROLES",
    "ROLES",
    "UPPER_BOUND_2OF4",
    "ModelShape",
    "OutOfReachError",
    "PlanError",
    "PrunePlan",
    "UnsupportedConfigError",
    "check_reach",
    "closest_counts",
    "eligible_2of4",
    "parameter_count",
    "plan_pruning",
]

#: The methods a plan is made for, by their names in a job request.
METHODS: tuple[str, ...] = ("depth", "width", "2:4", "unstructured")

#: The seven projections of a decoder layer, by role (``workers.ml.models.LayerParts``' names).
ATTENTION_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
MLP_ROLES: tuple[str, ...] = ("gate", "up", "down")
ROLES: tuple[str, ...] = ATTENTION_ROLES + MLP_ROLES

#: Model types whose decoder layer is q/k/v/o attention + gate/up/down MLP + two RMSNorms.
LLAMA_LIKE: frozenset[str] = frozenset({"llama", "qwen2", "mistral", "qwen3"})

#: Whatever the model, 2:4 zeroes at most half of a weight, so ρ stays below one half: the bound
#: applied at submission when a config cannot be read (the worker then checks the exact reach).
UPPER_BOUND_2OF4 = 0.5

# Types whose transformers config checks hidden_size % num_attention_heads == 0 (LlamaConfig's
# validate_architecture; Qwen2, Qwen3 and Mistral check nothing on head counts).
_HEADS_DIVIDE_HIDDEN = frozenset({"llama"})

# Enumerating 2:4 count combinations is exact but grows as the product of class sizes; past this
# many (unusual: many distinct projection shapes) a greedy fill is used instead.
_MAX_COMBINATIONS = 200_000


class PlanError(ValueError):
    """A request no plan can be made for (an unknown method, ρ outside (0, 1), ...)."""


class UnsupportedConfigError(PlanError):
    """A config this module cannot read: another architecture, or sizes missing."""


class OutOfReachError(PlanError):
    """ρ above what the method can reach on this model; the message names the maximum."""

    def __init__(self, message: str, *, method: str, rho: float, max_rho: float) -> None:
        super().__init__(message)
        self.method = method
        self.rho = rho
        self.max_rho = max_rho


def eligible_2of4(in_features: int) -> bool:
    """Whether a projection with this input width can carry the 2:4 pattern."""
    return in_features > 0 and in_features % 4 == 0


def _positive_int(config: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = config.get(key)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UnsupportedConfigError(f"config field {key!r} is {value!r}, not a whole number")
    if int(value) < 1:
        raise UnsupportedConfigError(f"config field {key!r} is {value!r}, not positive")
    return int(value)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-shaped decoder that decide every count, read from its config."""

    model_type: str
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read a Hugging Face ``config.json`` (as a mapping); :class:`UnsupportedConfigError`
        when it is not one of :data:`LLAMA_LIKE` or its sizes do not add up."""
        model_type = config.get("model_type")
        if model_type not in LLAMA_LIKE:
            raise UnsupportedConfigError(
                f"model_type {model_type!r} is not one of {sorted(LLAMA_LIKE)}"
            )
        if config.get("per_layer_config"):
            raise UnsupportedConfigError("per-layer (heterogeneous) configs are not read")
        hidden = _positive_int(config, "hidden_size")
        heads = _positive_int(config, "num_attention_heads")
        kv_heads = _positive_int(config, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise UnsupportedConfigError(
                f"{heads} attention heads do not split into {kv_heads} KV groups"
            )
        default_head_dim = 128 if model_type == "qwen3" else hidden // heads
        head_dim = _positive_int(config, "head_dim", default_head_dim)
        attention_bias = bool(config.get("attention_bias", False))
        qkv_bias = {"qwen2": True, "mistral": False}.get(model_type, attention_bias)
        return cls(
            model_type=model_type,
            vocab_size=_positive_int(config, "vocab_size"),
            hidden_size=hidden,
            layers=_positive_int(config, "num_hidden_layers"),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=_positive_int(config, "intermediate_size"),
            qkv_bias=qkv_bias,
            o_bias=attention_bias and model_type in {"llama", "qwen3"},
            mlp_bias=bool(config.get("mlp_bias", False)) and model_type == "llama",
            qk_norm=model_type == "qwen3",
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def group_size(self) -> int:
        """Query heads per KV group."""
        return self.heads // self.kv_heads

    def projections(self, kv_heads: int | None = None) -> dict[str, tuple[int, int]]:
        """``(out_features, in_features)`` of each projection of one layer, by role, with
        ``kv_heads`` KV groups (default: the model's)."""
        kv = self.kv_heads if kv_heads is None else kv_heads
        q_out, kv_out = kv * self.group_size * self.head_dim, kv * self.head_dim
        h, c = self.hidden_size, self.intermediate_size
        return {
            "q": (q_out, h),
            "k": (kv_out, h),
            "v": (kv_out, h),
            "o": (h, q_out),
            "gate": (c, h),
            "up": (c, h),
            "down": (h, c),
        }

    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: projections, their biases and the norms."""
        proj = self.projections()
        weights = sum(o * i for o, i in proj.values())
        biases = 0
        if self.qkv_bias:
            biases += proj["q"][0] + proj["k"][0] + proj["v"][0]
        if self.o_bias:
            biases += self.hidden_size
        if self.mlp_bias:
            biases += 2 * self.intermediate_size + self.hidden_size
        norms = 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)
        return weights + biases + norms

    def parameter_count(self) -> int:
        """N0: embeddings, head (once when tied), final norm and every decoder layer."""
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tied else embeddings
        return embeddings + head + self.hidden_size + self.layers * self.layer_parameters()

    def channel_parameters(self) -> int:
        """Parameters one MLP channel takes with it: a gate row, an up row (with their bias
        entries) and a down column (down's bias is per output and stays)."""
        per_row = self.hidden_size + (1 if self.mlp_bias else 0)
        return 2 * per_row + self.hidden_size

    def group_parameters(self) -> int:
        """Parameters one KV group takes with it: its query heads, key and value head (rows
        and bias entries) and the matching o_proj columns (o's bias is per output and stays).
        Qwen3's q/k norms act on ``head_dim`` and are shared by every head, so they stay."""
        rows = self.head_dim * (self.hidden_size + (1 if self.qkv_bias else 0))
        return (self.group_size + 2) * rows + self.group_size * self.head_dim * self.hidden_size

    def accepts_kv_heads(self, kv_heads: int) -> bool:
        """Whether the architecture's stock config accepts ``kv_heads`` groups of this size."""
        if not 1 <= kv_heads <= self.kv_heads:
            return False
        if self.model_type in _HEADS_DIVIDE_HIDDEN:
            return self.hidden_size % (kv_heads * self.group_size) == 0
        return True


@dataclass(frozen=True)
class PrunePlan:
    """What pruning ``method`` towards ``target_rho`` does to a model.

    ``rho`` is the ρ the method reaches (what the worker measures, docs/law.md §1); ``n0`` the
    dense model's parameters; ``n_after`` the parameters left (depth, width) or the weights left
    non-zero (2:4, unstructured). ``shape`` (JSON-able) is what the pruned model keeps:
    ``layers``, ``attention_heads`` and ``kv_heads`` per layer, ``head_dim``,
    ``intermediate_size`` (MLP channels, equal in every layer) and ``max_rho`` (the method's
    reach on this model), and per method: ``layers_removed`` and ``layer_parameters`` (depth);
    ``kv_groups_removed``, ``channels_removed`` (per layer) and ``removed`` (``attention``,
    ``mlp`` parameters in all) (width); ``projections_2of4`` (one entry per class of equal-size
    projections: ``roles``, ``zeroed_each``, ``count`` made 2:4 of ``of``) and
    ``projections_sparsified`` (2:4); ``fraction`` and ``zeros_per_projection`` by role
    (unstructured).
    """

    method: str
    target_rho: float
    rho: float
    n0: int
    n_after: int
    shape: dict[str, Any]


def parameter_count(config: Mapping[str, Any]) -> int:
    """N0 of the model a config describes, a tied head counted once; the count
    ``workers.ml.models.count_parameters`` gives on a model built from that config.
    :class:`UnsupportedConfigError` when the config is not one :class:`ModelShape` reads."""
    return ModelShape.from_config(config).parameter_count()


def _kept(
    s: ModelShape,
    *,
    layers: int | None = None,
    kv_heads: int | None = None,
    intermediate: int | None = None,
) -> dict[str, Any]:
    kv = s.kv_heads if kv_heads is None else kv_heads
    return {
        "layers": s.layers if layers is None else layers,
        "attention_heads": kv * s.group_size,
        "kv_heads": kv,
        "head_dim": s.head_dim,
        "intermediate_size": s.intermediate_size if intermediate is None else intermediate,
    }


def _out_of_reach(method: str, rho: float, max_rho: float, what: str) -> OutOfReachError:
    return OutOfReachError(
        f"{what}; requested rho={rho:.4f}: ask for rho <= {max_rho:.4f}",
        method=method,
        rho=rho,
        max_rho=max_rho,
    )


def _plan_depth(s: ModelShape, rho: float) -> PrunePlan:
    n0, per_layer = s.parameter_count(), s.layer_parameters()
    max_rho = (s.layers - 1) * per_layer / n0
    if s.layers < 2 or rho > max_rho + per_layer / n0 / 2:
        raise _out_of_reach(
            "depth",
            rho,
            max_rho,
            f"depth pruning can remove at most rho={max_rho:.4f} of this model's parameters "
            f"({s.layers - 1} of its {s.layers} decoder layers; one layer is the step)",
        )
    count = min(range(1, s.layers), key=lambda k: abs(k * per_layer / n0 - rho))
    removed = count * per_layer
    shape = _kept(s, layers=s.layers - count) | {
        "max_rho": max_rho,
        "layers_removed": count,
        "layer_parameters": per_layer,
    }
    return PrunePlan("depth", rho, removed / n0, n0, n0 - removed, shape)


def _plan_width(s: ModelShape, rho: float) -> PrunePlan:
    n0, L = s.parameter_count(), s.layers
    cp, gp, channels, groups = (
        s.channel_parameters(),
        s.group_parameters(),
        s.intermediate_size,
        s.kv_heads,
    )
    removable = sorted(groups - k for k in range(1, groups + 1) if s.accepts_kv_heads(k))
    most = (channels - 1) * cp + removable[-1] * gp
    max_rho = most * L / n0
    want = rho * n0 / L  # parameters to remove per layer
    if want > most + cp / 2:
        raise _out_of_reach(
            "width",
            rho,
            max_rho,
            f"width pruning can remove at most rho={max_rho:.4f} of this model's parameters "
            f"(one MLP channel and {groups - removable[-1]} of {groups} KV groups kept per layer)",
        )
    # Attention's proportional share of the removal, in whole groups.
    share = math.floor(want / (channels * cp + groups * gp) * groups + 0.5)

    def fill(g: int) -> tuple[float, bool, int, int]:
        need = (want - g * gp) / cp
        c = min(max(math.floor(need + 0.5), 0), channels - 1)
        excess = max(abs(need - c) - 0.5, 0.0)  # 0 when channels absorb the rest
        return excess, g > share, abs(g - share), c

    g = min(removable, key=fill)
    c = fill(g)[3]
    if g == 0 and c == 0:
        c = 1  # a target below half a channel still prunes something
    removed = L * (g * gp + c * cp)
    shape = _kept(s, kv_heads=groups - g, intermediate=channels - c) | {
        "max_rho": max_rho,
        "kv_groups_removed": g,
        "heads_per_group": s.group_size,
        "channels_removed": c,
        "removed": {"attention": L * g * gp, "mlp": L * c * cp},
    }
    return PrunePlan("width", rho, removed / n0, n0, n0 - removed, shape)


def closest_counts(sizes: Sequence[int], available: Sequence[int], target: float) -> list[int]:
    """How many units of each size (at most ``available[i]`` of size ``sizes[i]``) to take so
    that their total is closest to ``target``; among equally close totals, the counts that take
    the most even share of every size, then the fewest units. Exact by enumeration over all
    sizes but the smallest (whose count follows by rounding); a greedy largest-first fill past
    a few hundred thousand combinations."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    if not order:
        return []
    n_combinations = math.prod(available[i] + 1 for i in order[:-1])
    counts = [0] * len(sizes)
    if n_combinations > _MAX_COMBINATIONS:
        total = 0
        for i in order:
            while counts[i] < available[i] and abs(target - total - sizes[i]) < abs(target - total):
                counts[i] += 1
                total += sizes[i]
        return counts
    last = order[-1]
    best: tuple[float, float, int, tuple[int, ...]] | None = None
    for head in itertools.product(*(range(available[i] + 1) for i in order[:-1])):
        partial = sum(c * sizes[i] for c, i in zip(head, order, strict=False))
        tail = min(max(math.floor((target - partial) / sizes[last] + 0.5), 0), available[last])
        trial = (*head, tail)
        shares = [c / available[i] for c, i in zip(trial, order, strict=True) if available[i]]
        key = (
            abs(target - partial - tail * sizes[last]),
            max(shares) - min(shares) if shares else 0.0,
            sum(trial),
            trial,
        )
        if best is None or key < best:
            best = key
    assert best is not None
    for c, i in zip(best[3], order, strict=True):
        counts[i] = c
    return counts


def _plan_2of4(s: ModelShape, rho: float) -> PrunePlan:
    n0 = s.parameter_count()
    classes: dict[int, list[str]] = {}
    for role, (out, inp) in s.projections().items():
        if eligible_2of4(inp):
            classes.setdefault(out * inp // 2, []).append(role)
    sizes = sorted(classes, reverse=True)
    available = [len(classes[z]) * s.layers for z in sizes]
    max_rho = sum(z * a for z, a in zip(sizes, available, strict=True)) / n0
    if rho > max_rho:
        raise _out_of_reach(
            "2:4",
            rho,
            max_rho,
            f"2:4 sparsity can zero at most rho={max_rho:.4f} of this model's parameters (half "
            f"of every attention and MLP projection; embeddings, norms and the head are never "
            f"pruned)",
        )
    counts = closest_counts(sizes, available, rho * n0)
    zeroed = sum(z * c for z, c in zip(sizes, counts, strict=True))
    shape = _kept(s) | {
        "max_rho": max_rho,
        "projections_2of4": [
            {"roles": classes[z], "zeroed_each": z, "count": c, "of": a}
            for z, c, a in zip(sizes, counts, available, strict=True)
        ],
        "projections_sparsified": sum(counts),
    }
    return PrunePlan("2:4", rho, zeroed / n0, n0, n0 - zeroed, shape)


def _plan_unstructured(s: ModelShape, rho: float) -> PrunePlan:
    n0 = s.parameter_count()
    weights = {role: out * inp for role, (out, inp) in s.projections().items()}
    total = s.layers * sum(weights.values())
    max_rho = total / n0
    fraction = rho * n0 / total
    if fraction >= 1.0:
        raise OutOfReachError(
            f"unstructured sparsity must stay below rho={max_rho:.4f} (every decoder projection "
            f"weight of this model); requested rho={rho:.4f}: ask for rho < {max_rho:.4f}",
            method="unstructured",
            rho=rho,
            max_rho=max_rho,
        )
    zeros = {role: round(fraction * n) for role, n in weights.items()}
    zeroed = s.layers * sum(zeros.values())
    shape = _kept(s) | {"max_rho": max_rho, "fraction": fraction, "zeros_per_projection": zeros}
    return PrunePlan("unstructured", rho, zeroed / n0, n0, n0 - zeroed, shape)


_PLANNERS = {
    "depth": _plan_depth,
    "width": _plan_width,
    "2:4": _plan_2of4,
    "unstructured": _plan_unstructured,
}


def _check_request(method: str, rho: float) -> None:
    if method not in _PLANNERS:
        raise PlanError(f"unknown pruning method {method!r}; known: {list(METHODS)}")
    if not (isinstance(rho, int | float) and math.isfinite(rho) and 0.0 < rho < 1.0):
        raise PlanError(f"rho must be a fraction in (0, 1), got {rho!r}")


def plan_pruning(config: Mapping[str, Any], method: str, rho: float) -> PrunePlan:
    """The plan for pruning the model ``config`` describes by ``method`` towards ``rho``.

    Raises :class:`OutOfReachError` (a ``ValueError``) naming the method's maximum on this model
    when ``rho`` lies above it, :class:`UnsupportedConfigError` for a config this module cannot
    read, and :class:`PlanError` for an unknown method or ρ outside (0, 1).
    """
    _check_request(method, rho)
    return _PLANNERS[method](ModelShape.from_config(config), float(rho))


def check_reach(config: Mapping[str, Any] | None, method: str, rho: float) -> PrunePlan | None:
    """The plan when the config can be read; otherwise None after the bound every model obeys
    (2:4 zeroes less than half: :data:`UPPER_BOUND_2OF4`). Raises :class:`OutOfReachError` as
    :func:`plan_pruning` does."""
    _check_request(method, rho)
    try:
        return plan_pruning(config or {}, method, rho)
    except UnsupportedConfigError:
        if method == "2:4" and rho > UPPER_BOUND_2OF4:
            raise _out_of_reach(
                "2:4",
                rho,
                UPPER_BOUND_2OF4,
                f"2:4 sparsity can zero at most rho={UPPER_BOUND_2OF4:.4f} of any model's "
                f"parameters (half of its projections at most)",
            ) from None
        return None
