"""The service's HTTP client (app/client.py) against a stub server: what it sends, how it reads
answers, and the one readable error for refusals, bad answers and no answer at all."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.client import Client, ServiceError, format_detail
from app.schemas.jobs import EXAMPLE_JOB_OUT

Route = tuple[int, dict[str, str], bytes]


@dataclass
class Stub:
    """A local HTTP server answering ``routes[(method, path with query)]``; it records every
    request it gets as (method, path, headers with lower-case names, body)."""

    url: str
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def answer(self, method: str, path: str, status: int, body: Any, **headers: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = "text/plain" if isinstance(body, bytes) else "application/json"
        self.routes[(method, path)] = (status, {"Content-Type": kind, **headers}, raw)


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Stub(url=f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.seen.append((self.command, self.path, headers, body))
            status, headers, raw = state.routes.get(
                (self.command, self.path), (404, {}, b'{"detail": "Not Found"}')
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads ``seen`` instead."""

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_submit_sends_the_body_and_the_api_key_and_reads_the_location(stub: Stub) -> None:
    stub.answer(
        "POST", "/jobs/prune-finetune", 202, {"id": "j1", "status": "queued"}, Location="/jobs/j1"
    )
    submitted = Client(stub.url + "/", api_key="k3y").submit({"model": "m", "rho": 0.25})
    assert (submitted.id, submitted.status, submitted.location) == ("j1", "queued", "/jobs/j1")
    method, path, headers, body = stub.seen[0]
    assert (method, path) == ("POST", "/jobs/prune-finetune")
    assert headers["x-api-key"] == "k3y" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"model": "m", "rho": 0.25}


def test_no_api_key_sends_no_header(stub: Stub) -> None:
    stub.answer("GET", "/jobs/j1", 200, EXAMPLE_JOB_OUT)
    job = Client(stub.url, api_key="").job("j1")
    assert job.status == "succeeded" and job.progress.tokens_done == 300032
    assert "x-api-key" not in stub.seen[0][2]


def test_list_sends_only_the_filters_given(stub: Stub) -> None:
    page = {"items": [EXAMPLE_JOB_OUT], "total": 7, "offset": 0, "limit": 5}
    stub.answer("GET", "/jobs?status=running&method=2%3A4&offset=0&limit=5", 200, page)
    answer = Client(stub.url).jobs(status="running", method="2:4", limit=5)
    assert answer.total == 7 and answer.items[0].id == EXAMPLE_JOB_OUT["id"]


def test_an_id_cannot_reach_another_route(stub: Stub) -> None:
    with pytest.raises(ServiceError):
        Client(stub.url).job("../observations?x=1")
    assert stub.seen[0][1] == "/jobs/..%2Fobservations%3Fx%3D1"


def test_an_error_carries_the_status_the_detail_and_a_hint(stub: Stub) -> None:
    stub.answer("POST", "/jobs/j1/cancel", 409, {"detail": "job j1 has already finished"})
    with pytest.raises(ServiceError) as caught:
        Client(stub.url).cancel("j1")
    error = caught.value
    assert error.status == 409 and error.detail == "job j1 has already finished"
    assert str(error) == f"POST {stub.url}/jobs/j1/cancel: 409 job j1 has already finished"
    stub.answer("GET", "/jobs/nope", 404, {"detail": "no job nope"})
    with pytest.raises(ServiceError, match=r"404 no job nope \(`p2law jobs list`"):
        Client(stub.url).job("nope")


def test_a_validation_error_is_one_line_of_field_and_message(stub: Stub) -> None:
    detail = [
        {"loc": ["body", "rho"], "msg": "Input should be less than 1", "type": "less_than"},
        {"loc": ["body", "dataset", "path"], "msg": "Field required", "type": "missing"},
    ]
    stub.answer("POST", "/jobs/prune-finetune", 422, {"detail": detail})
    with pytest.raises(ServiceError) as caught:
        Client(stub.url).submit({})
    assert caught.value.status == 422
    assert caught.value.detail == ("rho: Input should be less than 1; dataset.path: Field required")


def test_an_error_that_is_not_json_keeps_its_text(stub: Stub) -> None:
    stub.answer("GET", "/jobs/j1", 502, b"Bad Gateway from the proxy")
    with pytest.raises(ServiceError) as caught:
        Client(stub.url).job("j1")
    assert caught.value.status == 502 and caught.value.detail == "Bad Gateway from the proxy"


def test_an_answer_that_is_not_json_is_an_error_naming_the_url(stub: Stub) -> None:
    stub.answer("GET", "/jobs/j1", 200, b"<html>another service</html>")
    with pytest.raises(ServiceError, match="is not JSON") as caught:
        Client(stub.url).job("j1")
    assert caught.value.status is None and stub.url in str(caught.value)


def test_a_refused_connection_names_the_url_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ServiceError) as caught:
        Client(url).jobs()
    error = caught.value
    assert error.status is None
    assert str(error).startswith(f"cannot reach the p2law service at {url} (connection refused)")
    assert "P2LAW_URL" in str(error)


def test_no_answer_within_the_timeout_is_an_error() -> None:
    with socket.socket() as silent:
        # Listening but never accepting: the connection is made, no answer ever comes.
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ServiceError, match=r"no answer from .* within 0.2 s"):
            Client(url, timeout=0.2).job("j1")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "127.0.0.1:8000", "http://"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match=r"http\(s\)://host"):
        Client(url)


def observation_json(
    tokens: float, loss: float, *, id: int = 1, run_id: str = "j"
) -> dict[str, Any]:
    """One checkpoint as `GET /jobs/{id}/observations` lists it."""
    return {
        "id": id,
        "run_id": run_id,
        "family": "f",
        "method": "depth",
        "n0": 1e6,
        "rho": 0.25,
        "l0": 3.0,
        "tokens": tokens,
        "loss": loss,
        "protocol": "p",
        "source": "job",
        "excluded": False,
        "note": None,
        "created_at": "2026-01-01T00:00:00Z",
    }


def test_the_last_observation_comes_from_the_last_page(stub: Stub) -> None:
    def observation(tokens: float, loss: float) -> dict[str, Any]:
        return observation_json(tokens, loss, id=int(tokens), run_id="j1")

    first = {"items": [observation(100, 4.0)], "total": 150, "offset": 0, "limit": 100}
    last = {"items": [observation(9000, 3.5)], "total": 150, "offset": 149, "limit": 1}
    stub.answer("GET", "/jobs/j1/observations?offset=0&limit=100", 200, first)
    stub.answer("GET", "/jobs/j1/observations?offset=149&limit=1", 200, last)
    found = Client(stub.url).last_observation("j1")
    assert found is not None and (found.tokens, found.loss) == (9000, 3.5)
    empty = {"items": [], "total": 0, "offset": 0, "limit": 100}
    stub.answer("GET", "/jobs/j2/observations?offset=0&limit=100", 200, empty)
    assert Client(stub.url).last_observation("j2") is None


def test_format_detail_of_other_shapes() -> None:
    assert format_detail("plain") == "plain"
    assert format_detail([{"msg": "bad body", "loc": ["body"]}]) == "bad body"
    assert format_detail({"code": 1}) == '{"code": 1}'
