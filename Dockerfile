# syntax=docker/dockerfile:1
# TradeScore engine image: `docker build -t tradescore-engine:0.1.0 .`
#
# Two stages on the same base image (the venv's interpreter is a symlink into the base):
#   builder  builds the project's wheel and installs it, with its runtime dependencies only,
#            into a venv at /opt/venv (no [train] or [dev] extras, no compilers);
#   runtime  copies that venv to the same path, runs as an unprivileged user, serves the model
#            bundle shipped inside the package.
# tests/deploy/test_image.py replays the builder's RUN and the runtime's ENTRYPOINT and
# HEALTHCHECK from this file in a fresh virtual environment, and lints it with hadolint.
# RUN commands reach the paths they write only through the ENV variables set here.

FROM python:3.11-slim-trixie AS builder

ENV VIRTUAL_ENV=/opt/venv \
    WHEELHOUSE=/wheelhouse \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src

# the pip cache lives in a BuildKit cache mount, never in a layer
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir "$WHEELHOUSE" . \
    && python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install "$WHEELHOUSE"/tradescore_engine-*.whl


FROM python:3.11-slim-trixie AS runtime

LABEL org.opencontainers.image.title="tradescore-engine" \
      org.opencontainers.image.description="TradeScore gRPC scoring engine (settlement-fail risk) with its default model bundle"

# settings are ENGINE_* variables (engine serve --help lists them); the ports are fixed here
# because EXPOSE, the HEALTHCHECK and k8s/base/deployment.yaml name them. The request decoder,
# validation rules and features are numba kernels, compiled at the first start (10-20 s here)
# and cached in NUMBA_CACHE_DIR, which must be writable (the venv is not, for this user)
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    ENGINE_PORT=50051 \
    ENGINE_METRICS_PORT=9095

RUN groupadd --system --gid 10001 engine \
    && useradd --system --no-log-init --uid 10001 --gid engine \
       --home-dir /nonexistent --shell /usr/sbin/nologin engine

# same path as in the builder: console scripts carry the venv's absolute path in their shebang
COPY --from=builder /opt/venv /opt/venv

# numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
USER 10001:10001

EXPOSE 50051 9095

# gRPC health service (grpc.health.v1), the same one the Kubernetes probes call natively; the
# start period covers the first start's kernel compile (10-20 s here, more on a busy host)
# `engine health` without --target checks 127.0.0.1 on ENGINE_PROBE_PORT when set (the gRPC port
# may serve TLS, see --tls-cert), else on ENGINE_PORT: it follows the same environment as the engine
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["engine", "health", "--timeout", "3"]

# exec form: the engine is PID 1 and gets SIGTERM itself (it drains for ENGINE_GRACE_SECONDS,
# default 10 s, then exits 0); arguments after the image name become `engine serve` flags
ENTRYPOINT ["engine", "serve"]
