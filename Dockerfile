# One image for every role of the deployment: `tuner create` (init job), `tuner dashboard` and
# `worker run`. The compose files pick the role with `command:`.
#
# Needs BuildKit (the default builder of Docker Engine 23+ and of `docker compose build`; on
# Docker 20.10 `docker build` needs DOCKER_BUILDKIT=1) for the RUN --mount cache and secrets.
# There is deliberately no `# syntax=` line: it would make BuildKit fetch a frontend image from
# Docker Hub, which air-gapped and mirror-only hosts cannot reach.
#
# GPU machines (default):  docker compose build
# CPU-only machines:       BASE_IMAGE=python:3.11-slim (or tensorflow/tensorflow:2.21.0) in .env
#
# The GPU base already ships TensorFlow built against the CUDA/cuDNN libraries inside it; we pin
# pip to that exact TensorFlow so installing the project can never swap in another build. On a
# base without TensorFlow (python:3.11-slim) the pin list is empty and pip installs TensorFlow
# from pyproject.toml's `tensorflow>=2.21,<2.22`.
#
# Private package index or TLS-intercepting proxy: two optional build secrets, never stored in a
# layer. `pip_conf` is a pip configuration file (index-url, extra-index-url, trusted-host; it may
# hold credentials) and `pip_ca` a CA bundle for pip; compose passes the files named by
# PIP_CONF_FILE_HOST and PIP_CA_FILE_HOST (empty /dev/null by default: plain PyPI). The database
# password reaches containers at run time only, as a compose secret file.

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

# Dependencies first, from pyproject.toml alone, in their own layer: editing the sources does
# not reinstall TensorFlow. The pip cache mount keeps the ~600 MB TensorFlow wheel (CPU base)
# across rebuilds without baking it into a layer.
COPY pyproject.toml /opt/mars-tuner/src/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_conf \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -c "import sys; exec('try: import tomllib\\nexcept ImportError: from pip._vendor import tomli as tomllib'); print(*tomllib.load(open(sys.argv[1], 'rb'))['project']['dependencies'], sep='\\n')" \
        /opt/mars-tuner/src/pyproject.toml > /opt/mars-tuner/requirements.txt \
 && python3 -m pip install -c /opt/mars-tuner/base-constraints.txt -r /opt/mars-tuner/requirements.txt \
 && python3 -c "import importlib.metadata as m, sys; v = m.version('tensorflow'); sys.exit(0 if v.startswith('2.21.') else 'tensorflow ' + v + ' does not satisfy >=2.21,<2.22')"

# The project: the whole build context (.dockerignore keeps data, secrets, tests and the venv
# out), so new packages need no change here; pyproject.toml's [tool.setuptools] packages list
# says what gets installed.
COPY . /opt/mars-tuner/src
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_conf \
    --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python3 -m pip install --no-deps -c /opt/mars-tuner/base-constraints.txt /opt/mars-tuner/src \
 && python3 -m pip check \
 && mkdir -p /opt/mars-tuner/spaces \
 && cp /opt/mars-tuner/src/tuner/default_space.yaml /opt/mars-tuner/spaces/default.yaml \
 && rm -rf /opt/mars-tuner/src

# Non-root at run time. /artifacts and /cache (the JAX compile cache) are created here, owned
# by that user, so the named volumes compose mounts there start with the right owner (Docker
# copies ownership on first use).
RUN useradd --create-home --uid 10001 --user-group tuner \
 && mkdir -p /artifacts /cache /data \
 && chown tuner:tuner /artifacts /cache
USER tuner
WORKDIR /home/tuner

# Workers are the common case; compose overrides this for init and dashboard.
CMD ["worker", "run"]
