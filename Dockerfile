# syntax=docker/dockerfile:1
#
# vestis serve in a container: the HTTP API on a mounted model (see docs/deploy.md).
#
#   docker build -t vestis .                                   # CPU (the default)
#   docker run --rm -p 8000:8000 -v "$PWD/export:/models:ro" vestis   # serves /models/model.onnx
#
# CUDA variant: the same file with two build arguments, run with the NVIDIA container toolkit:
#
#   docker build -t vestis:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       --build-arg ONNXRUNTIME=onnxruntime-gpu .
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/export:/models:ro" vestis:cuda
#
# The CUDA wheels of torch and onnxruntime-gpu carry their CUDA libraries, so the slim Python base serves both;
# only the host's NVIDIA driver is needed. Pick the cuXXX index that matches that driver.

# --- build: a wheel of vestis, so the runtime image holds no sources or build tools --------------------------------
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime -------------------------------------------------------------------------------------------------------
FROM python:3.12-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ONNXRUNTIME=onnxruntime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VESTIS_HEALTH_URL=http://127.0.0.1:8000/healthz

# torch first, from its own index: a plain resolve would pull the default (CUDA) wheel into a CPU image
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/vestis-*.whl)[onnx,serve]" \
    && if [ "${ONNXRUNTIME}" != "onnxruntime" ]; then \
         pip uninstall -y onnxruntime && pip install "${ONNXRUNTIME}"; \
       fi \
    && rm -rf /wheels \
    && python -c "import torch, onnxruntime, vestis.service" \
    && useradd --system --create-home --uid 10001 vestis

USER vestis
WORKDIR /home/vestis
EXPOSE 8000
VOLUME ["/models"]

# /healthz answers as soon as the process is up (liveness); /readyz once the model is loaded and warmed up
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['VESTIS_HEALTH_URL'], timeout=4)"]

ENTRYPOINT ["vestis"]
CMD ["serve", "/models/model.onnx", "--host", "0.0.0.0"]
