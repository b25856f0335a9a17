"""Pruning methods behind one registry, each reaching a target ρ as closely as it can.

``prune(model, method, rho, calib_ids)`` prunes in place and measures ρ from the model
(docs/law.md §1): for structural methods (``depth``, ``width``) ρ = removed parameters ÷ N0; for
mask methods (``2:4``, ``unstructured``) ρ = weights set to zero ÷ N0, and the returned keep-masks
must be re-applied after every optimizer step (``apply_masks``) so zeros stay zero.

Every count comes from ``app.core.pruning.plan_pruning`` on the model's config, the plan the API
checks at submission, so the measured ρ is the plan's ``rho``; a method chooses only which
layers, groups, channels or projections go, by its calibration scores.

Calibration tokens come from the caller and must be drawn from the training split, never from the
evaluation set used for L0 and L.

Adding a method: one module with a ``Pruner`` subclass, one entry in ``PRUNERS``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.core.pruning import (
    OutOfReachError,
    PrunePlan,
    UnsupportedConfigError,
    plan_pruning,
)
from workers.ml.models import count_nonzero, count_parameters
from workers.ml.prune.base import PruneError, PruneOutcome, Pruner, model_device
from workers.ml.prune.depth import DepthPruner
from workers.ml.prune.semistructured import SemiStructuredPruner
from workers.ml.prune.unstructured import UnstructuredPruner
from workers.ml.prune.width import WidthPruner

__all__ = [
    "PRUNERS",
    "PruneError",
    "PruneOutcome",
    "PruneResult",
    "Pruner",
    "apply_masks",
    "plan_for",
    "prune",
]

PRUNERS: dict[str, Pruner] = {
    DepthPruner.name: DepthPruner(),
    WidthPruner.name: WidthPruner(),
    SemiStructuredPruner.name: SemiStructuredPruner(),
    UnstructuredPruner.name: UnstructuredPruner(),
}


@dataclass
class PruneResult:
    """What pruning did, measured from the model.

    ``n_after`` is the parameter count for structural methods and the non-zero count for mask
    methods. ``masks`` maps parameter names to bool keep-masks (empty for structural methods).
    ``plan`` is the plan the counts came from; ``rho`` equals ``plan.rho``.
    """

    method: str
    target_rho: float
    rho: float
    n0: int
    n_after: int
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    plan: PrunePlan | None = None


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero, in place, every weight whose keep-mask entry is False.

    Called after every optimizer step, so it is one fused multiply per masked tensor and nothing
    else; keep the masks on the model's device to avoid a copy per call.
    """
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            param = params.get(name)
            if param is None:
                raise KeyError(f"mask for unknown parameter {name!r}")
            param.mul_(mask)


def _check_rho(rho: float) -> None:
    if not (isinstance(rho, int | float) and math.isfinite(rho) and 0.0 < rho < 1.0):
        raise PruneError(f"rho must be a fraction in (0, 1), got {rho!r}")


def plan_for(model: nn.Module, method: str, rho: float) -> PrunePlan:
    """The plan for ``model`` from its config, checked against the model's own parameter count;
    a ``PruneError`` when ρ is out of the method's reach (the message names the maximum) or the
    config does not describe the model."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    mapping: Mapping[str, Any] = to_dict() if callable(to_dict) else {}
    try:
        plan = plan_pruning(mapping, method, rho)
    except OutOfReachError as exc:
        raise PruneError(str(exc)) from None
    except UnsupportedConfigError as exc:
        raise PruneError(f"cannot plan {method} pruning for this model's config: {exc}") from None
    n0 = count_parameters(model)
    if plan.n0 != n0:
        raise PruneError(
            f"the model's config describes {plan.n0} parameters but the model has {n0}: its "
            f"shapes are not the ones its config gives, so no plan fits it"
        )
    return plan


def prune(
    model: nn.Module,
    method: str,
    rho: float,
    calib_ids: torch.Tensor,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
) -> PruneResult:
    """Prune ``model`` in place by ``method`` towards ``rho`` and measure the ρ reached.

    ``calib_ids`` is a ``[n_sequences, seq_len]`` tensor of training-split token ids, full
    sequences without padding (packed blocks; no attention mask is applied). The model is
    moved to ``device`` when one is given (default: where it already is) and stays there.
    Raises ``PruneError`` for an unknown method, ρ outside (0, 1) or above what the method can
    reach (the message states the maximum), or a model whose config cannot be planned for; the
    weights are left unchanged in those cases.
    """
    pruner = PRUNERS.get(method)
    if pruner is None:
        raise PruneError(f"unknown pruning method {method!r}; known: {sorted(PRUNERS)}")
    _check_rho(rho)
    plan = plan_for(model, method, float(rho))
    target = torch.device(device) if device is not None else model_device(model)
    if model_device(model) != target:
        model.to(target)
    n0 = plan.n0
    nonzero_before = 0 if pruner.structural else count_nonzero(model)
    outcome = pruner.run(model, plan, calib_ids, device=target, batch_size=batch_size)
    if pruner.structural:
        n_after = count_parameters(model)
        removed = n0 - n_after
    else:
        apply_masks(model, outcome.masks)
        n_after = count_nonzero(model)
        # Weights that were already zero before pruning (e.g. zero-initialised biases) are not
        # counted as pruned: ρ counts only what pruning set to zero.
        removed = nonzero_before - n_after
    return PruneResult(
        method=method,
        target_rho=float(rho),
        rho=removed / n0,
        n0=n0,
        n_after=n_after,
        masks=outcome.masks,
        details=outcome.details,
        plan=plan,
    )
