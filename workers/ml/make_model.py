"""Make a converged small dense model to prune: its own tokenizer, pretrained on a local corpus.

    python -m workers.ml.make_model --arch llama --size tiny --out models/tiny-llama

A byte-level BPE tokenizer is trained with `tokenizers` on the corpus (default: the Python
standard library's sources), a Llama or Qwen2 model is built from a config, and it is
pretrained with a cosine schedule decayed to 1% of the peak learning rate for ~30 tokens per
parameter, because the law assumes a converged dense model (docs/law.md §3): an under-trained
one falls below L0 during post-training and its curves are useless for the law.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import nn
from tqdm import tqdm
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from workers.ml import models as ml_models
from workers.ml.corpus import default_documents, write_corpus
from workers.ml.data import pack, read_documents, split_blocks, tokenize_documents
from workers.ml.evaluate import eval_loss
from workers.ml.train import TrainConfig, Trainer, describe_schedule

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENS_PER_PARAM = 30
# GPT-2-style split (contractions, letters, single digits, punctuation runs, whitespace runs).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class Shape:
    """Transformer shape of a size preset."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


# Presets. Their vocabularies differ because the embedding and head dominate a small
# model's cost. tiny (~66k parameters, vocab 512) is sized so that ~30 tokens/parameter
# (~2M tokens) is a few minutes on two CPU cores; small ~1.6M and base ~9M (vocab 4096).
# Every preset has 4+ layers (depth pruning has layers to drop) and KV groups of 2 heads.
SIZES: dict[str, Shape] = {
    "tiny": Shape(hidden=32, layers=4, heads=4, kv_heads=2, intermediate=96),
    "small": Shape(hidden=128, layers=6, heads=8, kv_heads=4, intermediate=352),
    "base": Shape(hidden=256, layers=8, heads=8, kv_heads=4, intermediate=704),
}
DEFAULT_VOCAB = {"tiny": 512, "small": 4096, "base": 4096}
DEFAULT_LR = {"tiny": 3e-3, "small": 2e-3, "base": 1e-3}


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `docs`, wrapped for transformers (EOS = BOS, a PAD token).

    The normalizer and pre-tokenizer are exactly the ones transformers' Qwen2 tokenizer
    rebuilds from a vocabulary when `AutoTokenizer` loads a qwen2 model directory; with any
    other pipeline a saved Qwen2 model would reload with a tokenizer that splits text
    differently from the one it was trained with. Llama directories load tokenizer.json as is.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, unk_token=None
    )


