"""A rank of a multi-device job: what it imports, and which errors it reports as the job's."""

from __future__ import annotations

import subprocess
import sys

from workers.lease import LeaseLostError
from workers.rank import lost_peer


def test_a_rank_never_builds_the_celery_app() -> None:
    code = (
        "import sys, workers.rank, workers.ml.pipeline, workers.ml.strategy; "
        "print('workers.celery_app' in sys.modules, 'workers.tasks' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_lost_peer_is_not_the_jobs_error() -> None:
    assert lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed by peer"))
    assert not lost_peer(RuntimeError("CUDA out of memory"))
    assert not lost_peer(LeaseLostError("job x: the lease was taken over"))
