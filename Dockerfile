# convscope image. CPU by default; `--target cuda` (or the compose "gpu" profile) for NVIDIA GPUs.
#   docker build -t convscope:cpu .            docker build --target cuda -t convscope:cuda .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CONVSCOPE_DATA_DIR=/data CONVSCOPE_STORE_DIR=/opt/convscope/store
# dataset-fashion-mnist: Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist), so `convscope train`
# of the fashion-mnist variants works offline in a container
RUN apt-get update && apt-get install -y --no-install-recommends git dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

FROM base AS cpu
# the CPU wheels of the pinned torch/torchvision (PyPI's default Linux wheels are CUDA builds, several GB)
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY precompute precompute
COPY server server
COPY frontend frontend
COPY reference reference
RUN pip install -e .
# fetch every default model's weights at build time: the image needs no network at run time
RUN convscope zoo fetch --all
EXPOSE 8000
CMD ["convscope", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS cuda
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY precompute precompute
COPY server server
COPY frontend frontend
COPY reference reference
RUN pip install -e .
RUN convscope zoo fetch --all
CMD ["convscope", "worker"]
