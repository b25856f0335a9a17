"""Confine user-supplied paths (job models and datasets) to their configured roots.

A job request names a model directory and dataset files; the worker later reads them with full
privileges. So the API resolves each path *before* anything is read: relative paths are taken from
the root, absolute paths are accepted only when they already lie inside it, ``..`` and symlinks
are resolved (``Path.resolve``) and whatever ends up outside the root is refused with a message.
Only ``stat``-level calls happen here (resolve follows links); no file is opened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.config import Settings, get_settings
from app.core.errors import Unprocessable

if TYPE_CHECKING:
    from app.schemas.jobs import JobRequest

#: ``org/name`` as hub ids are written (letters, digits, ``-_.``; exactly one slash).
HUB_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class PathOutsideRoot(Unprocessable):
    """A user path resolves outside its root, or names nothing that exists (422)."""


def resolve_inside(
    root: Path, user_path: str, *, what: str = "path", must_exist: bool = True
) -> Path:
    """Resolve ``user_path`` against ``root`` and return it only if it stays inside ``root``.

    Relative paths are joined to ``root``; absolute ones must already point inside it. Symlinks
    and ``..`` are resolved first, so a link inside the root that points out is refused like a
    plain ``../``. With ``must_exist`` the target has to exist (``resolve(strict=True)``).

    Raises:
        PathOutsideRoot: empty path, NUL byte, escape from the root, or a missing target.
    """
    if not user_path or "\x00" in user_path:
        raise PathOutsideRoot(f"{what}: an empty path or a NUL byte is not a path")
    root_resolved = root.expanduser().resolve()
    candidate = Path(user_path).expanduser()
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    try:
        resolved = candidate.resolve(strict=must_exist)
    except FileNotFoundError:
        # Report an escape before "missing": ``../x`` that does not exist is still an escape.
        lexical = Path(os.path.normpath(candidate))
        if not lexical.is_relative_to(root_resolved):
            raise PathOutsideRoot(
                f"{what} {user_path!r} is outside {root_resolved} (the configured root)"
            ) from None
        raise PathOutsideRoot(
            f"{what} {user_path!r} does not exist under {root_resolved}"
        ) from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permission errors
        raise PathOutsideRoot(f"{what} {user_path!r} cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(root_resolved):
        raise PathOutsideRoot(
            f"{what} {user_path!r} resolves to {resolved}, outside {root_resolved} "
            "(the configured root; '..', absolute paths elsewhere and symlinks out are refused)"
        )
    return resolved


def resolve_model(root: Path, user_path: str, *, allow_hub: bool) -> str:
    """A job's ``model``: a directory inside ``root``, or a hub id where hubs are allowed.

    Returns the resolved directory as a string, or the hub id unchanged. An ``org/name`` that is
    not a local directory is a hub id; it is refused unless ``allow_hub`` (this deployment has no
    hub access by default), and the message says so.
    """
    local = root.expanduser().resolve() / user_path
    looks_like_hub = HUB_ID.match(user_path) is not None and not Path(user_path).is_absolute()
    try:
        local_exists = local.exists()
    except OSError:  # e.g. a name longer than the file system allows
        local_exists = False
    if looks_like_hub and not local_exists:
        if allow_hub:
            return user_path
        raise PathOutsideRoot(
            f"model {user_path!r} is not a directory under {root.expanduser().resolve()} and "
            "looks like a hub id; hub models are disabled on this server (ALLOW_HUB_MODELS=false)"
        )
    resolved = resolve_inside(root, user_path, what="model")
    if not resolved.is_dir():
        raise PathOutsideRoot(f"model {user_path!r} is not a directory (an HF model folder)")
    return str(resolved)


@dataclass(frozen=True)
class JobPaths:
    """A job request's paths, checked to lie inside their roots."""

    model: str
    dataset: Path
    eval_path: Path | None


def resolve_job_paths(request: JobRequest, settings: Settings | None = None) -> JobPaths:
    """Resolve a job's model and dataset paths inside MODEL_ROOT and DATA_ROOT (422 if not).

    The API calls it at submission, before anything is read; the worker calls it again before
    it reads, since the roots or the files may have changed in between.
    """
    settings = settings or get_settings()
    model = resolve_model(settings.model_root, request.model, allow_hub=settings.allow_hub_models)
    dataset = request.dataset
    data_path = resolve_inside(settings.data_root, dataset.path, what="dataset.path")
    eval_path = None
    if dataset.eval_path is not None:
        eval_path = resolve_inside(settings.data_root, dataset.eval_path, what="dataset.eval_path")
    return JobPaths(model=model, dataset=data_path, eval_path=eval_path)
