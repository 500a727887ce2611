# syntax=docker/dockerfile:1
# The LLM gateway as a container: `llm-gateway serve` as a non-root user, the routing policy mounted as a file.
#
#   docker build -t llm-gateway .
#   docker run --rm -p 8080:8080 -v "$PWD/routing_policies:/etc/llm-gateway:ro" \
#       llm-gateway --policy /etc/llm-gateway/example.yaml --host 0.0.0.0 --port 8080
#
# Mount the policy's *directory* (or a Kubernetes ConfigMap) rather than the file alone: the gateway watches the
# directory, and editors and ConfigMap updates replace the file, which a single-file bind mount does not follow.
# Without a mount at /etc/llm-gateway/policy.yaml the default command exits with the error. See docs/vllm.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the package and its dependencies into a virtual environment -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (uvloop, httptools, orjson, pydantic-core, ...), so no
# compiler is installed here either.
RUN python -m venv /opt/llm-gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN /opt/llm-gateway/bin/pip install . \
    && /opt/llm-gateway/bin/pip uninstall -y pip \
    && find /opt/llm-gateway -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the environment alone, no build tools, no pip in the environment, no source tree ----------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="llm-gateway" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway for merged checkpoints next to their source models on vLLM"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/llm-gateway
COPY --from=build /opt/llm-gateway /opt/llm-gateway
ENV PATH=/opt/llm-gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OTEL_SERVICE_NAME=llm-gateway
USER 10001:10001
EXPOSE 8080
# /healthz: the process is alive (readiness, /readyz, also needs a healthy backend: orchestrators probe it).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["llm-gateway", "serve"]
CMD ["--policy", "/etc/llm-gateway/policy.yaml", "--host", "0.0.0.0", "--port", "8080"]
