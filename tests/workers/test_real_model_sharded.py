"""The real-scale path at small scale: a real pretrained LLM, a tokenised dataset, two devices.

SmolLM2-135M (tests/real_model.py) is tokenised-for with `p2law tokenize`, then a depth job asks
for two CPU processes: torchrun, FSDP2 over gloo, a sharded checkpoint per evaluation, the
artifact gathered back into one HF directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import PROJECT_ROOT, get_settings
from app.db.session import session_scope
from app.repositories import observations as observations_repo
from app.schemas.jobs import JobRequest
from app.services import jobs as service
from tests.real_model import MODEL_NAME, cached_model, install_model
from tests.workers.conftest import job_row
from tests.workers.test_real_model import LAYER_PARAMS, check_gqa_shapes
from workers.attempt import attempt_job

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("real-model")]

SEQ_LEN, BATCH = 64, 2


def test_real_model_on_a_tokenised_dataset_trains_on_two_processes(sqlite_url: str) -> None:
    from transformers import AutoModelForCausalLM

    from workers.ml.corpus import write_corpus

    settings = get_settings()
    install_model(cached_model(), Path(settings.model_root) / MODEL_NAME)
    write_corpus(Path(settings.data_root) / "stdlib.txt", max_bytes=60_000)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "tokenize",
            "stdlib.txt",
            "--model",
            MODEL_NAME,
            "--name",
            "stdlib-smollm2",
        ],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )
    request = JobRequest.model_validate(
        {
            "model": MODEL_NAME,
            "method": "depth",
            "rho": 0.25,
            # Four optimizer steps of 2 devices x 2 sequences x 64 tokens, evaluated after 1 and 4.
            "tokens": 4 * 2 * BATCH * SEQ_LEN,
            "dataset": {"path": "stdlib-smollm2", "eval_tokens": 4 * SEQ_LEN},
            "checkpoints": 2,
            "seq_len": SEQ_LEN,
            "batch_size": BATCH,
            "calib_samples": 4,
            "lr": 2e-5,
            "device": "cpu",
            "devices": 2,
            "family": MODEL_NAME,
        }
    )
    with session_scope() as session:
        job_id = service.submit(session, request)[0].id
    assert attempt_job(job_id) == "succeeded", job_row(job_id).error
    job = job_row(job_id)
    measured = job.measured
    assert abs(measured["rho"] - 0.25) <= LAYER_PARAMS / measured["n0"]
    assert measured["loss_after_prune"] > measured["l0"]
    with session_scope() as session:
        rows, _ = observations_repo.list_page(session, run_id=job_id)
    assert [int(r.tokens) for r in rows] == [s * 2 * BATCH * SEQ_LEN for s in (1, 4)]
    model = AutoModelForCausalLM.from_pretrained(job.artifact, local_files_only=True)
    check_gqa_shapes(model)
    assert model.config.num_hidden_layers == 30 - len(measured["details"]["removed_layers"])
