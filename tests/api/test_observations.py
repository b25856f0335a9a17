"""POST /observations (JSON and CSV) and GET /observations (paged), API key on writes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import get_settings
from app.main import create_app
from tests.api.conftest import synthetic_observations

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
    assert response.status_code == 422, response.text
    assert expect in response.json()["detail"]
    assert client.get("/observations").json()["total"] == 0


def test_csv_header_problems_are_422(client: TestClient) -> None:
    for text in ("", "run_id,family\nr,f\n", HEADER + ",color\n"):
        response = client.post("/observations", content=text, headers={"content-type": "text/csv"})
        assert response.status_code == 422, text
        assert isinstance(response.json()["detail"], str)


def test_other_content_types_are_415(client: TestClient) -> None:
    response = client.post("/observations", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/observations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


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
    assert client.get("/observations", params={"limit": 0}).status_code == 422


def test_write_routes_need_the_api_key_when_configured(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEY", "s3cret")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        body = {"observations": ROWS}
        missing = client.post("/observations", json=body)
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        wrong = client.post("/observations", json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert client.post("/fits", json={}).status_code == 401
        ok = client.post("/observations", json=body, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 201
        # Reads stay open.
        assert client.get("/observations").status_code == 200


def test_text_with_a_nul_character_is_422_on_every_backend(any_client: TestClient) -> None:
    row = {**ROWS[0], "run_id": "bad\u0000id"}
    response = any_client.post("/observations", json={"observations": [row]})
    assert response.status_code == 422
    assert any_client.get("/observations", params={"family": "a\u0000b"}).status_code == 422
    assert any_client.get("/fits/a%00b").status_code in (404, 422)
