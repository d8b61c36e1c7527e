# Atelier API and worker image. CPU by default; for CUDA build with
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t atelier:cuda .
# (a CUDA base image needs python3/pip installed: the apt line below does it on Debian/Ubuntu bases).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
      rm -rf /var/lib/apt/lists/*; fi \
 && python3 -m venv /opt/venv

WORKDIR /srv/atelier
# Dependencies first (cached layer): torch from the chosen index, the rest from PyPI.
COPY pyproject.toml README.md ./
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.4,<2.15" "torchvision>=0.19,<0.30" \
 && mkdir -p app worker models && touch app/__init__.py worker/__init__.py models/__init__.py \
 && pip install . && pip uninstall -y atelier

COPY app ./app
COPY core ./core
COPY worker ./worker
COPY models ./models
RUN pip install --no-deps . \
 && useradd --create-home --uid 10001 atelier
USER atelier

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["atelier", "api", "--host", "0.0.0.0", "--port", "8000"]
