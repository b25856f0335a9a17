# One image for the API, the migration step and the workers. On a GPU host, build with
# TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or the CUDA version of the host).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /srv/p2law
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
    && pip install -r requirements.txt

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
COPY scripts ./scripts
RUN pip install --no-deps . && useradd --create-home p2law && mkdir -p /var/p2law \
    && chown p2law /var/p2law
USER p2law

ENV MODEL_ROOT=/var/p2law/models \
    DATA_ROOT=/var/p2law/data \
    ARTIFACT_ROOT=/var/p2law/artifacts \
    BROKER_DIR=/var/p2law/broker

EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
