"""`GET /families`: families, methods, spans and default fits from the stored observations."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.cli import main as cli_main
from app.core.config import get_settings
from app.db.session import create_engine_for, make_sessionmaker
from app.repositories import observations as observations_repo
from tests.api.conftest import FAMILY, RHOS, SIZES, TOKENS, error_message, synthetic_observations


def test_an_empty_database_has_no_families(any_client: TestClient) -> None:
    response = any_client.get("/families")
    assert response.status_code == 200
    assert response.json() == {"families": []}


def test_families_give_each_methods_spans_and_default_fit(
    seeded_client: TestClient, seeded: dict[str, str]
) -> None:
    response = seeded_client.get("/families")
    assert response.status_code == 200
    (family,) = response.json()["families"]
    assert family["family"] == FAMILY
    assert family["reference"] is False  # synthetic uploads, not shipped data
    assert family["protocols"] == ["eval-1"]
    per_method = len(SIZES) * len(RHOS)
    assert family["n_runs"] == 2 * per_method
    assert family["n_observations"] == 2 * per_method * len(TOKENS)
    assert family["n0"] == [min(SIZES), max(SIZES)]
    assert family["rho"] == [min(RHOS), max(RHOS)]
    assert family["tokens"] == [min(TOKENS), max(TOKENS)]
    assert family["l0"][0] < family["l0"][1]
    methods = {m["method"]: m for m in family["methods"]}
    assert sorted(methods) == ["depth", "width"]
    for method, fit_id in seeded.items():
        assert methods[method]["default_fit_id"] == fit_id
        assert methods[method]["default_form"] == "p2"
        assert methods[method]["n_runs"] == per_method
    assert seeded_client.get(f"/families/{FAMILY}").json() == family


def test_excluded_points_and_methods_without_default_are_reported_as_such(
    any_client: TestClient, db_url: str
) -> None:
    rows = synthetic_observations("2:4")
    rows[0]["excluded"] = True  # as a job stores a checkpoint below L0
    engine = create_engine_for(db_url)
    with make_sessionmaker(engine)() as session:
        observations_repo.insert_ignore(session, rows)
        session.commit()
    engine.dispose()
    (family,) = any_client.get("/families").json()["families"]
    (method,) = family["methods"]
    assert method["method"] == "2:4"
    assert method["n_observations"] == len(rows) - 1
    assert method["default_fit_id"] is None and method["default_form"] is None


def test_an_unknown_family_is_a_404(client: TestClient) -> None:
    response = client.get("/families/nope")
    assert "GET /families" in error_message(response, 404)


def test_a_shipped_family_answers_at_once_after_a_first_migrate(client: TestClient) -> None:
    """What `make run` gives on an empty database: the reference laws answer /predict (with an
    interval), /recommend and /plan, and /families lists them as reference data."""
    assert cli_main(["migrate"]) == 0
    families = {f["family"]: f for f in client.get("/families").json()["families"]}
    wide = families["wide-llama"]
    assert wide["reference"] is True
    depth = {m["method"]: m for m in wide["methods"]}["depth"]
    assert depth["default_fit_id"] is not None
    n0 = wide["n0"][1]
    l0 = wide["l0"][0]
    point = {"n0": n0, "rho": 0.25, "l0": l0, "tokens": wide["tokens"][1]}
    predicted = client.post(
        "/predict",
        json={"family": "wide-llama", "method": "depth", "points": [point], "interval": 0.8},
    )
    assert predicted.status_code == 200, predicted.text
    body = predicted.json()
    assert body["fit_id"] == depth["default_fit_id"]
    assert body["lower"][0] < body["loss"][0] < body["upper"][0]
    recommended = client.post(
        "/recommend",
        json={
            "family": "wide-llama",
            "method": "depth",
            "n0": n0,
            "rho": 0.25,
            "l0": l0,
            "rule": "gap",
            "threshold": 0.05,
            "interval": 0.8,
        },
    )
    assert recommended.status_code == 200, recommended.text
    assert recommended.json()["tokens"] > 0
    plan = client.post(
        "/plan",
        json={"family": "wide-llama", "n0": n0, "l0": l0, "rho_min": 0.15, "token_budget": 1e6},
    )
    assert plan.status_code == 200, plan.text
    assert {o["method"] for o in plan.json()["options"]} <= {"depth", "width", "2:4"}


def test_a_first_migrate_leaves_the_database_empty_when_told_to(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOAD_REFERENCE", "false")
    get_settings.cache_clear()
    assert cli_main(["migrate"]) == 0
    assert client.get("/families").json() == {"families": []}


def test_every_worked_example_answers_on_a_fresh_install(client: TestClient) -> None:
    """The examples in /docs ("Try it out") answer 200 on the database a first start makes:
    those naming a family use a shipped one."""
    assert cli_main(["migrate"]) == 0
    paths = client.get("/openapi.json").json()["paths"]
    tried = 0
    for path in ("/predict", "/recommend", "/plan"):
        media = paths[path]["post"]["requestBody"]["content"]["application/json"]
        for name, example in media["examples"].items():
            response = client.post(path, json=example["value"])
            assert response.status_code == 200, (path, name, response.text)
            tried += "family" in example["value"]
    assert tried >= 4
