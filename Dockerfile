# syntax=docker/dockerfile:1
#
# Two images from one file; docker-compose.yml builds both.
#
#   export   the one-shot job that writes the Triton model repository on the GPU. It is based on NVIDIA's
#            TensorRT image of the *same NGC release* as the Triton image, because a TensorRT plan only
#            loads in the TensorRT version that built it. Torch is the CPU build: export only traces.
#   gateway  (the default, last stage) the ground server: WebRTC in, Triton client, 3D out. CPU only, no
#            torch, runs as an unprivileged user and needs no network access beyond its peers.
#
#   docker build --target gateway -t dronedepth-gateway .
#   docker build --target export --build-arg NGC_RELEASE=25.07 -t dronedepth-export:25.07 .

ARG NGC_RELEASE=25.07
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_VERSION=2.13.0

# ---------------------------------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3 AS export
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /app
# The TensorRT Python bindings of this release build the plan: fail the build now if they are missing.
RUN python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)"
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
# Dependencies first (a layer that survives code changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p dronedepth export gateway/outputs drone benchmarks serving cli \
    && touch dronedepth/__init__.py export/__init__.py gateway/__init__.py gateway/outputs/__init__.py drone/__init__.py benchmarks/__init__.py serving/__init__.py cli/__init__.py \
    && pip install ".[export]" \
    && pip uninstall -y dronedepth
COPY dronedepth ./dronedepth
COPY export ./export
COPY gateway ./gateway
COPY drone ./drone
COPY benchmarks ./benchmarks
COPY serving ./serving
COPY cli ./cli
RUN pip install --no-deps . && dronedepth export --help > /dev/null
COPY deploy/export.sh ./deploy/export.sh
# NVIDIA's entrypoint stays: it sets up the CUDA forward-compatibility libraries on older drivers.
CMD ["/app/deploy/export.sh"]

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Open3D's shared libraries: libusb-1.0-0 (or 'import open3d' fails), GL/EGL/X11 stubs, udev; OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0 libgl1 libegl1 libx11-6 libudev1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir -p dronedepth export gateway/outputs drone benchmarks serving cli \
    && touch dronedepth/__init__.py export/__init__.py gateway/__init__.py gateway/outputs/__init__.py drone/__init__.py benchmarks/__init__.py serving/__init__.py cli/__init__.py \
    && pip install ".[gateway]" \
    && pip uninstall -y dronedepth
COPY dronedepth ./dronedepth
COPY export ./export
COPY gateway ./gateway
COPY drone ./drone
COPY benchmarks ./benchmarks
COPY serving ./serving
COPY cli ./cli
RUN pip install --no-deps . && dronedepth gateway --help > /dev/null \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin dronedepth
USER 10001:10001
EXPOSE 8080/tcp
ENTRYPOINT ["dronedepth"]
CMD ["gateway", "--help"]
