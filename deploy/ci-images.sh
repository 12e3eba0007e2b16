#!/usr/bin/env bash
# Make this (Debian bookworm, root) machine able to run the Docker Compose deployment for real,
# for the end-to-end test in tests/test_deploy_e2e.py. Idempotent: every step is skipped when its
# result is already there, so a second run takes a second or two.
#
#   1. docker.io and debootstrap from Debian's packages, if missing;
#   2. the Compose v2 plugin from Debian trixie's docker-compose package (bookworm has none),
#      unpacked into /usr/local/lib/docker/cli-plugins; the system's apt sources are untouched;
#   3. dockerd (without iptables and the default bridge) if no daemon answers;
#   4. local stand-ins for the base images, because no image registry is reachable here:
#      $CI_DEBIAN_IMAGE (debootstrap minbase; also PGBOUNCER_BASE_IMAGE, the base of the PgBouncer
#      image, tests/test_deploy_pgbouncer.py), $CI_BASE_IMAGE (Python 3.11, for BASE_IMAGE) and
#      $CI_POSTGRES_IMAGE (PostgreSQL 15 with deploy/standins/postgres-entrypoint.sh, for
#      POSTGRES_IMAGE). Builds use the host network.
#
# It never removes or prunes anything it did not create.
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_IMAGE="${CI_DEBIAN_IMAGE:-mars-tuner-ci/debian:bookworm}"
BASE_IMAGE="${CI_BASE_IMAGE:-mars-tuner-ci/python:3.11-bookworm}"
POSTGRES_IMAGE="${CI_POSTGRES_IMAGE:-mars-tuner-ci/postgres:15-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd-ci.log}"

say() { echo "== ci-images: $*"; }

# --- 1. packages ---------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# --- 2. compose plugin ---------------------------------------------------------------------
if ! docker compose version >/dev/null 2>&1; then
    say "installing the Compose v2 plugin from Debian trixie's docker-compose package"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb $MIRROR trixie main" > "$tmp/sources.list"
    apt_tmp=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
             -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    apt-get "${apt_tmp[@]}" update -q >/dev/null
    (cd "$tmp" && apt-get "${apt_tmp[@]}" download docker-compose >/dev/null)
    dpkg -x "$tmp"/docker-compose_*.deb "$tmp/x"
    mkdir -p "$PLUGIN_DIR"
    install -m 755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN_DIR/"
fi
say "$(docker compose version)"

# --- 3. daemon -----------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if ! pgrep -x dockerd >/dev/null; then
        say "starting dockerd (log: $DOCKERD_LOG)"
        setsid nohup dockerd --iptables=false --bridge=none >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { say "dockerd does not answer; see $DOCKERD_LOG"; exit 1; }
fi
say "docker engine $(docker version --format '{{.Server.Version}}')"

# --- 4. stand-in base images ---------------------------------------------------------------
have() { docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$DEBIAN_IMAGE"; then
    say "debootstrap bookworm (minbase) -> $DEBIAN_IMAGE"
    root="$(mktemp -d /var/tmp/mars-tuner-rootfs.XXXXXX)"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$root"
fi

build_standin() {  # IMAGE DOCKERFILE: (re)built when standins/ changed since it was built
    local digest
    digest="$(cat standins/* | sha256sum | cut -c1-16)"
    if have "$1" && [ "$(docker image inspect -f '{{index .Config.Labels "mars-tuner.standins"}}' "$1")" = "$digest" ]; then
        return 0
    fi
    say "building $1"
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        --label "mars-tuner.standins=$digest" -t "$1" -f "standins/$2" standins >/dev/null
}
build_standin "$BASE_IMAGE" python.Dockerfile
build_standin "$POSTGRES_IMAGE" postgres.Dockerfile
say "base images: BASE_IMAGE=$BASE_IMAGE POSTGRES_IMAGE=$POSTGRES_IMAGE"
