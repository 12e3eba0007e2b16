# CI stand-in for python:3.11-slim (BASE_IMAGE): Debian bookworm's Python 3.11 and pip, built
# from Debian packages because no image registry is reachable in CI. deploy/ci-images.sh builds it.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
