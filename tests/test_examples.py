"""The example files the README tells a user to run are valid requests."""

from __future__ import annotations

import json
from pathlib import Path

from app.schemas.jobs import JobRequest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_quick_job_is_a_valid_job_request_on_the_quick_model() -> None:
    body = json.loads((EXAMPLES / "quick-job.json").read_text(encoding="utf-8"))
    request = JobRequest.model_validate(body)
    assert request.model == "quick-llama"
    assert request.dataset.path == "quick-llama.txt"
    serve = (EXAMPLES.parent / "scripts" / "serve.sh").read_text(encoding="utf-8")
    assert "quick-llama" in serve  # the model make run makes on its first start
