"""`p2law jobs`: submit, list, show, watch and cancel prune → post-train jobs on a running service.

    p2law jobs submit job.json [--watch]      # POST /jobs/prune-finetune ('-' reads stdin)
    p2law jobs list [--status running] [--family F] [--method depth] [--limit 20]
    p2law jobs show ID [--json]
    p2law jobs watch ID [--interval 2]        # tokens bar, %, ETA, latest loss, until the end
    p2law jobs cancel ID

The service is `--url`, else `P2LAW_URL`, else `http://127.0.0.1:${PORT:-8000}`; `API_KEY` from
the environment is sent as `X-API-Key`. Exit codes: 0 done (for `watch`: the job succeeded),
1 the watched job failed, 2 a usage error or an error from the service or the connection,
3 the watched job was cancelled, 130 Ctrl-C (the job itself goes on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TextIO, get_args

from app.client import DEFAULT_TIMEOUT_S, Client, ServiceError
from app.schemas.jobs import JobOut, JobPage, JobStatus, Method
from app.schemas.observations import ObservationOut

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_CANCELLED = 3
EXIT_INTERRUPTED = 130

#: The exit code of `watch` for each final status.
OUTCOME_EXIT: dict[str, int] = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
}
FINISHED = frozenset(OUTCOME_EXIT)
#: What `watch` waits out: no answer at all (None), or a proxy's "the service is not there".
TRANSIENT_STATUSES = frozenset({None, 502, 503, 504})
#: How long `watch` keeps asking a service that does not answer (seconds).
DEFAULT_PATIENCE_S = 300.0
BAR_WIDTH = 24


def default_url(env: Mapping[str, str] | None = None) -> str:
    """`P2LAW_URL`, else the local service on `PORT` (8000), as `make run` serves it."""
    env = os.environ if env is None else env
    return env.get("P2LAW_URL") or f"http://127.0.0.1:{env.get('PORT') or '8000'}"


def exit_code(status: str) -> int:
    """The exit code of `watch` for a job that ended with ``status``."""
    try:
        return OUTCOME_EXIT[status]
    except KeyError:
        raise ValueError(f"job status {status!r} is not final") from None


def format_tokens(tokens: float) -> str:
    """A token count in a few characters: 768, 7.7k, 12.3M, 1.20B, 2.00T."""
    for scale, suffix, digits in ((1e12, "T", 2), (1e9, "B", 2), (1e6, "M", 1), (1e3, "k", 1)):
        if tokens >= scale:
            return f"{tokens / scale:.{digits}f}{suffix}"
    return f"{tokens:.0f}"


def format_eta(seconds: float | None) -> str:
    """Remaining time as 42s, 3m05s, 2h03m or 1d02h; `?` while the rate is not known."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86_400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86_400}d{total % 86_400 // 3600:02d}h"


def progress_bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    """``[#####...........]``: the share of ``total`` done, in ``width`` cells."""
    fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _percent(done: float, total: float) -> str:
    # Floored, so that 100% means every token is done.
    return f"{int(min(max(done / total, 0.0), 1.0) * 100) if total > 0 else 0:>3d}%"


def _loss(last: ObservationOut | None) -> str:
    if last is None:
        return "loss —"
    return f"loss {last.loss:.4f} at {format_tokens(last.tokens)} tokens"


def progress_line(job: JobOut, last: ObservationOut | None) -> str:
    """One line of `watch`: status, bar, %, tokens done/total, ETA and the latest loss."""
    progress = job.progress
    if job.status == "queued":
        return f"{job.status:<10}  waiting for a worker"
    parts = [
        f"{job.status:<10}",
        progress_bar(progress.tokens_done, progress.tokens_total),
        _percent(progress.tokens_done, progress.tokens_total),
        f"{format_tokens(progress.tokens_done)}/{format_tokens(progress.tokens_total)} tokens",
    ]
    if job.status in ("running", "cancelling"):
        parts.append(f"ETA {format_eta(progress.eta_s)}")
    parts.append(_loss(last))
    return "  ".join(parts)


def summary_line(job: JobOut, last: ObservationOut | None) -> str:
    """The last line of `watch`: the outcome, tokens, the final loss and the artifact (or the
    error, or the early stop)."""
    progress = job.progress
    tokens = f"{format_tokens(progress.tokens_done)}/{format_tokens(progress.tokens_total)} tokens"
    final = "no loss recorded" if last is None else "final " + _loss(last)
    if job.status == "failed":
        return f"failed after {tokens}: {job.error or 'no error recorded'}"
    text = f"{job.status}: {tokens}, {final}"
    if job.stopped_early:
        text += f"; stopped early: {job.stop_reason or 'by its stop rule'}"
    if job.artifact:
        text += f"; artifact {job.artifact}"
    return text


