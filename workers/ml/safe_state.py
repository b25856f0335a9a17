"""Save and load nested training state without pickle.

A resumable job keeps its optimizer, data cursor and RNG states in its work directory, and a
later attempt (perhaps another worker) loads them. ``torch.load`` of a pickle runs whatever code
the file names, so a file planted in that directory would run in the worker. Here the tensors go
to ``NAME.pt``, read back with ``torch.load(weights_only=True)`` (tensors and plain containers
only, nothing executed), and everything else (steps, cursors, hyper-parameters, Python's RNG
state) to ``NAME.json``, where tensors are replaced by references into the ``.pt`` file. Tuples
and dicts with non-string keys (an optimizer's per-parameter state) are tagged so they come
back as they were.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu")
        return {_TENSOR: key}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not ({_TENSOR, _TUPLE, _ITEMS} & set(value)):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {_ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a training state")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(_decode(v, tensors) for v in value[_TUPLE])
        if set(value) == {_ITEMS}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def save(state: Mapping[str, Any], directory: Path, name: str) -> None:
    """Write ``state`` as ``NAME.pt`` (its tensors) and ``NAME.json`` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    torch.save(tensors, directory / f"{name}.pt")
    (directory / f"{name}.json").write_text(json.dumps(skeleton))


def load(directory: Path, name: str) -> dict[str, Any]:
    """Read what :func:`save` wrote, tensors on the CPU; a pickle with code in it is refused
    (``pickle.UnpicklingError``) before anything in it runs."""
    tensors = torch.load(directory / f"{name}.pt", map_location="cpu", weights_only=True)
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{directory / name}.pt does not hold a flat dict of tensors")
    state = _decode(json.loads((directory / f"{name}.json").read_text()), tensors)
    if not isinstance(state, dict):
        raise ValueError(f"{directory / name}.json does not hold a training state")
    return state
