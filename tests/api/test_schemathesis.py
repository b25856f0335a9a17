"""schemathesis over the whole OpenAPI schema, in-process, with every check (docs/reliability.md):
no 5xx, responses, status codes, content types and `Allow` headers as documented, schema-invalid
requests refused and schema-valid ones accepted. Fixed seed, few examples per operation: a smoke
net for inputs nobody thought of, not a load test.

Schema-valid requests that the service still refuses are the ones each operation's 422 documents
(docs/api.md, "What the request schemas cannot say"): a request that depends on stored data (an
empty database has no default fit and no observations; a job's model path does not exist) or on
a law's values, a CSV body, and the few rules that compare one field with another, which JSON
Schema cannot state. On those operations `positive_data_acceptance` is replaced by
`refusal_is_documented`, which lets such a 422 through and fails on any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import (
    CHECKS,
    CheckContext,
    CheckFunction,
    load_all_checks,
    positive_data_acceptance,
)
from schemathesis.core.transport import Response

from app.core.config import get_settings
from app.db.migrate import upgrade
from app.db.session import reset_engines
from app.main import create_app
from app.services.lawref import fit_cache

load_all_checks()
#: Every built-in check, as `st run --checks all`.
ALL_CHECKS: list[CheckFunction] = [c for c in CHECKS.get_all() if not isinstance(c, type)]

#: Operations whose schema-valid requests may be refused with the 422s their OpenAPI entry lists
#: (docs/api.md). The service's own 422 (`detail` a message) is such a refusal.
DATA_DEPENDENT = {
    "POST /predict",
    "POST /recommend",
    "POST /plan",
    "POST /fits",
    "POST /jobs/prune-finetune",
    "POST /observations",
}
#: Request-validation 422s (`detail` a list) of schema-valid requests: rules that compare one
#: field with another, which JSON Schema has no way to state.
CROSS_FIELD: dict[str, tuple[str, ...]] = {
    "POST /predict": ("columns must have equal lengths",),
    "POST /plan": ("rho_grid has no value >= rho_min", "token_grid has no value <= token_budget"),
    "POST /jobs/prune-finetune": ("tokens must be at least the number of checkpoints",),
}


def refusal_is_documented(
    ctx: CheckContext, response: Response, case: schemathesis.Case
) -> bool | None:
    """A schema-valid request refused with a 422 is refused for a documented reason: the
    service's own message, or one of the operation's cross-field rules."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return None
    allowed = CROSS_FIELD.get(case.operation.label, ())
    messages = [str(error.get("msg", "")) for error in detail]
    undocumented = [m for m in messages if not any(rule in m for rule in allowed)]
    assert not undocumented, (
        f"{case.operation.label}: a request valid by the schema was refused by request "
        f"validation: {undocumented}; state the rule in the schema or document it"
    )
    return None


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """One app on one migrated SQLite file for the whole module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'api.sqlite3'}"
    upgrade(url)
    patch = pytest.MonkeyPatch()
    patch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    reset_engines()
    fit_cache.clear()
    app = create_app()
    app.state.database_url = url
    yield app
    patch.undo()
    reset_engines()
    get_settings.cache_clear()


@pytest.fixture
def _keep_database(api_app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    # The autouse fixture points DATABASE_URL at a per-test file; this module's app keeps its own.
    monkeypatch.setenv("DATABASE_URL", str(api_app.state.database_url))
    get_settings.cache_clear()
    reset_engines()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(api_app: FastAPI) -> schemathesis.BaseSchema:
    """The app's schema loaded in-process (ASGI transport, no server)."""
    return schemathesis.openapi.from_asgi("/openapi.json", api_app)


@schema.parametrize()
@seed(4242)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_check_passes_on_every_operation(
    case: schemathesis.Case, _keep_database: None
) -> None:
    validate(case, case.call())


def validate(case: schemathesis.Case, response: Response) -> None:
    """Every check on `response`; on DATA_DEPENDENT operations, documented refusals pass."""
    if case.operation.label in DATA_DEPENDENT:
        case.validate_response(
            response,
            checks=ALL_CHECKS,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[refusal_is_documented],
        )
    else:
        case.validate_response(response, checks=ALL_CHECKS)


def test_every_check_passes_on_sequences_of_calls(
    api_schema: schemathesis.BaseSchema, _keep_database: None
) -> None:
    """The stateful phase of `st run`: sequences that feed one response into the next request
    (a job's id into its cancel, a fit's id into /predict), with the same checks. Hypothesis
    derives the examples from the test (derandomize), so every run makes the same sequences."""

    class Sequences(api_schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(
            self,
            response: Response,
            case: schemathesis.Case,
            additional_checks: list[CheckFunction] | None = None,
            **kwargs: Any,
        ) -> None:
            validate(case, response)

    Sequences.run(
        settings=settings(
            max_examples=60,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
