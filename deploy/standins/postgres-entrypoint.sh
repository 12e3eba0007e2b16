#!/bin/sh
# Entrypoint of the CI PostgreSQL stand-in (deploy/standins/postgres.Dockerfile). Like the
# official image: on first start with an empty $PGDATA, initdb with $POSTGRES_USER as superuser
# and the password read from $POSTGRES_PASSWORD_FILE (or $POSTGRES_PASSWORD), create
# $POSTGRES_DB, listen on all addresses with scram-sha-256 for TCP; then run the command as the
# postgres user. The password is never printed.
set -eu

if [ "${1#-}" != "${1:-}" ]; then
    set -- postgres "$@"   # `docker run IMAGE -c x=y` means `postgres -c x=y`
fi
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# Like the official image, read the password file while still root (its mode may be 640 with a
# group the postgres user is not in) and hand it on in the environment of the server's setup only.
if [ "$(id -u)" = 0 ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        password="$(cat "$POSTGRES_PASSWORD_FILE")"
    else
        password="${POSTGRES_PASSWORD:-}"
    fi
    if [ -z "$password" ]; then
        echo "error: database is uninitialised and no password is set (POSTGRES_PASSWORD_FILE)" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$password" > "$pwfile"
    unset password
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Socket only while initialising, so a TCP healthcheck cannot see a half-made database.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -q \
            -c "CREATE DATABASE \"$db\"" >/dev/null
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "initialised $PGDATA: role $user, database $db"
fi
unset POSTGRES_PASSWORD  # the server's environment does not keep it

exec "$@"
