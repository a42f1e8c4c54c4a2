# syntax=docker/dockerfile:1
# TradeScore engine image: `docker build -t tradescore-engine:0.1.0 .`
#
# Two stages on the same base image (the venv's interpreter is a symlink into the base):
#   builder  builds the project's wheel and installs it, with its runtime dependencies only,
#            into a venv at /opt/venv (no [train] or [dev] extras, no compilers), then compiles
#            every kernel of the engine into the installed package (`engine compile --ship`);
#   runtime  copies that venv to the same path, runs as an unprivileged user, serves the model
#            bundle shipped inside the package.
# tests/deploy/test_image.py replays the builder's RUN and the runtime's ENTRYPOINT and
# HEALTHCHECK from this file in a fresh virtual environment, and lints it with hadolint.
# RUN commands reach the paths they write only through the ENV variables set here.

FROM python:3.11-slim-trixie AS builder

# NUMBA_CPU_NAME=generic: the kernels are compiled for a CPU that every x86-64 node has (no
# AVX), so the image's machine code runs wherever the pod lands; the runtime stage sets the same
ENV VIRTUAL_ENV=/opt/venv \
    WHEELHOUSE=/wheelhouse \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CPU_NAME=generic \
    ENGINE_KERNEL_CACHE=/kernel-build

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src

# the pip cache lives in a BuildKit cache mount, never in a layer
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir "$WHEELHOUSE" . \
    && python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install "$WHEELHOUSE"/tradescore_engine-*.whl

# every kernel of the serving path, compiled once here into engine/_kernels/<key> of the venv
# (key: the engine's sources, numba/NumPy/Python versions, the CPU target): a new pod copies
# them to its writable cache and compiles nothing (engine serve logs "0 compiled"); the default
# model's machine code for ENGINE_MODEL_BACKEND=compiled (LLVM via llvmlite: no C compiler) too
RUN "$VIRTUAL_ENV/bin/engine" compile --ship


FROM python:3.11-slim-trixie AS runtime

LABEL org.opencontainers.image.title="tradescore-engine" \
      org.opencontainers.image.description="TradeScore gRPC scoring engine (settlement-fail risk) with its default model bundle"

# settings are ENGINE_* variables (engine serve --help lists them); the ports are fixed here
# because EXPOSE, the HEALTHCHECK and k8s/base/deployment.yaml name them. The request decoder,
# validation rules, features and TreeSHAP are numba kernels, compiled in the builder for the
# same NUMBA_CPU_NAME; a start copies them into ENGINE_KERNEL_CACHE, which must be writable
# (the venv is not, for this user; /tmp is an emptyDir in k8s/base/deployment.yaml)
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CPU_NAME=generic \
    ENGINE_KERNEL_CACHE=/tmp/tradescore-kernels \
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

# gRPC health service (grpc.health.v1), the same one the Kubernetes probes call natively; a
# start serves in about a second (nothing to compile); the start period covers a slow host
# `engine health` without --target checks 127.0.0.1 on ENGINE_PROBE_PORT when set (the gRPC port
# may serve TLS, see --tls-cert), else on ENGINE_PORT: it follows the same environment as the engine
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["engine", "health", "--timeout", "3"]

# exec form: the engine is PID 1 and gets SIGTERM itself (it drains for ENGINE_GRACE_SECONDS,
# default 10 s, then exits 0); arguments after the image name become `engine serve` flags
ENTRYPOINT ["engine", "serve"]
