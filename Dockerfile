# syntax=docker/dockerfile:1
# Multi-stage build. The runtime image serves with ONNX Runtime only: no torch in it.
#   builder  installs the trainer (torch 2.13.0 CPU) and bakes the default model into /src/models
#            (trained from the generator's named tables and their feature spec) with its item
#            table and embedded user store in /src/stores, so a fresh `docker compose up` ranks
#            by ids without any manual step;
#   runtime  the service with the `serve` extra (or `gpu` with --build-arg EXTRA=gpu), the baked
#            model and stores copied in, running as an unprivileged user. Mount volumes on
#            /app/models and /app/stores to serve other models instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY features features
COPY training training
COPY ranker ranker
# torch is pinned to 2.13.0. Pass PIP_EXTRA_INDEX_URL (or PIP_INDEX_URL) as a build argument to
# take a CPU-only torch; without one the default index's build is used, in this stage only.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN python -m venv /opt/train && /opt/train/bin/pip install --quiet '.[train]'
ARG IMPRESSIONS=300000
RUN /opt/train/bin/python -m training.generate --out /tmp/data --impressions ${IMPRESSIONS} \
      --layout tables \
 && /opt/train/bin/python -m training.train --spec /tmp/data/tables/spec.yaml --out /tmp/run \
      --no-reference --wide all \
 && /opt/train/bin/python -m training.export --run /tmp/run --out /src/models/esmm/baked \
 && mkdir -p /src/stores \
 && /opt/train/bin/python -m ranker.items build --spec /tmp/data/tables/spec.yaml \
      --out /src/stores/items.npz \
 && /opt/train/bin/python -m ranker.users build --spec /tmp/data/tables/spec.yaml \
      --out /src/stores/users.npz

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRA=serve
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    RANKER_HOST=0.0.0.0 RANKER_PORT=8000 RANKER_MODEL_DIR=/app/models \
    RANKER_ITEM_TABLE=/app/stores/items.npz RANKER_USER_STORE=/app/stores/users.npz
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features features
COPY service service
COPY ranker ranker
RUN python -m venv /opt/ranker && /opt/ranker/bin/pip install --quiet ".[${EXTRA}]" \
 && useradd --system --uid 10001 --home /app ranker
COPY --from=builder --chown=ranker /src/models /app/models
COPY --from=builder --chown=ranker /src/stores /app/stores
USER ranker
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD ["/opt/ranker/bin/python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["/opt/ranker/bin/ranker", "serve"]

# Locust against the ranker (compose profile `loadtest`).
FROM ${PYTHON_IMAGE} AS loadtest
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features features
COPY training training
COPY loadtest loadtest
RUN python -m venv /opt/loadtest && /opt/loadtest/bin/pip install --quiet '.[loadtest]' \
 && useradd --system --uid 10001 --home /app locust
USER locust
ENTRYPOINT ["/opt/loadtest/bin/locust", "-f", "loadtest/locustfile.py"]
