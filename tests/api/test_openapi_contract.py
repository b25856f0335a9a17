"""The OpenAPI document tells the truth (docs/api.md, Conventions): a bad JSON body is a 422 on
every route that takes one, a 405 lists every method of its path in `Allow`, and the request
schemas refuse what the models refuse, with the same answers as before they said so."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema_rs import Draft202012Validator

from tests.api.conftest import LAW, error_detail

INLINE = {"form": "p2", "params": LAW}
POINT = {"n0": 1e9, "rho": 0.25, "l0": 2.5, "tokens": 1e8}
COLUMNS = {"n0": [1e9], "rho": [0.25], "l0": [2.5], "tokens": [1e8]}
MODEL = {"n0": 1e9, "rho": 0.25, "l0": 2.5}
#: Routes with a JSON request body; the test below also finds them in the document.
JSON_ROUTES = {
    "/predict",
    "/recommend",
    "/plan",
    "/observations",
    "/fits",
    "/jobs/prune-finetune",
}
NOT_JSON = {
    "not UTF-8": b"\x80",
    "a lone UTF-16 byte": b"\xff\xfe\x00",
    "NUL bytes": b"\x00\x00\x00\x00\x00",
    "cut off": b'{"family": ',
    "nested past the parser's limit": b"[" * 100_000 + b"]" * 100_000,
}


def _openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _json_body_routes(document: dict[str, Any]) -> set[str]:
    return {
        path
        for path, item in document["paths"].items()
        for operation in item.values()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }


def test_the_routes_with_a_json_body_are_the_ones_checked_below(client: TestClient) -> None:
    assert _json_body_routes(_openapi(client)) == JSON_ROUTES


@pytest.mark.parametrize("body", list(NOT_JSON.values()), ids=list(NOT_JSON))
@pytest.mark.parametrize("route", sorted(JSON_ROUTES))
def test_a_body_that_is_not_json_is_a_422_json_invalid_on_every_json_route(
    client: TestClient, route: str, body: bytes
) -> None:
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    detail = error_detail(response, 422)
    assert isinstance(detail, list) and detail[0]["type"] == "json_invalid", detail
    assert detail[0]["loc"][0] == "body", detail


def test_the_bad_json_422_says_what_was_wrong(client: TestClient) -> None:
    detail = error_detail(
        client.post("/recommend", content=b"\x80", headers={"content-type": "application/json"}),
        422,
    )
    assert detail[0]["ctx"]["error"] == "not valid utf-8: invalid start byte"
    assert detail[0]["loc"] == ["body", 0]
    deep = NOT_JSON["nested past the parser's limit"]
    detail = error_detail(
        client.post("/fits", content=deep, headers={"content-type": "application/json"}), 422
    )
    assert detail[0]["ctx"]["error"] == "nested too deeply"


@pytest.mark.parametrize("path", ["/fits", "/observations"])
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE"])
def test_a_405_on_a_path_with_get_and_post_allows_both(
    client: TestClient, path: str, method: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


def test_every_405_allows_exactly_the_documented_methods_of_its_path(client: TestClient) -> None:
    document = _openapi(client)
    checked = 0
    for template, item in document["paths"].items():
        documented = {method.upper() for method in item}
        path = template.replace("{", "").replace("}", "")  # any value for a path parameter
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            if method in documented:
                continue
            response = client.request(method, path)
            assert response.status_code == 405, (method, path)
            assert set(response.headers["allow"].split(", ")) == documented, (method, path)
            checked += 1
    assert checked >= 4 * len(document["paths"]) - 1


def test_a_literal_path_beside_a_templated_one_allows_only_its_own_methods(
    client: TestClient,
) -> None:
    # GET /jobs/{job_id} would take "prune-finetune" as a job id, but the document gives
    # /jobs/prune-finetune only POST.
    response = client.request("OPTIONS", "/jobs/prune-finetune")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def _validator(document: dict[str, Any], component: str) -> Draft202012Validator:
    return Draft202012Validator({**document, "$ref": f"#/components/schemas/{component}"})


def _one_of_titles(schema: dict[str, Any]) -> list[list[str]]:
    return [[shape["title"] for shape in rule["oneOf"]] for rule in schema["allOf"]]


def test_the_request_schemas_state_their_cross_field_rules_as_one_of(client: TestClient) -> None:
    schemas = _openapi(client)["components"]["schemas"]
    law_choice = ["a stored fit", "an inline law", "the default fit of family and method"]
    assert _one_of_titles(schemas["PredictRequest"]) == [law_choice, ["points", "columns"]]
    assert _one_of_titles(schemas["RecommendRequest"]) == [
        law_choice,
        ["marginal or gap: threshold", "target: target_loss"],
    ]
    assert _one_of_titles(schemas["LawSpec"]) == [
        ["p2", "frantar", "compression", "curve", "p2-tpp", "p2-shift"]
    ]
    assert _one_of_titles(schemas["FitCreate"]) == [
        ["one form (no select_by)", "form chosen by held-out error"]
    ]
    p2 = schemas["LawSpec"]["allOf"][0]["oneOf"][0]["properties"]["params"]
    assert p2["required"] == list(LAW) and p2["additionalProperties"] is False
    assert {name for name, rule in p2["properties"].items() if rule} == {"N_C", "D_C", "E"}


def test_the_data_dependent_422s_are_documented_on_their_operations(client: TestClient) -> None:
    paths = _openapi(client)["paths"]
    for path, phrase in [
        ("/predict", "no default fit"),
        ("/recommend", "floor"),
        ("/plan", "no requested method with a default fit"),
        ("/fits", "mixes evaluation protocols"),
        ("/jobs/prune-finetune", "`tokens` below `checkpoints`"),
        ("/observations", "bad row"),
    ]:
        assert phrase in paths[path]["post"]["responses"]["422"]["description"], path


#: (route, schema component, body, status, a phrase of the answer, valid by the schema).
#: A schema-valid body refused with 422 is refused for a documented, data-dependent reason
#: (the database of these tests is empty).
BODIES: list[tuple[str, str, dict[str, Any], int, str, bool]] = [
    ("/predict", "PredictRequest", {"law": INLINE, "points": [POINT]}, 200, "", True),
    ("/predict", "PredictRequest", {"law": INLINE, "columns": COLUMNS}, 200, "", True),
    (
        "/predict",
        "PredictRequest",
        {"law": INLINE, "points": None, "columns": COLUMNS, "fit_id": None},
        200,
        "",
        True,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": {"params": LAW}, "points": [POINT], "family": "f"},
        200,
        "",
        True,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": INLINE, "points": [POINT], "columns": COLUMNS},
        422,
        "give exactly one of `points` and `columns`",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": INLINE},
        422,
        "give exactly one of `points` and `columns`",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": INLINE, "fit_id": "abc", "points": [POINT]},
        422,
        "give at most one of `fit_id` and `law`",
        False,
    ),
    ("/predict", "PredictRequest", {"points": [POINT]}, 422, "choose a law", False),
    (
        "/predict",
        "PredictRequest",
        {"family": "f", "points": [POINT]},
        422,
        "choose a law",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"family": "f", "method": "m", "points": [POINT]},
        422,
        "no default fit",
        True,
    ),
    ("/predict", "PredictRequest", {"fit_id": "abc", "points": [POINT]}, 404, "no fit", True),
    (
        "/predict",
        "PredictRequest",
        {"law": {"form": "p2", "params": {**LAW, "N_C": -1.0}}, "points": [POINT]},
        422,
        "N_C must be finite and ≥ 0",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": {"form": "p2", "params": {"N_C": 0.5}}, "points": [POINT]},
        422,
        "missing D_C",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": {"form": "frantar", "params": LAW}, "points": [POINT]},
        422,
        "form 'frantar' takes parameters",
        False,
    ),
    (
        "/predict",
        "PredictRequest",
        {"law": {"form": "nope", "params": LAW}, "points": [POINT]},
        422,
        "unknown form 'nope'",
        False,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "gap", "threshold": 0.01},
        200,
        "",
        True,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "target", "target_loss": 2.7},
        200,
        "",
        True,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "gap", "target_loss": 2.7},
        422,
        "rule 'gap' needs `threshold`",
        False,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "marginal", "threshold": None},
        422,
        "rule 'marginal' needs `threshold`",
        False,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "target", "threshold": 0.01},
        422,
        "rule 'target' needs `target_loss`",
        False,
    ),
    (
        "/recommend",
        "RecommendRequest",
        {"law": INLINE, **MODEL, "rule": "target", "target_loss": 2.5},
        422,
        "is unreachable",
        True,
    ),
    ("/fits", "FitCreate", {}, 422, "no observations match", True),
    ("/fits", "FitCreate", {"form": "auto", "select_by": "D"}, 422, "no observations", True),
    (
        "/fits",
        "FitCreate",
        {"form": "p2", "select_by": "D"},
        422,
        'select_by chooses among forms and needs "form": "auto"',
        False,
    ),
    ("/fits", "FitCreate", {"select_by": "N0"}, 422, 'needs "form": "auto"', False),
    ("/fits", "FitCreate", {"form": "nope"}, 422, "unknown form 'nope'", False),
]


@pytest.mark.parametrize("case", BODIES, ids=[f"{b[0]}-{i}-{b[3]}" for i, b in enumerate(BODIES)])
def test_the_same_bodies_are_accepted_and_refused_and_the_schema_agrees(
    client: TestClient, case: tuple[str, str, dict[str, Any], int, str, bool]
) -> None:
    route, component, body, status, phrase, valid = case
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    if phrase:
        detail = error_detail(response, status)
        message = detail if isinstance(detail, str) else " ".join(e["msg"] for e in detail)
        assert phrase in message, message
    errors = list(_validator(_openapi(client), component).iter_errors(body))
    assert (not errors) == valid, [e.message for e in errors]


def test_a_law_parameter_name_with_a_nul_is_refused_by_the_schema_too(client: TestClient) -> None:
    """Found by the stateful test: the schema left a name outside its pattern free to carry any
    value, so it accepted a body validation refuses."""
    body = {
        "law": {"form": "curve", "params": {"E@run\x00": [[-218], {}], "B@run": 1.0}},
        "points": [{"n0": 1e9, "rho": 0.25, "l0": 2.5, "tokens": 1e8}],
    }
    assert client.post("/predict", json=body).status_code == 422
    assert not _validator(_openapi(client), "PredictRequest").is_valid(body)
