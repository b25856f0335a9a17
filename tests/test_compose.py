"""docker-compose.yml: the services parse, and the GPU workers run one job at a time on the GPUs
they reserve (`docker compose config` needs an engine; the YAML is read here instead)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return dict(loaded["services"])


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _gpu_reservation(service: dict[str, Any]) -> dict[str, Any]:
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    return dict(device)


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert {"db", "redis", "migrate", "api", "worker-gpu", "worker-gpus", "worker-cpu"} <= set(
        services
    )


@pytest.mark.parametrize("name", ["worker-gpu", "worker-gpus"])
def test_gpu_workers_run_one_job_at_a_time_on_the_gpu_queue(
    services: dict[str, Any], name: str
) -> None:
    command = services[name]["command"]
    assert _option(command, "-Q") == "gpu"
    assert _option(command, "--concurrency") == "1"
    assert _option(command, "--max-tasks-per-child") == "1"


def test_the_one_gpu_worker_is_the_default(services: dict[str, Any]) -> None:
    assert "profiles" not in services["worker-gpu"]
    assert _gpu_reservation(services["worker-gpu"])["count"] == 1


def test_the_multi_gpu_worker_advertises_the_gpus_it_reserves(services: dict[str, Any]) -> None:
    worker = services["worker-gpus"]
    assert worker["profiles"] == ["multi-gpu"]
    ids = _gpu_reservation(worker)["device_ids"]
    assert len(ids) == len(set(ids)) > 1
    default = re.fullmatch(r"\$\{WORKER_DEVICES:-(\d+)\}", worker["environment"]["WORKER_DEVICES"])
    assert default is not None and int(default.group(1)) == len(ids)
    # Same database, broker and roots as every other service.
    shared = services["worker-gpu"]["environment"]
    assert {k: worker["environment"][k] for k in shared} == shared
    assert worker["shm_size"]
