# The Meridian image: the API (`meridian serve`, the default command), the event worker
# (`meridian worker`) and every operator command (`meridian migrate`, `meridian shards add`,
# `meridian admin create-client`, ...). One image for all of them, so a migration always
# runs the code of the release it migrates for.
#
#   docker build -t ghcr.io/meridian/meridian:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#   docker push ghcr.io/meridian/meridian:0.1.0
#
# The Helm chart (helm/meridian) runs ghcr.io/meridian/meridian:<appVersion> by default;
# compose.yaml builds it locally. docs/deploy.md has the rest.
#
# Base images are pinned by tag. Where a build must be reproducible bit for bit, pin the
# digest too: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the locked dependencies and the project, in a virtualenv ------------------
FROM ${PYTHON_IMAGE} AS builder

# The uv that scripts/setup pins: the same resolver reads uv.lock in CI and here.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# Bytecode is compiled here because the runtime's root filesystem may be read-only
# (the chart's is), where nothing could cache it; the venv is copied as files, not
# hard links into a cache that is not in the final image; uv uses this image's Python
# and never downloads one, so the venv's interpreter is the runtime stage's own.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/meridian

WORKDIR /src

# The dependencies alone first, from the lock file only: this layer is rebuilt when
# uv.lock changes, not on every change to the sources. --locked fails the build when
# uv.lock does not match pyproject.toml instead of resolving anew.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project --no-editable

# Then the project, built as a wheel and installed into the venv (not editable: /src is
# not in the final image). The wheel carries the Alembic trees (platform/migrations) as
# the top-level `migrations` folder beside `meridian`, where meridian.migrate finds them.
# .dockerignore lets in only what the wheel is built from.
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable \
 && /opt/meridian/bin/python -c "import meridian.migrate as m; assert (m.MIGRATIONS / 'control' / 'env.py').is_file() and (m.MIGRATIONS / 'shard' / 'env.py').is_file(), m.MIGRATIONS"

# -- runtime: the venv on a slim Python, as an unprivileged user -----------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="meridian" \
      org.opencontainers.image.description="Meridian, a sharded multi-tenant CRM API: the API, the event worker and the operator commands" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.documentation="docs/deploy.md"

# A fixed numeric UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER, and
# the chart's podSecurityContext (runAsUser/fsGroup 10001) matches it.
RUN groupadd --system --gid 10001 meridian \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin meridian

# Owned by root and read-only to the app user: the process cannot change its own code.
COPY --from=builder /opt/meridian /opt/meridian

# PYTHONDONTWRITEBYTECODE: the bytecode is already compiled, and the root filesystem
# may be read-only. HEALTHCHECK_URL is what the image's health check asks; set it when
# `serve` listens on another port. No MERIDIAN_* setting is baked in: they come from the
# environment of each deployment (compose.yaml, the chart).
ENV PATH=/opt/meridian/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:8000/healthz

# An empty working directory: the CLI looks for a dev platform's .meridian/dev.json in
# the current one, and there must be none.
WORKDIR /srv/meridian

USER 10001:10001

# 8000: the API (and its /metrics); 9101: the worker's /metrics when
# MERIDIAN_WORKER_METRICS_PORT=9101.
EXPOSE 8000 9101

# The slim image has no curl: Python asks /healthz (liveness: the app has started).
# urlopen raises on a refused connection, a timeout and any non-2xx answer. The worker
# and the one-shot commands serve no /healthz: compose.yaml gives them their own check
# or none; Kubernetes ignores this one and uses the chart's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=3)"]

ENTRYPOINT ["meridian"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
