"""``p2law tokenize``: tokenise a corpus once into a token directory under DATA_ROOT.

    p2law tokenize SOURCE --model MODEL --name NAME [--text-field F] [--heldout-tokens N]
                   [--shard-tokens N] [--overwrite]

``p2law`` hands the process over to ``python -m workers.ml.tokens.cli`` with its arguments, as
it does for make-model, so that the API package never imports the workers; this module's parser
is the command's only one. SOURCE and MODEL are taken as given when they exist, else from
DATA_ROOT and MODEL_ROOT; the directory written is DATA_ROOT/NAME, which a job then names as its
``dataset.path``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer

from app.core import tokens as core
from app.core.config import get_settings
from app.core.errors import AppError
from app.core.paths import resolve_inside
from workers.ml.tokens.write import HELDOUT_TOKENS, SHARD_TOKENS, TEXT_FIELD, tokenize_to_dir

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``p2law tokenize`` (its defaults are the writer's)."""
    parser = argparse.ArgumentParser(
        prog="p2law tokenize",
        description="Tokenise a .txt, JSONL or saved HF dataset once into memory-mapped token "
        "shards under DATA_ROOT (docs/jobs.md, 'Tokenised datasets').",
    )
    parser.add_argument("source", help=".txt, .jsonl or saved HF dataset dir (or under DATA_ROOT)")
    parser.add_argument("--model", required=True, help="HF model directory (or under MODEL_ROOT)")
    parser.add_argument("--name", required=True, help="writes DATA_ROOT/NAME/")
    parser.add_argument(
        "--text-field", default=TEXT_FIELD, help=f"JSONL/HF field (default: {TEXT_FIELD})"
    )
    parser.add_argument(
        "--heldout-tokens",
        type=int,
        help="held-out tokens at the end of the stream "
        f"(default: min({HELDOUT_TOKENS}, tokens / 10))",
    )
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=SHARD_TOKENS,
        help=f"tokens per shard file (default: {SHARD_TOKENS})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace another dataset there")
    return parser


def under_root(path: str, root: Path) -> Path:
    """``path`` as given when it exists, else taken from ``root`` (where jobs look for it)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given.resolve()
    return (root.expanduser() / given).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring. Exit status 2 on any error, with the reason."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    last = [started]

    def progress(tokens: int, chars: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            rate = chars / 1e6 / (now - started)
            print(f"{tokens:,} tokens, {rate:.2f} M characters/s", file=sys.stderr, flush=True)

    try:
        settings = get_settings()
        out = resolve_inside(settings.data_root, args.name, what="--name", must_exist=False)
        if out == settings.data_root.expanduser().resolve():
            raise ValueError("--name must name a directory inside DATA_ROOT, not DATA_ROOT itself")
        model = under_root(args.model, settings.model_root)
        fp = core.tokenizer_fingerprint(model)
        tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
        manifest = tokenize_to_dir(
            under_root(args.source, settings.data_root),
            out,
            tokenizer,
            tokenizer_fingerprint=fp,
            tokenizer_model=str(model),
            text_field=args.text_field,
            heldout=args.heldout_tokens,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
            on_progress=progress,
        )
    except (ValueError, AppError, OSError) as exc:  # DataError and the manifest's included
        print(f"p2law tokenize: error: {exc}", file=sys.stderr)
        return 2
    start, end = manifest.heldout_range
    print(
        f"{manifest.root}: {manifest.n_documents:,} documents, {manifest.n_tokens:,} tokens "
        f"({manifest.dtype}) in {len(manifest.shards)} shards; held out: tokens "
        f"[{start:,}, {end:,}); tokenizer {manifest.tokenizer_fingerprint}; "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
