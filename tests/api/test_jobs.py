"""Job routes through the real app: submit, read, list, cancel, observations; validation,
paths, keys and a dead broker (no worker runs here: the embedded broker keeps the message)."""

from __future__ import annotations

import base64
import builtins
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core import queue
from app.core.capacity import capacity_from_config
from app.core.config import get_settings
from app.core.pruning import OutOfReachError, plan_pruning
from app.db.session import reset_engines, session_scope
from app.main import create_app
from app.repositories import jobs as jobs_repo
from app.repositories import observations as observations_repo
from tests.api.conftest import error_message, strict_json, validation_error
from tests.core.test_memory import LLAMA_8B, QWEN_7B
from tests.shapes import LLAMA_31_8B, SMOLLM2_135M

API_JOB_FIELDS = {
    "id",
    "status",
    "progress",
    "measured",
    "artifact",
    "error",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
}


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """A model folder and a corpus inside the configured roots, and a secret outside them."""
    settings = get_settings()
    model = Path(settings.model_root) / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    data = Path(settings.data_root)
    data.mkdir(parents=True)
    (data / "corpus.txt").write_text("some text\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text("{}")
    return {"model": model, "data": data, "outside": outside}


@pytest.fixture
def jobs_client(sqlite_url: str, roots: dict[str, Path]) -> Iterator[TestClient]:
    queue.reset_client()
    with TestClient(create_app()) as test_client:
        yield test_client
    queue.reset_client()


def job_request(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "tiny",
        "method": "depth",
        "rho": 0.25,
        "tokens": 4096,
        "dataset": {"path": "corpus.txt"},
        "checkpoints": 4,
    }
    body.update(overrides)
    return body


def _message_files() -> list[Path]:
    return sorted((Path(get_settings().broker_dir) / "messages").glob("*.msg"))


def test_submit_answers_202_with_location_and_sends_the_id(jobs_client: TestClient) -> None:
    response = jobs_client.post("/jobs/prune-finetune", json=job_request())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and len(body["id"]) == 32
    assert response.headers["location"] == f"/jobs/{body['id']}"
    messages = _message_files()
    assert len(messages) == 1
    envelope = json.loads(messages[0].read_text())
    assert envelope["headers"]["task"] == "workers.tasks.run_job"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [body["id"]]
    with session_scope() as session:
        job = jobs_repo.get(session, body["id"])
        assert job is not None and job.enqueued_at is not None
        assert job.family == "llama"  # the model config's model_type when no family is given


def test_read_job_has_the_api_shape(jobs_client: TestClient) -> None:
    job_id = jobs_client.post("/jobs/prune-finetune", json=job_request(family="t")).json()["id"]
    response = jobs_client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= API_JOB_FIELDS
    assert body["progress"] == {
        "tokens_done": 0,
        "tokens_total": 4096,
        "fraction": 0.0,
        "eta_s": None,
    }
    assert (body["status"], body["family"], body["method"], body["attempts"]) == (
        "queued",
        "t",
        "depth",
        0,
    )
    assert body["measured"] is None and body["stopped_early"] is False
    assert body["warnings"] == []


def test_idempotency_key_returns_the_same_job(jobs_client: TestClient) -> None:
    first = jobs_client.post("/jobs/prune-finetune", json=job_request(idempotency_key="k-1"))
    second = jobs_client.post("/jobs/prune-finetune", json=job_request(idempotency_key="k-1"))
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert len(_message_files()) == 1


def test_list_jobs_filters_by_status(jobs_client: TestClient) -> None:
    ids = [
        jobs_client.post("/jobs/prune-finetune", json=job_request()).json()["id"] for _ in range(3)
    ]
    assert jobs_client.post(f"/jobs/{ids[0]}/cancel").status_code == 202
    queued = jobs_client.get("/jobs", params={"status": "queued"}).json()
    cancelled = jobs_client.get("/jobs", params={"status": "cancelled"}).json()
    assert queued["total"] == 2 and {j["id"] for j in queued["items"]} == set(ids[1:])
    assert cancelled["total"] == 1 and cancelled["items"][0]["id"] == ids[0]
    assert jobs_client.get("/jobs", params={"limit": 1}).json()["total"] == 3
    bogus = validation_error(jobs_client.get("/jobs", params={"status": "bogus"}))
    assert bogus["loc"] == ["query", "status"] and "queued" in bogus["msg"]


def test_cancel_queued_job_is_final_at_once_and_a_second_cancel_conflicts(
    jobs_client: TestClient,
) -> None:
    job_id = jobs_client.post("/jobs/prune-finetune", json=job_request()).json()["id"]
    response = jobs_client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    again = jobs_client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_unknown_ids_are_404_naming_the_id(jobs_client: TestClient) -> None:
    for response in (
        jobs_client.get("/jobs/nope"),
        jobs_client.post("/jobs/nope/cancel"),
        jobs_client.get("/jobs/nope/observations"),
    ):
        assert error_message(response, 404) == "job 'nope' does not exist"


def test_job_observations_are_the_points_of_its_run(jobs_client: TestClient) -> None:
    job_id = jobs_client.post("/jobs/prune-finetune", json=job_request()).json()["id"]
    row = {"family": "llama", "method": "depth", "n0": 1e6, "rho": 0.25, "l0": 3.0}
    with session_scope() as session:
        observations_repo.upsert(
            session,
            [
                {**row, "run_id": job_id, "tokens": 200.0, "loss": 3.4, "source": "job"},
                {**row, "run_id": job_id, "tokens": 100.0, "loss": 3.5, "source": "job"},
                {**row, "run_id": "other", "tokens": 100.0, "loss": 3.5},
            ],
        )
    body = jobs_client.get(f"/jobs/{job_id}/observations").json()
    assert body["total"] == 2
    assert [o["tokens"] for o in body["items"]] == [100.0, 200.0]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened through open()/io.open() during the test."""
    seen: list[str] = []
    real_open: Callable[..., Any] = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


@pytest.mark.parametrize(
    "field",
    ["model", "dataset"],
)
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_paths_outside_the_roots_are_422_and_nothing_is_read(
    jobs_client: TestClient,
    roots: dict[str, Path],
    opened: list[str],
    field: str,
    kind: str,
) -> None:
    outside = roots["outside"]
    target = outside / ("model" if field == "model" else "secret.txt")
    if kind == "dotdot":
        base = roots["model"].parent if field == "model" else roots["data"]
        user_path = str(Path("..") / ".." / Path(*target.relative_to(base.parent.parent).parts))
    elif kind == "absolute":
        user_path = str(target)
    else:
        base = roots["model"].parent if field == "model" else roots["data"]
        (base / "link").symlink_to(target)
        user_path = "link"
    body = job_request()
    if field == "model":
        body["model"] = user_path
    else:
        body["dataset"] = {"path": user_path}
    response = jobs_client.post("/jobs/prune-finetune", json=body)
    assert response.status_code == 422, response.text
    assert "outside" in response.json()["detail"]
    assert not [p for p in opened if p.startswith(str(outside))]
    assert jobs_client.get("/jobs").json()["total"] == 0


def test_hub_ids_are_refused_with_the_reason(jobs_client: TestClient) -> None:
    response = jobs_client.post("/jobs/prune-finetune", json=job_request(model="org/some-model"))
    assert "hub models are disabled" in error_message(response, 422)


def test_two_four_above_its_reach_is_422_naming_the_maximum(jobs_client: TestClient) -> None:
    # The model's config is not one the reach reader knows: the bound that holds for every
    # model (half of a weight) applies, with the same message the worker gives.
    response = jobs_client.post("/jobs/prune-finetune", json=job_request(method="2:4", rho=0.6))
    assert response.status_code == 422
    assert "2:4 sparsity can zero at most rho=0.5000" in response.json()["detail"]
    assert "requested rho=0.6000" in response.json()["detail"]
    assert (
        jobs_client.post("/jobs/prune-finetune", json=job_request(method="2:4", rho=0.3))
    ).status_code == 202


def test_two_four_above_this_models_reach_is_422_before_anything_is_queued(
    jobs_client: TestClient, roots: dict[str, Path]
) -> None:
    # A small Llama whose embeddings and head are a large share: 2:4 reaches far below 0.5.
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "vocab_size": 256,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    model = roots["model"].parent / "sized"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    capacity = capacity_from_config(config)
    assert capacity is not None and capacity.max_rho_2of4 < 0.45
    above = round(capacity.max_rho_2of4 + 0.01, 4)
    response = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="sized", method="2:4", rho=above)
    )
    assert response.status_code == 422
    assert f"at most rho={capacity.max_rho_2of4:.4f}" in response.json()["detail"]
    assert jobs_client.get("/jobs").json()["total"] == 0 and _message_files() == []
    below = round(capacity.max_rho_2of4 - 0.01, 4)
    response = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="sized", method="2:4", rho=below)
    )
    assert response.status_code == 202


_SIZED_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "vocab_size": 256,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize("method", ["depth", "width", "2:4", "unstructured"])
def test_every_methods_reach_is_checked_at_submission_with_the_workers_plan(
    jobs_client: TestClient, roots: dict[str, Path], method: str
) -> None:
    model = roots["model"].parent / "sized"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_SIZED_LLAMA))
    max_rho = plan_pruning(_SIZED_LLAMA, method, 0.1).shape["max_rho"]
    above = round(max_rho + 0.15, 4)
    with pytest.raises(OutOfReachError):  # the plan the worker would make refuses it too
        plan_pruning(_SIZED_LLAMA, method, above)
    response = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="sized", method=method, rho=above)
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"rho={max_rho:.4f}" in detail and f"requested rho={above:.4f}" in detail
    assert jobs_client.get("/jobs").json()["total"] == 0 and _message_files() == []
    below = round(max_rho - 0.01, 4)
    response = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="sized", method=method, rho=below)
    )
    assert response.status_code == 202, response.text


def test_width_reach_at_llama_31_8b_shapes_is_checked_from_its_config(
    jobs_client: TestClient, roots: dict[str, Path]
) -> None:
    config = LLAMA_31_8B
    model = roots["model"].parent / "llama-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    max_rho = plan_pruning(config, "width", 0.2).shape["max_rho"]
    response = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="llama-8b", method="width", rho=0.95)
    )
    assert response.status_code == 422
    assert f"width pruning can remove at most rho={max_rho:.4f}" in response.json()["detail"]
    for method in ("depth", "width", "2:4", "unstructured"):
        # Devices large enough that memory is not what refuses it (test_a_job_that_does_not_fit_*).
        body = job_request(model="llama-8b", method=method, rho=0.3, device_memory_gib=1024)
        response = jobs_client.post("/jobs/prune-finetune", json=body)
        assert response.status_code == 202, (method, response.text)


def test_an_unreadable_config_leaves_structural_reach_to_the_worker(
    jobs_client: TestClient,
) -> None:
    # The roots fixture's model has a config without sizes: only 2:4's model-free bound holds.
    for method in ("depth", "width", "unstructured"):
        response = jobs_client.post(
            "/jobs/prune-finetune", json=job_request(method=method, rho=0.9)
        )
        assert response.status_code == 202, (method, response.text)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"method": "magic"}, ["body", "method"]),
        ({"rho": 0}, ["body", "rho"]),
        ({"rho": 1}, ["body", "rho"]),
        ({"tokens": 0}, ["body", "tokens"]),
        ({"tokens": -5}, ["body", "tokens"]),
        ({"checkpoints": 1}, ["body", "checkpoints"]),
        ({"stop_rule": {"kind": "marginal", "threshold": -1}}, ["body", "stop_rule", "threshold"]),
        ({"surprise": 1}, ["body", "surprise"]),
    ],
)
def test_invalid_requests_are_422_naming_the_field(
    jobs_client: TestClient, overrides: dict[str, Any], where: list[str]
) -> None:
    response = jobs_client.post("/jobs/prune-finetune", json=job_request(**overrides))
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [e["loc"] for e in errors] == [where] and all(e["msg"] for e in errors)
    assert jobs_client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize("field", ["rho", "tokens", "lr", "warmup_frac", "stop_rule.threshold"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_floats_are_422_with_valid_json(
    jobs_client: TestClient, field: str, value: str
) -> None:
    body = job_request(stop_rule={"kind": "marginal", "threshold": 1.0})
    placeholder = "__VALUE__"
    if field == "stop_rule.threshold":
        body["stop_rule"]["threshold"] = placeholder
    else:
        body[field] = placeholder
    raw = json.dumps(body).replace(f'"{placeholder}"', value)
    response = jobs_client.post(
        "/jobs/prune-finetune", content=raw, headers={"content-type": "application/json"}
    )
    error = validation_error(response)
    assert error["loc"] == ["body", *field.split(".")]
    assert "finite number" in error["msg"]
    strict_json(response.text)


def test_write_routes_need_the_api_key_when_one_is_set(
    jobs_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", "k3y")
    get_settings.cache_clear()
    missing = jobs_client.post("/jobs/prune-finetune", json=job_request())
    assert "needs the X-API-Key header" in error_message(missing, 401)
    accepted = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(), headers={"X-API-Key": "k3y"}
    )
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    assert "needs the X-API-Key header" in error_message(
        jobs_client.post(f"/jobs/{job_id}/cancel"), 401
    )
    wrong = jobs_client.post(f"/jobs/{job_id}/cancel", headers={"X-API-Key": "no"})
    assert "does not match" in error_message(wrong, 401)
    assert jobs_client.get("/jobs").json()["total"] == 1
    assert jobs_client.get(f"/jobs/{job_id}").status_code == 200  # reads stay open
    assert (
        jobs_client.post(f"/jobs/{job_id}/cancel", headers={"X-API-Key": "k3y"}).status_code == 202
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dead_broker_still_answers_202_and_leaves_the_job_for_the_reaper(
    jobs_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    get_settings.cache_clear()
    queue.reset_client()
    started = time.monotonic()
    response = jobs_client.post("/jobs/prune-finetune", json=job_request())
    assert response.status_code == 202
    assert time.monotonic() - started < 5.0
    with session_scope() as session:
        job = jobs_repo.get(session, response.json()["id"])
        assert job is not None and job.status == "queued" and job.enqueued_at is None


def test_a_database_that_cannot_store_the_job_is_503(
    jobs_client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty database file: the jobs table does not exist, so the write fails.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    get_settings.cache_clear()
    reset_engines()
    response = jobs_client.post("/jobs/prune-finetune", json=job_request())
    assert response.status_code == 503
    assert "not queued" in response.json()["detail"]


# --------------------------------------------------------------------------- dry run, admission


def _model_dir(roots: dict[str, Path], name: str, config: dict[str, Any]) -> str:
    model = roots["model"].parent / name
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    return name


def test_a_dry_run_answers_200_with_the_plan_and_memory_and_stores_nothing(
    jobs_client: TestClient, roots: dict[str, Path]
) -> None:
    name = _model_dir(roots, "llama-8b", LLAMA_8B)
    body = job_request(
        model=name, method="width", seq_len=2048, batch_size=4, devices=2,
        activation_checkpointing=True, dry_run=True, idempotency_key="k",
    )  # fmt: skip
    response = jobs_client.post("/jobs/prune-finetune", json=body)
    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    answer = strict_json(response.text)
    assert set(answer) == {"n0", "plan", "memory", "warnings"}
    plan = plan_pruning(LLAMA_8B, "width", 0.25)
    assert answer["n0"] == plan.n0 == 8_030_261_248
    assert answer["plan"]["rho"] == plan.rho and answer["plan"]["shape"] == plan.shape
    mem = answer["memory"]
    assert set(mem) >= {"per_device_gib", "device_gib", "fits", "min_devices", "breakdown"}
    assert mem["device_gib"] == 80.0 and mem["devices"] == 2 and mem["fits"] is True
    assert mem["min_devices"] == 2 and answer["warnings"] == []
    assert sum(mem["breakdown"].values()) == pytest.approx(mem["per_device_gib"], abs=1e-3)
    # Nothing stored, nothing sent; the same key then submits for real.
    assert jobs_client.get("/jobs").json()["total"] == 0 and _message_files() == []
    real = jobs_client.post("/jobs/prune-finetune", json={**body, "dry_run": False})
    assert real.status_code == 202 and jobs_client.get("/jobs").json()["total"] == 1


def test_a_dry_run_checks_what_a_submission_checks(
    jobs_client: TestClient, roots: dict[str, Path]
) -> None:
    name = _model_dir(roots, "llama-8b", LLAMA_8B)
    far = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model=name, method="width", rho=0.95, dry_run=True)
    )
    assert "width pruning can remove at most rho=" in error_message(far, 422)
    outside = jobs_client.post(
        "/jobs/prune-finetune", json=job_request(model="../outside/model", dry_run=True)
    )
    assert "outside" in error_message(outside, 422)
    # The fixture's model has no shape in its config: no plan, no estimate, and why.
    unread = jobs_client.post("/jobs/prune-finetune", json=job_request(dry_run=True))
    assert unread.status_code == 200
    assert unread.json()["memory"] is None and unread.json()["plan"] is None
    assert "no plan and no memory estimate" in unread.json()["warnings"][0]
    assert jobs_client.get("/jobs").json()["total"] == 0


def test_a_job_that_does_not_fit_is_422_naming_its_need_the_device_and_the_fewest_devices(
    jobs_client: TestClient, roots: dict[str, Path]
) -> None:
    name = _model_dir(roots, "llama-8b", LLAMA_8B)
    body = job_request(model=name, method="width", seq_len=2048, batch_size=4,
                       activation_checkpointing=True)  # fmt: skip
    dry = jobs_client.post("/jobs/prune-finetune", json={**body, "dry_run": True}).json()
    mem = dry["memory"]
    assert mem["fits"] is False and mem["min_devices"] == 2
    assert dry["warnings"][0].startswith("does not fit: the job needs")
    detail = error_message(jobs_client.post("/jobs/prune-finetune", json=body), 422)
    assert f"needs {mem['per_device_gib']:.1f} GiB per device on 1 device" in detail
    assert "more than the 80 GiB of a device" in detail
    assert "it fits on 2 devices (the fewest)" in detail
    none = jobs_client.post("/jobs/prune-finetune", json={**body, "device_memory_gib": 8})
    assert "fits on no count of devices from 1 to 1024" in error_message(none, 422)
    assert jobs_client.get("/jobs").json()["total"] == 0 and _message_files() == []
    for fits in ({"devices": 2}, {"device_memory_gib": 141}):
        assert jobs_client.post("/jobs/prune-finetune", json={**body, **fits}).status_code == 202


def test_the_device_memory_setting_is_the_default(
    jobs_client: TestClient, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _model_dir(roots, "qwen-7b", QWEN_7B)
    body = job_request(model=name, method="depth", seq_len=2048, batch_size=4,
                       activation_checkpointing=True, dry_run=True)  # fmt: skip
    assert jobs_client.post("/jobs/prune-finetune", json=body).json()["memory"]["fits"] is False
    monkeypatch.setenv("DEVICE_MEMORY_GIB", "192")
    get_settings.cache_clear()
    answer = jobs_client.post("/jobs/prune-finetune", json=body).json()["memory"]
    assert answer["device_gib"] == 192.0 and answer["fits"] is True


@pytest.mark.parametrize("value", [0, -1, 2_000_000, "NaN", "Infinity"])
def test_device_memory_gib_is_bounded_and_finite(jobs_client: TestClient, value: object) -> None:
    raw = json.dumps(job_request(device_memory_gib="__V__")).replace('"__V__"', str(value))
    response = jobs_client.post(
        "/jobs/prune-finetune", content=raw, headers={"content-type": "application/json"}
    )
    assert validation_error(response)["loc"] == ["body", "device_memory_gib"]


@pytest.mark.parametrize("name", ["Llama-3.1-8B", "Qwen2.5-7B", "SmolLM2-135M"])
def test_dry_runs_at_published_shapes_on_1_2_4_8_devices(
    jobs_client: TestClient, roots: dict[str, Path], name: str
) -> None:
    config = {"Llama-3.1-8B": LLAMA_8B, "Qwen2.5-7B": QWEN_7B, "SmolLM2-135M": SMOLLM2_135M}[name]
    model = _model_dir(roots, name, config)
    answers = {}
    for devices in (1, 2, 4, 8):
        body = job_request(
            model=model, method="width", seq_len=2048, batch_size=4, devices=devices,
            activation_checkpointing=True, dry_run=True,
        )  # fmt: skip
        response = jobs_client.post("/jobs/prune-finetune", json=body)
        assert response.status_code == 200, response.text
        answers[devices] = response.json()["memory"]
    fewest = {a["min_devices"] for a in answers.values()}
    assert len(fewest) == 1  # the same job, whatever count it asks for
    (n,) = fewest
    for devices, mem in answers.items():
        assert mem["fits"] == (n is not None and devices >= n)
        assert mem["preparation_gib"] == answers[1]["preparation_gib"]
    training = [answers[d]["training_gib"] for d in (1, 2, 4, 8)]
    assert training[1:] == sorted(training[1:], reverse=True)
    plan = plan_pruning(config, "width", 0.25)
    for devices, mem in answers.items():
        # fp32 weights at the peak: the pruned model's shard, or the dense model on device 0.
        held = 4 * plan.n_after / devices if mem["phase"] == "training" else 4 * plan.n0
        assert mem["breakdown"]["weights"] == pytest.approx(held / 2**30, abs=1e-4)
    if name == "SmolLM2-135M":
        assert n == 1
    else:
        assert n is not None and n > 1 and not answers[1]["fits"]
