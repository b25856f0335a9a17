#!/usr/bin/env bash
# Serve the API and a real Celery worker process (make run).
#
# Migrates the database (an empty one also gets the reference laws), starts one worker for both
# queues (`gpu` jobs, `cpu` fits and the reaper) with beat embedded, then the API in the
# foreground on 127.0.0.1:${PORT:-8000}. With
# REDIS_URL unset the worker and the API share the embedded file broker under var/broker
# (app/core/queue.py says why files, and the limits). Ctrl-C or the API exiting stops the worker.
set -e

cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT="${PORT:-8000}"
LOG_DIR="${LOG_DIR:-var/log}"
mkdir -p "$LOG_DIR" var

# Migrate; on a first start (empty database) this also loads the reference laws shipped in
# app/reference/, so /predict, /recommend and /plan answer for their families at once.
echo "migrating ${DATABASE_URL:-the default SQLite database under var/}"
"$BIN/p2law" migrate

# First start: a quick tiny Llama to try a job on (examples/quick-job.json), about a minute on
# two cores; QUICK_MODEL=false skips it. Made once: a later start finds it under MODEL_ROOT.
QUICK_DIR="${MODEL_ROOT:-var/models}/quick-llama"
if [ "${QUICK_MODEL:-true}" != "false" ] && [ ! -f "$QUICK_DIR/config.json" ]; then
    echo "making the quick demo model $QUICK_DIR (about a minute; QUICK_MODEL=false skips it)"
    "$BIN/p2law" make-model --arch llama --size tiny --tokens 200000 --out "$QUICK_DIR" \
        --no-progress || echo "could not make $QUICK_DIR (see above); serving without it"
fi

if [ -n "${REDIS_URL:-}" ]; then
    echo "broker: ${REDIS_URL%%@*}@… (REDIS_URL)"
else
    echo "broker: embedded (files under ${BROKER_DIR:-var/broker})"
fi

# One job at a time (prefetch 1, concurrency 1) in a fresh child per job; gossip, mingle and
# worker heartbeats are broker chatter a single worker does not need.
"$BIN/celery" -A workers.celery_app worker -Q gpu,cpu -B \
    --pool prefork --concurrency 1 \
    --without-gossip --without-mingle --without-heartbeat \
    --loglevel INFO --logfile "$LOG_DIR/worker.log" &
WORKER_PID=$!
echo "worker started (pid $WORKER_PID, log $LOG_DIR/worker.log)"

stop_worker() {
    if kill -0 "$WORKER_PID" 2>/dev/null; then
        # TERM = warm shutdown: a running job's message goes back to the queue, its lease
        # expires and it resumes from its checkpoint on the next start.
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$WORKER_PID" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
}
trap stop_worker EXIT INT TERM

"$BIN/uvicorn" app.main:create_app --factory --host 127.0.0.1 --port "$PORT"
