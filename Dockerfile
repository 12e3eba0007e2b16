# syntax=docker/dockerfile:1
#
# One image for every role of the deployment: `tuner create` (init job), `tuner dashboard` and
# `worker run`. The compose files pick the role with `command:`.
#
# GPU machines (default):  docker compose build
# CPU-only machines:       docker compose build --build-arg BASE_IMAGE=python:3.11-slim
#                          (or BASE_IMAGE=tensorflow/tensorflow:2.21.0 in .env)
#
# The GPU base already ships TensorFlow built against the CUDA/cuDNN libraries inside it; we pin
# pip to that exact TensorFlow so installing the project can never swap in another build. On a
# base without TensorFlow (python:3.11-slim) the pin list is empty and pip installs TensorFlow
# from pyproject.toml's `tensorflow>=2.21,<2.22`. No secrets are passed at build time: the
# database password reaches containers at run time as a compose secret file.

ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# Unbuffered output so `docker compose logs -f worker` shows epochs as they finish.
# PIP_BREAK_SYSTEM_PACKAGES: the image is the environment; there is no OS Python to protect.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/mars-tuner

# Freeze whatever TensorFlow the base image has (nothing on python:3.11-slim) as a constraint.
RUN python3 -m pip freeze --all \
        | grep -iE '^(tensorflow|tensorflow-cpu|tensorflow-intel)==' > /opt/mars-tuner/base-constraints.txt \
    || true

# Only what `pip install .` needs; .dockerignore keeps data, secrets and the venv out.
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY storage ./storage
COPY worker ./worker
COPY tuner ./tuner

# The pip cache mount keeps the ~600 MB TensorFlow wheel (CPU base) across rebuilds
# without baking it into a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install -c /opt/mars-tuner/base-constraints.txt . \
 && python3 -c "import importlib.metadata as m, sys; v = m.version('tensorflow'); sys.exit(0 if v.startswith('2.21.') else 'tensorflow ' + v + ' does not satisfy >=2.21,<2.22')" \
 && mkdir -p /opt/mars-tuner/spaces \
 && cp tuner/default_space.yaml /opt/mars-tuner/spaces/default.yaml

# Non-root at run time. /artifacts is created here, owned by that user, so the named volume
# compose mounts there starts with the right owner (Docker copies ownership on first use).
RUN useradd --create-home --uid 10001 --user-group tuner \
 && mkdir -p /artifacts /data \
 && chown tuner:tuner /artifacts
USER tuner
WORKDIR /home/tuner

# Workers are the common case; compose overrides this for init and dashboard.
CMD ["worker", "run"]
