"""A small HTTP client of the p2law service's job routes, on the standard library's urllib.

The command line (`p2law jobs`, app/cli_jobs.py) talks to a running service through it, so it
needs no HTTP package beyond what Python ships. Responses are read through the service's own
response models (`app.schemas.jobs`): a field the client reads is the field the API documents.
Every failure is one error type, :class:`ServiceError`, carrying the HTTP status (None when no
answer came back) and the service's ``detail``, so a caller prints one readable line for all of
them: a refused connection names the URL it tried.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.schemas.jobs import JobOut, JobPage
from app.schemas.observations import ObservationOut, ObservationPage

#: Seconds to wait for the service's answer to one request.
DEFAULT_TIMEOUT_S = 10.0

#: What a user can do about an error with this status, appended to the service's detail.
_HINTS = {
    401: "set API_KEY to the service's key",
    404: "`p2law jobs list` shows the jobs there are",
}


def format_detail(detail: Any) -> str:
    """The ``detail`` of an error body as one line: a message, or the request-validation
    errors of a 422 (``[{"loc": [...], "msg": ...}, ...]``) as ``loc: msg`` pairs."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(json.dumps(item))
        return "; ".join(parts)
    return json.dumps(detail)


class ServiceError(Exception):
    """A request the service refused (``status`` set) or that got no answer (``status`` None).

    ``detail`` is the service's ``detail`` (made one line), or why no answer came back.
    """

    def __init__(self, detail: str, *, status: int | None, method: str, url: str) -> None:
        self.detail = detail
        self.status = status
        self.method = method
        self.url = url
        super().__init__(self.message())

    def message(self) -> str:
        """One readable line: what was asked, the status and the detail, and a hint."""
        if self.status is None:
            return self.detail
        hint = _HINTS.get(self.status)
        text = f"{self.method} {self.url}: {self.status} {self.detail}"
        return f"{text} ({hint})" if hint else text


@dataclass(frozen=True)
class Submitted:
    """The answer to a submission: the job's id and status, and where to read it."""

    id: str
    status: str
    location: str


class Client:
    """The service at ``base_url`` (``http://host:port``), with the API key sent as
    ``X-API-Key`` when one is given."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        # urllib also opens file:// and ftp:// URLs: only the schemes a service speaks pass.
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"the service URL must be http(s)://host[:port], not {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"the timeout must be positive, not {timeout}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """The parsed JSON answer and the headers of ``method path``; :class:`ServiceError`
        for an error status, no answer, or an answer that is not JSON."""
        url = self.base_url + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                raw = response.read()
                answer_headers = dict(response.headers.items())
        except urllib.error.HTTPError as error:
            raw = error.read()
            raise ServiceError(
                _error_detail(raw, error.reason), status=error.code, method=method, url=url
            ) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason, method, url) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error, method, url) from None
        try:
            return json.loads(raw), answer_headers
        except ValueError:
            raise ServiceError(
                f"the answer is not JSON ({raw[:80]!r}): is {self.base_url} a p2law service?",
                status=None,
                method=method,
                url=url,
            ) from None

    def _unreachable(self, reason: object, method: str, url: str) -> ServiceError:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer from {self.base_url} within {self.timeout:g} s"
        elif isinstance(reason, ConnectionRefusedError):
            why = (
                f"cannot reach the p2law service at {self.base_url} (connection refused): "
                "start it with `make run` or `p2law serve`, or point P2LAW_URL / --url at it"
            )
        else:
            why = f"cannot reach the p2law service at {self.base_url}: {reason}"
        return ServiceError(why, status=None, method=method, url=url)

    def submit(self, body: Mapping[str, Any]) -> Submitted:
        """``POST /jobs/prune-finetune`` with ``body`` as given (the service validates it)."""
        answer, headers = self.request("POST", "/jobs/prune-finetune", body=dict(body))
        job_id = str(answer["id"])
        location = headers.get("location") or headers.get("Location") or f"/jobs/{job_id}"
        return Submitted(id=job_id, status=str(answer["status"]), location=location)

    def jobs(
        self,
        *,
        status: str | None = None,
        family: str | None = None,
        method: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> JobPage:
        """``GET /jobs``: a page of jobs, newest first."""
        query: dict[str, str | int | None] = {
            "status": status,
            "family": family,
            "method": method,
            "offset": offset,
            "limit": limit,
        }
        answer, _ = self.request("GET", "/jobs", query=query)
        return JobPage.model_validate(answer)

    def job_json(self, job_id: str) -> dict[str, Any]:
        """``GET /jobs/{id}`` as the service wrote it."""
        answer, _ = self.request("GET", _job_path(job_id))
        return dict(answer)

    def job(self, job_id: str) -> JobOut:
        """``GET /jobs/{id}``."""
        return JobOut.model_validate(self.job_json(job_id))

    def cancel(self, job_id: str) -> JobOut:
        """``POST /jobs/{id}/cancel``: the job, now cancelled (queued) or cancelling (running)."""
        answer, _ = self.request("POST", _job_path(job_id) + "/cancel")
        return JobOut.model_validate(answer)

    def job_observations(
        self, job_id: str, *, offset: int = 0, limit: int = 100
    ) -> ObservationPage:
        """``GET /jobs/{id}/observations``: the job's losses, ordered by tokens."""
        query: dict[str, str | int | None] = {"offset": offset, "limit": limit}
        answer, _ = self.request("GET", _job_path(job_id) + "/observations", query=query)
        return ObservationPage.model_validate(answer)

    def last_observation(self, job_id: str) -> ObservationOut | None:
        """The job's latest checkpoint (the most tokens), or None before the first one."""
        # A job has at most 64 checkpoints: one page of 100 almost always holds them all.
        page = self.job_observations(job_id)
        if page.total > len(page.items) + page.offset:
            page = self.job_observations(job_id, offset=page.total - 1, limit=1)
        return page.items[-1] if page.items else None


def _job_path(job_id: str) -> str:
    # Quoted whole: an id with a slash or "?" must not reach another route.
    return "/jobs/" + urllib.parse.quote(job_id, safe="")


def _error_detail(raw: bytes, reason: object) -> str:
    """The ``detail`` of an error body, or the body's start (or the reason) when not JSON."""
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode(errors="replace").strip()
        return text[:200] if text else str(reason)
    if isinstance(body, dict) and "detail" in body:
        return format_detail(body["detail"])
    return json.dumps(body)[:200]