def build_model(
    arch: str,
    shape: Shape,
    vocab_size: int,
    *,
    seq_len: int,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
) -> PreTrainedModel:
    """A freshly initialised Llama or Qwen2 causal LM of `shape` (tied embeddings)."""
    common = {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "intermediate_size": shape.intermediate,
        "max_position_embeddings": max(2048, seq_len),
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    raise ValueError(f"unknown arch {arch!r} (llama or qwen2)")


def make_model(
    out: Path,
    *,
    arch: str = "llama",
    size: str | None = "tiny",
    shape: Shape | None = None,
    corpus: Path | None = None,
    corpus_out: Path | None = None,
    max_corpus_bytes: int | None = None,
    tokens: int | None = None,
    vocab: int | None = None,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    eval_tokens: int | None = None,
    progress: bool = True,
) -> Path:
    """Train a tokenizer and pretrain a dense model on a corpus; save both to `out`."""
    if shape is None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r} (one of {sorted(SIZES)}) and no shape given")
        shape = SIZES[size]
    peak_lr = lr if lr is not None else DEFAULT_LR.get(size or "", 1e-3)
    vocab_size = vocab if vocab is not None else DEFAULT_VOCAB.get(size or "", 4096)
    started = time.monotonic()

    docs = read_documents(corpus) if corpus is not None else default_documents(max_corpus_bytes)
    if corpus is not None and max_corpus_bytes is not None:
        docs = _cap(docs, max_corpus_bytes)
    if corpus_out is not None:
        write_corpus(corpus_out, docs=docs)
    tokenizer = train_tokenizer(docs, vocab_size)
    splits = split_blocks(
        pack(tokenize_documents(docs, tokenizer), seq_len),
        eval_tokens=eval_tokens,
        source=str(corpus or "stdlib corpus"),
    )

    dev = torch.device(device)
    model = build_model(
        arch, shape, len(tokenizer), seq_len=seq_len, tokenizer=tokenizer, seed=seed
    )
    nn.Module.to(model, dev)
    n_params = sum(p.numel() for p in model.parameters())
    total_tokens = tokens if tokens is not None else TOKENS_PER_PARAM * n_params
    tokens_per_step = batch_size * seq_len
    total_steps = max(1, round(total_tokens / tokens_per_step))
    cfg = TrainConfig(
        lr=peak_lr,
        schedule="cosine",
        warmup_steps=min(total_steps, max(1, total_steps // 50)),
        total_steps=total_steps,
        min_lr_ratio=0.01,
        weight_decay=0.1,
        batch_size=batch_size,
        grad_clip=1.0,
        seed=seed,
    )
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    trainer = Trainer(model, splits.train, cfg, device=dev, autocast_dtype=autocast)
    print(
        f"{arch} {size or 'custom'}: {n_params:,} parameters, {total_steps} steps x "
        f"{tokens_per_step} tokens = {total_steps * tokens_per_step:,} tokens "
        f"({splits.train.numel():,} training tokens), {describe_schedule(cfg)}",
        flush=True,
    )

    every = max(1, min(50, total_steps // 100))
    bar = tqdm(total=total_steps, unit="step", disable=not progress, file=sys.stderr)

    def on_step(step: int) -> None:
        bar.update(every)
        bar.set_postfix(loss=f"{trainer.pop_train_loss():.3f}")  # one sync per `every` steps

    trainer.train_until(total_steps, on_step=on_step, every=every)
    bar.update(total_steps - bar.n)
    bar.close()
    loss, stderr = eval_loss(
        model, splits.eval, batch_size=batch_size, device=dev, autocast_dtype=autocast
    )
    elapsed = time.monotonic() - started
    print(
        f"held-out loss {loss:.4f} ± {stderr:.4f} nats ({splits.protocol}), {elapsed:.0f} s",
        flush=True,
    )

    model.config.use_cache = True
    saved = Path(ml_models.save_pretrained(model, tokenizer, out))
    info = {
        "arch": arch,
        "size": size,
        "shape": shape.__dict__,
        "n_params": n_params,
        "tokens": trainer.tokens_done,
        "seq_len": seq_len,
        "schedule": describe_schedule(cfg),
        "eval_loss": loss,
        "eval_stderr": stderr,
        "protocol": splits.protocol,
        "corpus": str(corpus_out or corpus or "stdlib"),
        "seconds": round(elapsed, 1),
    }
    (saved / "p2law_make_model.json").write_text(json.dumps(info, indent=1))
    return saved


def _cap(docs: list[str], max_bytes: int) -> list[str]:
    out: list[str] = []
    size = 0
    for doc in docs:
        n = len(doc.encode("utf-8"))
        if out and size + n > max_bytes:
            break
        out.append(doc)
        size += n
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m workers.ml.make_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--hidden", type=int)
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--corpus", type=Path, help=".txt / .jsonl / HF dataset dir (default: stdlib)")
    p.add_argument(
        "--corpus-out",
        type=Path,
        help="where to write the corpus used (default: $DATA_ROOT or var/data, /<out name>.txt)",
    )
    p.add_argument("--max-corpus-bytes", type=int)
    p.add_argument("--tokens", type=int, help=f"default: {TOKENS_PER_PARAM} x parameters")
    p.add_argument("--vocab", type=int, help="default: 512 for tiny, 4096 otherwise")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    base = SIZES[a.size]
    shape = Shape(
        hidden=a.hidden or base.hidden,
        layers=a.layers or base.layers,
        heads=a.heads or base.heads,
        kv_heads=a.kv_heads or base.kv_heads,
        intermediate=a.intermediate or base.intermediate,
    )
    custom = shape != base
    # Default next to the service's datasets (its DATA_ROOT, default var/data), so a job can
    # name the corpus the model was trained on and measure L0 on the same held-out tokens.
    corpus_out = a.corpus_out or Path(os.environ.get("DATA_ROOT", "var/data")) / f"{a.out.name}.txt"
    out = make_model(
        a.out,
        arch=a.arch,
        size=None if custom else a.size,
        shape=shape,
        corpus=a.corpus,
        corpus_out=corpus_out,
        max_corpus_bytes=a.max_corpus_bytes,
        tokens=a.tokens,
        vocab=a.vocab or DEFAULT_VOCAB[a.size],
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        lr=a.lr if a.lr is not None else (None if not custom else DEFAULT_LR[a.size]),
        seed=a.seed,
        device=a.device,
        progress=not a.no_progress,
    )
    print(f"saved {out}" + (f"; corpus {corpus_out}" if corpus_out else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
