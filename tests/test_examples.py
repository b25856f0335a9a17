"""The example files the README tells a user to run are valid requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.schemas.jobs import JobRequest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("name", "recipe"),
    [
        ("quick-job.json", "full"),
        ("quick-job-lora.json", "lora"),
        ("quick-job-distill.json", "distill"),
    ],
)
def test_the_quick_jobs_are_valid_job_requests_on_the_quick_model(name: str, recipe: str) -> None:
    body = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    request = JobRequest.model_validate(body)
    assert request.model == "quick-llama"
    assert request.dataset.path == "quick-llama.txt"
    assert request.recipe.kind == recipe
    serve = (EXAMPLES.parent / "scripts" / "serve.sh").read_text(encoding="utf-8")
    assert "quick-llama" in serve  # the model make run makes on its first start
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert f"examples/{name}" in readme