def jobs_table(page: JobPage) -> str:
    """`list`: one row per job (id, status, family, method, progress %, created, UTC)."""
    if not page.items:
        return "no jobs"
    header = ("id", "status", "family", "method", "progress", "created (UTC)")
    rows = [
        (
            job.id,
            job.status,
            job.family,
            job.method,
            _percent(job.progress.tokens_done, job.progress.tokens_total).strip(),
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for job in page.items
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    # The progress column is right-aligned, the others left-aligned.
    lines = [
        "  ".join(
            cell.rjust(width) if i == 4 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]
    shown = page.offset + len(page.items)
    if page.total > shown:
        lines.append(f"({len(page.items)} of {page.total} jobs; --limit shows more)")
    return "\n".join(lines)


def describe(job: JobOut, last: ObservationOut | None) -> str:
    """`show`: the job readably, one field a line."""
    progress = job.progress
    request = job.request
    lines = [
        ("job", job.id),
        ("status", f"{job.status} (attempt {job.attempts} of {job.max_attempts})"),
        (
            "run",
            f"{request.get('model', '?')}, {job.method} at rho {request.get('rho', '?')} "
            f"(target), family {job.family}",
        ),
        (
            "progress",
            f"{progress_bar(progress.tokens_done, progress.tokens_total)} "
            f"{_percent(progress.tokens_done, progress.tokens_total).strip()}  "
            f"{progress.tokens_done:,}/{progress.tokens_total:,} tokens"
            + (f"  ETA {format_eta(progress.eta_s)}" if progress.eta_s is not None else ""),
        ),
        ("loss", "—" if last is None else _loss(last).removeprefix("loss ") + " (latest)"),
    ]
    measured = job.measured
    lines.append(
        (
            "measured",
            "—"
            if measured is None
            else f"{measured.n0:,.0f} → {measured.n_after:,.0f} parameters (rho "
            f"{measured.rho:.4f}), L0 {measured.l0:.4f}, after pruning "
            f"{measured.loss_after_prune:.4f}",
        )
    )
    lines.append(("artifact", job.artifact or "—"))
    lines.append(("error", job.error or "—"))
    if job.stopped_early:
        lines.append(("stopped", f"early at {job.stopped_at_tokens:,} tokens: {job.stop_reason}"))
    if job.resumed_from_tokens is not None:
        lines.append(("resumed", f"from {job.resumed_from_tokens:,} tokens"))
    lines.extend(("warning", warning) for warning in job.warnings)
    times = [f"created {job.created_at:%Y-%m-%d %H:%M:%S}"]
    if job.started_at is not None:
        times.append(f"started {job.started_at:%Y-%m-%d %H:%M:%S}")
    if job.finished_at is not None:
        times.append(f"finished {job.finished_at:%Y-%m-%d %H:%M:%S}")
    lines.append(("times", ", ".join(times) + " (UTC)"))
    return "\n".join(f"{name:<10}{value}" for name, value in lines)


class JobReader(Protocol):
    """What `watch` reads of the service (a :class:`Client`, or a test's stand-in)."""

    def job(self, job_id: str) -> JobOut: ...

    def last_observation(self, job_id: str) -> ObservationOut | None: ...


def watch(
    client: JobReader,
    job_id: str,
    *,
    interval: float,
    out: TextIO,
    err: TextIO,
    tty: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    patience: float = DEFAULT_PATIENCE_S,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Follow a job until it ends; the exit code says how it ended (:data:`OUTCOME_EXIT`).

    On a terminal one line is redrawn with ``\\r``; elsewhere (a log, a pipe) a line is printed
    whenever the status, the tokens done or the latest checkpoint changes, not the ETA alone.
    A service that stops answering after it has answered once (a restart, a network blip, a
    502/503/504 from a proxy) is asked again every `interval` for up to `patience` seconds
    before the ServiceError is raised: a job runs for hours, and the job itself goes on
    meanwhile. No answer to the first poll is raised at once (most likely a wrong URL).
    Ctrl-C stops watching, never the job: 130, with the command that cancels it.
    """
    tty = out.isatty() if tty is None else tty
    shown: tuple[str, int, float | None] | None = None
    width = 0
    down_since: float | None = None
    shown_any = False
    try:
        while True:
            try:
                job = client.job(job_id)
                last = client.last_observation(job_id)
            except ServiceError as exc:
                if exc.status not in TRANSIENT_STATUSES or shown_any is False:
                    raise  # a refusal, or no answer from the start: a wrong URL, say so now
                now = clock()
                if down_since is None:
                    down_since = now
                    if tty:
                        out.write("\n")
                        width = 0
                    print(
                        f"no answer from the service ({exc.message()}); asking again every "
                        f"{interval:g}s for up to {patience:g}s",
                        file=err,
                        flush=True,
                    )
                if now - down_since > patience:
                    raise
                sleep(interval)
                continue
            if down_since is not None:
                print("the service answers again", file=err, flush=True)
                down_since = None
            shown_any = True
            line = progress_line(job, last)
            if tty:
                out.write("\r" + line + " " * max(width - len(line), 0))
                out.flush()
                width = len(line)
            else:
                key = (job.status, job.progress.tokens_done, None if last is None else last.tokens)
                if key != shown:
                    print(line, file=out, flush=True)
                    shown = key
            if job.status in FINISHED:
                break
            sleep(interval)
    except KeyboardInterrupt:
        if tty:
            out.write("\n")
        print(
            f"stopped watching; job {job_id} goes on (`p2law jobs cancel {job_id}` cancels it)",
            file=err,
        )
        return EXIT_INTERRUPTED
    except ServiceError:
        if tty:
            out.write("\n")
        raise
    if tty:
        out.write("\n")
    print(summary_line(job, last), file=out, flush=True)
    for warning in job.warnings:
        print(f"warning: {warning}", file=err)
    return exit_code(job.status)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def add_jobs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `jobs` command and its subcommands, on the `p2law` parser's ``commands``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        help="the service (default: P2LAW_URL, else http://127.0.0.1:${PORT:-8000}); "
        "API_KEY from the environment is sent as X-API-Key",
    )
    common.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    interval = argparse.ArgumentParser(add_help=False)
    interval.add_argument(
        "--interval", type=_positive, default=2.0, help="seconds between polls (default 2)"
    )

    jobs_p = commands.add_parser(
        "jobs",
        help="submit, list, show, watch and cancel jobs on a running service (docs/jobs.md)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = jobs_p.add_subparsers(dest="jobs_command", required=True)

    submit_p = sub.add_parser(
        "submit", parents=[common, interval], help="POST /jobs/prune-finetune; prints the id"
    )
    submit_p.add_argument("file", help="the job as JSON (docs/api.md, Jobs); '-' reads stdin")
    submit_p.add_argument("--watch", action="store_true", help="then follow it to its end")
    submit_p.add_argument("-q", "--quiet", action="store_true", help="print the id only")

    list_p = sub.add_parser("list", parents=[common], help="jobs, newest first")
    list_p.add_argument("--status", choices=get_args(JobStatus))
    list_p.add_argument("--family")
    list_p.add_argument("--method", choices=get_args(Method))
    list_p.add_argument("--limit", type=int, default=20, help="at most this many (1-500)")

    show_p = sub.add_parser("show", parents=[common], help="one job, readably")
    show_p.add_argument("id")
    show_p.add_argument("--json", action="store_true", help="GET /jobs/{id} as the service says")

    watch_p = sub.add_parser(
        "watch",
        parents=[common, interval],
        help="follow a job: tokens, %%, ETA, latest loss; exit 0 succeeded, 1 failed, 3 cancelled",
    )
    watch_p.add_argument("id")
    for parser in (submit_p, watch_p):
        parser.add_argument(
            "--patience",
            type=_positive,
            default=DEFAULT_PATIENCE_S,
            help="while watching, seconds to keep asking a service that does not answer "
            f"before giving up with exit 2 (default {DEFAULT_PATIENCE_S:g})",
        )

    cancel_p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel_p.add_argument("id")


def _read_body(file: str) -> dict[str, object]:
    text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    name = "stdin" if file == "-" else file
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"{name} must hold a JSON object (the job), not {type(body).__name__}")
    return body


def _submit(client: Client, args: argparse.Namespace) -> int:
    submitted = client.submit(_read_body(args.file))
    location = submitted.location
    if location.startswith("/"):
        location = client.base_url + location
    print(submitted.id if args.quiet else f"{submitted.id}  {submitted.status}  {location}")
    if not args.watch:
        return EXIT_OK
    return _watch(client, submitted.id, args)


def _watch(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """`watch` on the terminal with the command's --interval and --patience."""
    return watch(
        client,
        job_id,
        interval=args.interval,
        out=sys.stdout,
        err=sys.stderr,
        patience=args.patience,
    )


def _cancel(client: Client, job_id: str) -> int:
    job = client.cancel(job_id)
    if job.status == "cancelling":
        print(f"{job.id}  cancelling (it stops at its next checkpoint)")
    else:
        print(f"{job.id}  {job.status}")
    return EXIT_OK


def run_jobs_command(args: argparse.Namespace) -> int:
    """Run `p2law jobs …`; errors become one line on stderr and exit 2."""
    try:
        client = Client(
            args.url or default_url(),
            api_key=os.environ.get("API_KEY"),
            timeout=args.timeout,
        )
        command = args.jobs_command
        if command == "submit":
            return _submit(client, args)
        if command == "list":
            if not 1 <= args.limit <= 500:
                raise ValueError(f"--limit must be within 1-500, not {args.limit}")
            page = client.jobs(
                status=args.status, family=args.family, method=args.method, limit=args.limit
            )
            print(jobs_table(page))
            return EXIT_OK
        if command == "show":
            if args.json:
                print(json.dumps(client.job_json(args.id), indent=2))
            else:
                print(describe(client.job(args.id), client.last_observation(args.id)))
            return EXIT_OK
        if command == "watch":
            return _watch(client, args.id, args)
        if command == "cancel":
            return _cancel(client, args.id)
        raise ValueError(f"unknown jobs command {command!r}")
    except (ServiceError, ValueError, OSError) as exc:
        print(f"p2law: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("p2law: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
