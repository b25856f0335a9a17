"""The bad-input catalogue (docs/reliability.md): non-finite numbers, oversized bodies; the server
answers every one with a JSON error and keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.main import create_app
from tests.api.conftest import LAW, error_message, validation_error

LAW_JSON = json.dumps({"form": "p2", "params": LAW})
POINT = '{"n0": %s, "rho": %s, "l0": %s, "tokens": %s}'
OBS = (
    '{"observations": [{"run_id": "r", "family": "f", "method": "m", '
    '"n0": %s, "rho": %s, "l0": %s, "tokens": %s, "loss": %s}]}'
)
REC = (
    '{"law": ' + LAW_JSON + ', "n0": %s, "rho": %s, "l0": %s, "rule": "%s", '
    '"threshold": %s, "target_loss": %s, "max_tokens": %s, "interval": %s}'
)
PLAN = (
    '{"family": "f", "n0": %s, "l0": %s, "rho_min": %s, "token_budget": %s, '
    '"rho_grid": [%s], "token_grid": [%s], "interval": %s}'
)


def _fill(template: str, good: list[str], index: int, bad: str) -> str:
    values = list(good)
    values[index] = bad
    return template % tuple(values)


PREDICT_POINTS = '{"law": ' + LAW_JSON + ', "points": [' + POINT + "]}"
PREDICT_COLUMNS = (
    '{"law": ' + LAW_JSON + ', "columns": {"n0": [%s], "rho": [%s], "l0": [%s], "tokens": [%s]}}'
)
GOOD_POINT = '{"n0": 1e9, "rho": 0.2, "l0": 2, "tokens": 1e8}'
PREDICT_INTERVAL = '{"law": ' + LAW_JSON + ', "points": [' + GOOD_POINT + '], "interval": %s}'
BAD = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]

#: (route, field name, body template, good values); each case makes one field bad.
FIELDS: list[tuple[str, str, str, list[str]]] = []
_point_good = ["1e9", "0.25", "2.5", "1e8"]
for name in ("n0", "rho", "l0", "tokens"):
    FIELDS.append(
        (
            "/predict",
            f"points.{name}",
            '{"law": ' + LAW_JSON + ', "points": [' + POINT + "]}",
            _point_good,
        )
    )
    FIELDS.append(
        (
            "/predict",
            f"columns.{name}",
            '{"law": '
            + LAW_JSON
            + ', "columns": {"n0": [%s], "rho": [%s], "l0": [%s], "tokens": [%s]}}',
            _point_good,
        )
    )
FIELDS.append(
    (
        "/predict",
        "interval",
        '{"law": '
        + LAW_JSON
        + ', "points": [{"n0": 1e9, "rho": 0.2, "l0": 2, "tokens": 1e8}], "interval": %s}',
        ["0.8"],
    )
)
for param in LAW:
    body = (
        '{"law": {"form": "p2", "params": {'
        + ", ".join(f'"{k}": {"%s" if k == param else v}' for k, v in LAW.items())
        + '}}, "points": [{"n0": 1e9, "rho": 0.2, "l0": 2, "tokens": 1e8}]}'
    )
    FIELDS.append(("/predict", f"law.params.{param}", body, [str(LAW[param])]))
_rec_good = ["1e9", "0.25", "2.5", "gap", "0.01", "2.7", "1e12", "0.8"]
for name in ("n0", "rho", "l0", "threshold", "target_loss", "max_tokens", "interval"):
    FIELDS.append(("/recommend", name, REC, _rec_good))
_plan_good = ["1e9", "2.2", "0.2", "1e9", "0.3", "1e8", "0.8"]
for name in ("n0", "l0", "rho_min", "token_budget", "rho_grid", "token_grid", "interval"):
    FIELDS.append(("/plan", name, PLAN, _plan_good))
_obs_good = ["1e9", "0.25", "2.5", "1e8", "2.7"]
for name in ("n0", "rho", "l0", "tokens", "loss"):
    FIELDS.append(("/observations", name, OBS, _obs_good))
FIELDS.append(("/fits", "bootstrap", '{"bootstrap": %s}', ["10"]))
FIELDS.append(("/fits", "seed", '{"seed": %s}', ["1"]))

_SLOTS: dict[str, list[str | None]] = {
    "/predict": ["n0", "rho", "l0", "tokens"],
    "/recommend": ["n0", "rho", "l0", None, "threshold", "target_loss", "max_tokens", "interval"],
    "/plan": ["n0", "l0", "rho_min", "token_budget", "rho_grid", "token_grid", "interval"],
    "/observations": ["n0", "rho", "l0", "tokens", "loss"],
}


def _slot(route: str, field: str, good: list[str]) -> int:
    if len(good) == 1:
        return 0
    return _SLOTS[route].index(field.rsplit(".", maxsplit=1)[-1])


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("case", FIELDS, ids=[f"{r}:{f}" for r, f, _, _ in FIELDS])
def test_non_finite_numbers_are_422_naming_the_field_in_a_json_body(
    client: TestClient, case: tuple[str, str, str, list[str]], bad: str
) -> None:
    route, field, template, good = case
    body = _fill(template, good, _slot(route, field, good), bad)
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    error = validation_error(response)
    names = [part for part in error["loc"] if isinstance(part, str)]
    assert names[0] == "body" and names[-1] == field.rsplit(".", maxsplit=1)[-1], error
    assert error["msg"] == "Input should be a finite number", error
    # The offending input is echoed back as text, since JSON has no spelling for it.
    assert error["input"] in ("nan", "inf", "-inf"), error


def test_the_good_bodies_of_the_catalogue_are_accepted(client: TestClient) -> None:
    """The catalogue's templates are valid with the good values, so each 422 above is due to the
    one bad field (the fits and plan ones fail later for want of data, not of validation)."""
    checked = 0
    for route, field, template, good in FIELDS:
        body = template % tuple(good)
        response = client.post(route, content=body, headers={"content-type": "application/json"})
        if route in ("/fits", "/plan"):
            # Past validation: the service's own 422 says what data is missing.
            missing = {"/fits": "observations", "/plan": "POST /fits"}[route]
            assert missing in error_message(response, 422), (route, field)
        else:
            expected = 201 if route == "/observations" else 200
            assert response.status_code == expected, (route, field, response.text)
        checked += 1
    assert checked == len(FIELDS)


@pytest.fixture
def small_client(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MAX_BODY_BYTES", "2000")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        yield client


def test_oversized_body_is_413_and_the_server_keeps_serving(small_client: TestClient) -> None:
    points = [{"n0": 1e9, "rho": 0.25, "l0": 2.5, "tokens": 1e8}] * 100
    response = small_client.post("/predict", json={"law": json.loads(LAW_JSON), "points": points})
    message = error_message(response, 413)
    assert message == "request body is larger than the limit of 2000 bytes"
    assert small_client.get("/health").status_code == 200
    ok = small_client.post("/predict", json={"law": json.loads(LAW_JSON), "points": points[:2]})
    assert ok.status_code == 200


@pytest.mark.parametrize("route", ["/observations", "/predict", "/fits"])
def test_streamed_body_without_length_is_cut_at_the_limit(
    small_client: TestClient, route: str
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    response = small_client.post(
        route, content=chunks(), headers={"content-type": "application/json"}
    )
    message = error_message(response, 413)
    assert message == "request body is larger than the limit of 2000 bytes"
    assert small_client.get("/health").status_code == 200


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x00\x00", b"\x80", b"\xff\xfe\x00"])
def test_predict_bytes_that_are_not_json_text_are_a_422_not_a_crash(
    client: TestClient, body: bytes
) -> None:
    response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
