"""POST /observations (JSON and CSV) and GET /observations (paged), API key on writes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.main import create_app
from tests.api.conftest import error_message, synthetic_observations, validation_error

ROWS = synthetic_observations()[:5]
HEADER = "run_id,family,method,n0,rho,l0,tokens,loss,protocol,source"


def _csv(rows: list[dict[str, object]]) -> str:
    names = HEADER.split(",")
    return HEADER + "\n" + "".join(",".join(str(r[n]) for n in names) + "\n" for r in rows)


def test_json_upload_counts_inserted_and_duplicates(any_client: TestClient) -> None:
    first = any_client.post("/observations", json={"observations": ROWS})
    assert first.status_code == 201, first.text
    assert first.json() == {"inserted": 5, "duplicates": 0}
    again = any_client.post("/observations", json={"observations": [*ROWS[:2], ROWS[0]]})
    assert again.json() == {"inserted": 0, "duplicates": 3}
    page = any_client.get("/observations").json()
    assert page["total"] == 5


def test_csv_upload_stores_the_same_rows(client: TestClient) -> None:
    response = client.post(
        "/observations", content=_csv(ROWS), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"inserted": 5, "duplicates": 0}
    items = client.get("/observations", params={"run_id": ROWS[0]["run_id"]}).json()["items"]
    assert [i["tokens"] for i in items] == sorted(r["tokens"] for r in ROWS)
    assert items[0]["protocol"] == "eval-1" and items[0]["source"] == "synthetic"


def test_csv_without_optional_columns_is_accepted(client: TestClient) -> None:
    text = "run_id,family,method,n0,rho,l0,tokens,loss\nr1,f,depth,1e9,0.25,2.5,1e8,2.7\n"
    response = client.post("/observations", content=text, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    assert response.json() == {"inserted": 1, "duplicates": 0}


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ("r1,f,depth,1e9,1.5,2.5,1e8,2.7,,", "line 3"),
        ("r1,f,depth,nan,0.25,2.5,1e8,2.7,,", "line 3"),
        ("r1,f,depth,1e9,0.25,2.5,inf,2.7,,", "line 3"),
        ("r1,f,depth,1e9,0.25,2.5,1e400,2.7,,", "line 3"),
        ("r1,f,depth,1e9,0.25,2.5,1e8,abc,,", "line 3"),
        ("r1,f,depth,1e9,0.25,2.5,1e8,2.7,,,extra", "line 3"),
    ],
    ids=["rho-above-one", "nan", "inf", "1e400", "not-a-number", "extra-field"],
)
def test_a_bad_csv_row_is_422_naming_its_line(client: TestClient, line: str, expect: str) -> None:
    text = HEADER + "\nr0,f,depth,1e9,0.25,2.5,1e8,2.7,,\n" + line + "\n"
    response = client.post("/observations", content=text, headers={"content-type": "text/csv"})
    assert expect in error_message(response, 422)
    assert client.get("/observations").json()["total"] == 0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the CSV is empty"),
        ("run_id,family\nr,f\n", "the CSV header lacks method, n0, rho, l0, tokens, loss"),
        (HEADER + ",color\n", "the CSV header has unknown columns: color"),
    ],
    ids=["empty", "missing-columns", "unknown-column"],
)
def test_csv_header_problems_are_422_saying_what_is_wrong(
    client: TestClient, text: str, says: str
) -> None:
    response = client.post("/observations", content=text, headers={"content-type": "text/csv"})
    assert says in error_message(response, 422)


def test_a_csv_over_the_upload_row_limit_is_413_naming_the_limit(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_OBSERVATIONS_PER_UPLOAD", "3")
    get_settings.cache_clear()
    rows = synthetic_observations()[:4]
    response = client.post(
        "/observations", content=_csv(rows), headers={"content-type": "text/csv"}
    )
    assert error_message(response, 413) == "the CSV has more than 3 rows (the upload limit)"
    assert client.get("/observations").json()["total"] == 0
    at_limit = client.post(
        "/observations", content=_csv(rows[:3]), headers={"content-type": "text/csv"}
    )
    assert at_limit.status_code == 201 and at_limit.json()["inserted"] == 3


def test_other_content_types_are_415(client: TestClient) -> None:
    response = client.post("/observations", content=b"x", headers={"content-type": "text/plain"})
    message = error_message(response, 415)
    assert message.startswith("unsupported content type 'text/plain'")
    assert "application/json or text/csv" in message


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/observations", content=b"{not json", headers={"content-type": "application/json"}
    )
    error = validation_error(response)
    assert error["loc"] == ["body"] and error["type"] == "json_invalid"
    assert error["msg"].startswith("Invalid JSON")


def test_list_is_paged_and_filtered(client: TestClient) -> None:
    rows = synthetic_observations("depth")[:12] + synthetic_observations("width")[:3]
    client.post("/observations", json={"observations": rows})
    page = client.get("/observations", params={"method": "depth", "offset": 10, "limit": 5})
    body = page.json()
    assert set(body) == {"items", "total", "offset", "limit"}
    assert body["total"] == 12 and body["offset"] == 10 and body["limit"] == 5
    assert len(body["items"]) == 2
    assert {"id", "run_id", "family", "method", "n0", "rho", "l0", "tokens", "loss"} <= set(
        body["items"][0]
    )
    error = validation_error(client.get("/observations", params={"limit": 0}))
    assert error["loc"] == ["query", "limit"]


def test_write_routes_need_the_api_key_when_configured(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", "s3cret")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        body = {"observations": ROWS}
        missing = client.post("/observations", json=body)
        assert "needs the X-API-Key header" in error_message(missing, 401)
        wrong = client.post("/observations", json=body, headers={"X-API-Key": "nope"})
        assert "does not match" in error_message(wrong, 401)
        assert "needs the X-API-Key header" in error_message(client.post("/fits", json={}), 401)
        assert client.get("/observations").json()["total"] == 0
        ok = client.post("/observations", json=body, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 201
        # Reads stay open.
        assert client.get("/observations").status_code == 200


def test_text_with_a_nul_character_is_422_naming_the_field_on_every_backend(
    any_client: TestClient,
) -> None:
    row = {**ROWS[0], "run_id": "bad\u0000id"}
    answers = {
        ("body", "observations", 0, "run_id"): any_client.post(
            "/observations", json={"observations": [row]}
        ),
        ("query", "family"): any_client.get("/observations", params={"family": "a\u0000b"}),
        ("path", "fit_id"): any_client.get("/fits/a%00b"),
    }
    for loc, response in answers.items():
        error = validation_error(response)
        assert tuple(error["loc"]) == loc
        assert error["type"] == "string_pattern_mismatch"
    assert any_client.get("/observations").json()["total"] == 0
