"""Tiny models, tokenizers and corpora for the ML tests (built from configs, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from workers.ml.corpus import default_documents, write_corpus
from workers.ml.job import CheckpointPoint, Decision, Measured
from workers.ml.make_model import train_tokenizer

#: What a job measured before post-training, for tests of what comes after.
MEASURED = Measured(
    n0=10,
    n_after=8,
    rho=0.2,
    l0=3.0,
    loss_after_prune=3.5,
    protocol="eval:x",
    eval_noise=0.01,
    schedule="constant lr=0.001 warmup=0%",
)

# ~200 kB of real text: enough for a 512-token vocabulary and a few hundred 32-token blocks.
CORPUS_BYTES = 200_000


def small_docs(max_bytes: int = CORPUS_BYTES) -> list[str]:
    """A deterministic prefix of the stdlib corpus."""
    return default_documents(max_bytes)


def small_tokenizer(docs: list[str] | None = None, vocab: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the small corpus."""
    return train_tokenizer(docs if docs is not None else small_docs(), vocab)


def tiny_llama(vocab_size: int, *, seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    """A ~50k-parameter Llama with GQA (4 heads, 2 KV heads)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def write_model_and_corpus(root: Path) -> tuple[Path, Path]:
    """Save a tiny Llama + tokenizer as an HF directory and the corpus as .txt; return both."""
    docs = small_docs()
    tok = small_tokenizer(docs)
    model = tiny_llama(len(tok))
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    corpus = write_corpus(root / "corpus.txt", docs=docs)
    return model_dir, corpus


class CrashError(RuntimeError):
    """Stands for a worker killed after a checkpoint was saved."""


class Recorder:
    """JobHooks that records every call; can crash, stop or cancel at a given checkpoint."""

    def __init__(
        self,
        *,
        crash_at: int | None = None,
        decide_at: int | None = None,
        decision: Decision = Decision.CONTINUE,
    ) -> None:
        self.crash_at, self.decide_at, self.decision = crash_at, decide_at, decision
        self.measured: list[Measured] = []
        self.resumed: list[tuple[int, list[CheckpointPoint]]] = []
        self.progress: list[tuple[int, int]] = []
        self.points: list[CheckpointPoint] = []

    def on_measured(self, measured: Measured) -> None:
        self.measured.append(measured)

    def on_resume(self, tokens_done: int, points: list[CheckpointPoint]) -> None:
        self.resumed.append((tokens_done, points))

    def on_progress(self, tokens_done: int, tokens_total: int) -> None:
        self.progress.append((tokens_done, tokens_total))

    def on_checkpoint(
        self, point: CheckpointPoint, points: list[CheckpointPoint]
    ) -> tuple[Decision, str | None]:
        self.points.append(point)
        assert points[-1] == point
        if self.crash_at is not None and len(points) == self.crash_at:
            raise CrashError(f"killed after checkpoint {self.crash_at}")
        if self.decide_at is not None and len(points) == self.decide_at:
            return self.decision, f"{self.decision.value} by test"
        return Decision.CONTINUE, None
