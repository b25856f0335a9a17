"""A job's recovery recipe at submission: the request's rules (pydantic's 422s), the LoRA target
modules checked against the model's config.json, and a dry run's memory by recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import error_message
from tests.api.test_jobs import job_request, jobs_client, roots  # noqa: F401 (fixtures)
from tests.shapes import LLAMA_31_8B

PROJECTIONS = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"


def _llama(roots: dict[str, Path]) -> str:  # noqa: F811 (the fixture)
    model = roots["model"].parent / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_31_8B))
    return "llama-8b"


@pytest.mark.parametrize(
    ("recipe", "where"),
    [
        ({"kind": "lora", "rank": 0}, ["body", "recipe", "lora", "rank"]),
        ({"kind": "lora", "alpha": 0}, ["body", "recipe", "lora", "alpha"]),
        ({"kind": "lora", "alpha": -2}, ["body", "recipe", "lora", "alpha"]),
        ({"kind": "distill", "temperature": 0}, ["body", "recipe", "distill", "temperature"]),
        ({"kind": "distill", "temperature": -1}, ["body", "recipe", "distill", "temperature"]),
        ({"kind": "distill", "alpha": 1.5}, ["body", "recipe", "distill", "alpha"]),
        ({"kind": "distill", "alpha": -0.1}, ["body", "recipe", "distill", "alpha"]),
        ({"kind": "qlora"}, ["body", "recipe"]),
        ({"kind": "full", "rank": 8}, ["body", "recipe", "full", "rank"]),
    ],
)
def test_a_bad_recipe_is_a_422_naming_the_field_and_nothing_is_stored(
    jobs_client: TestClient,  # noqa: F811 (the fixture)
    recipe: dict[str, Any],
    where: list[str],
) -> None:
    response = jobs_client.post("/jobs/prune-finetune", json=job_request(recipe=recipe))
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [where], errors
    assert jobs_client.get("/jobs").json()["total"] == 0


def test_a_lora_target_the_model_does_not_have_is_a_422_naming_it_and_those_it_has(
    jobs_client: TestClient,  # noqa: F811 (the fixture)
    roots: dict[str, Path],  # noqa: F811 (the fixture)
) -> None:
    name = _llama(roots)
    recipe = {"kind": "lora", "target_modules": ["q_proj", "query_key_value"]}
    for dry_run in (False, True):
        body = job_request(model=name, recipe=recipe, device_memory_gib=1024, dry_run=dry_run)
        message = error_message(jobs_client.post("/jobs/prune-finetune", json=body), 422)
        assert "'query_key_value'" in message and "'q_proj'" not in message
        assert PROJECTIONS in message
    assert jobs_client.get("/jobs").json()["total"] == 0
    good = {"kind": "lora", "target_modules": ["q_proj", "down_proj"]}
    body = job_request(model=name, recipe=good, device_memory_gib=1024)
    assert jobs_client.post("/jobs/prune-finetune", json=body).status_code == 202


def test_the_stored_request_keeps_its_recipe(
    jobs_client: TestClient,  # noqa: F811 (the fixture)
) -> None:
    body = job_request(recipe={"kind": "distill", "temperature": 2.0})
    job = jobs_client.post("/jobs/prune-finetune", json=body).json()
    stored = jobs_client.get(f"/jobs/{job['id']}").json()["request"]["recipe"]
    assert stored == {"kind": "distill", "temperature": 2.0, "alpha": 1.0}


def test_a_dry_runs_memory_counts_the_recipe(
    jobs_client: TestClient,  # noqa: F811 (the fixture)
    roots: dict[str, Path],  # noqa: F811 (the fixture)
) -> None:
    name = _llama(roots)

    def memory(recipe: dict[str, Any]) -> dict[str, Any]:
        body = job_request(
            model=name, method="width", seq_len=2048, batch_size=2, devices=1,
            activation_checkpointing=True, dry_run=True, recipe=recipe,
        )  # fmt: skip
        response = jobs_client.post("/jobs/prune-finetune", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json()["memory"])

    full, lora, distill = (memory({"kind": k}) for k in ("full", "lora", "distill"))
    assert full["breakdown"]["adapters"] == 0 and full["breakdown"]["teacher"] == 0
    assert lora["training_gib"] < full["training_gib"] < distill["training_gib"]
    # On one device post-training is the peak of each, so its parts are the breakdown's.
    assert {full["phase"], lora["phase"], distill["phase"]} == {"training"}
    assert lora["breakdown"]["adapters"] > 0 and distill["breakdown"]["teacher"] > 0
    assert lora["breakdown"]["optimizer"] == 0 < full["breakdown"]["optimizer"]
    # The fewest devices follow: LoRA fits one, full needs two, distillation four.
    assert (lora["min_devices"], full["min_devices"], distill["min_devices"]) == (1, 2, 4)
    for mem in (full, lora, distill):
        assert sum(mem["breakdown"].values()) == pytest.approx(mem["per_device_gib"], abs=1e-3)
