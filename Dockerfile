# syntax=docker/dockerfile:1
# One image for every role: `tensorgate serve` (default), `tensorgate gateway`, `tensorgate runtime`.
#   CPU: docker build -t tensorgate:cpu .
#   GPU: docker build -t tensorgate:gpu \
#          --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#          --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
ARG BASE=python:3.11-slim-bookworm

# ---- build: a virtual environment with tensorgate and its dependencies ----
FROM ${BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The slim Python base already has python3; the CUDA base (Ubuntu) needs it installed.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first from the index that matches the base (CPU or a CUDA build), then the rest.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY gateway ./gateway
COPY runtime ./runtime
COPY tensorgate ./tensorgate
RUN pip install --no-cache-dir . && tensorgate --help >/dev/null

# ---- run: the same base, the venv, the demo models, a non-root user ----
FROM ${BASE} AS run
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin tensorgate \
    && mkdir -p /data /models \
    && chown tensorgate:tensorgate /data
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 models /models
USER 10001:10001
WORKDIR /data
# The registry (API keys, traffic policies, audit log) and the first admin key live here.
VOLUME ["/data"]
# HTTP, gRPC and Prometheus metrics, as Triton numbers them; a runtime worker uses 8011/8012.
EXPOSE 8000 8001 8002
# Readiness of the gateway (serve or gateway role) on /v2/health/ready, at the address PID 1's own
# flags give (--host, --http-port, --tls-cert). The runtime role has no HTTP port, nor can the
# check show a client certificate (--tls-client-ca): run those with --no-healthcheck and rely on
# the orchestrator's probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tensorgate", "health"]
ENTRYPOINT ["tensorgate"]
CMD ["serve", "--model-repository", "/models", "--registry", "/data/tensorgate.db"]
