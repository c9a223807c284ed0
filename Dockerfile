# syntax=docker/dockerfile:1
# Two images from one file:
#   router  (target `router`): python:3.11-slim with the CPU build of torch (the classifier and the
#            guardrails' MiniLM run on the CPU); serves the OpenAI-compatible endpoint on :8000.
#   worker  (target `worker`): the CUDA runtime with the CUDA build of torch, transformers and
#            bitsandbytes; `tiered-router worker --tier small|large`. It also runs on a CPU host (the
#            compose `cpu` profile), where torch falls back to the CPU.
# Both images install exactly uv.lock: every package at its locked version and hash, except torch, which comes
# at its locked version from PyTorch's index for the image's device (the lock's own torch is the CPU wheel of the
# build machines' local folder).
ARG TORCH_VERSION=2.13.0
ARG UV_VERSION=0.13.9

FROM python:3.11-slim AS source
ARG UV_VERSION
WORKDIR /app
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
COPY pyproject.toml uv.lock README.md ./
RUN uv export --frozen --no-emit-project --no-emit-package torch --format requirements-txt -o requirements.lock.txt
COPY router router
COPY workers workers
COPY config config

FROM python:3.11-slim AS router
ARG TORCH_VERSION
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 NEMO_GUARDRAILS_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
COPY --from=source /app /app
RUN pip install --no-deps --require-hashes -r requirements.lock.txt && pip install --no-deps . && useradd --create-home router && mkdir -p /app/var && chown router /app/var
USER router
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=3)"
CMD ["tiered-router", "serve", "--config", "config/router.yaml", "--host", "0.0.0.0"]

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS worker
ARG TORCH_VERSION
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 NEMO_GUARDRAILS_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HF_HOME=/models
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cu130
WORKDIR /app
COPY --from=source /app /app
RUN pip install --no-deps --require-hashes -r requirements.lock.txt && pip install --no-deps . && mkdir -p /models /app/var
EXPOSE 8001 8002
CMD ["tiered-router", "worker", "--tier", "small", "--config", "config/gpu.yaml"]
