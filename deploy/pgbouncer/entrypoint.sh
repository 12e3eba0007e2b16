#!/bin/sh
# Entrypoint of the PgBouncer image (deploy/pgbouncer/Dockerfile, docs/pgbouncer.md). Writes
# /run/pgbouncer/pgbouncer.ini and its auth file from the environment docker-compose.yml sets and
# the login role's password file (a compose secret), then runs PgBouncer in the foreground:
#
#   transaction pooling; one database, $PGBOUNCER_DB_NAME on $PGBOUNCER_DB_HOST:$PGBOUNCER_DB_PORT;
#   one login role, $PGBOUNCER_USER, with the password in $PGBOUNCER_PASSWORD_FILE (SCRAM from
#   clients, SCRAM to the server with the same password); the worker's startup `options` ignored
#   and $PGBOUNCER_CONNECT_QUERY run on every server connection instead; TLS required from clients
#   when $PGBOUNCER_TLS_CERT_FILE and $PGBOUNCER_TLS_KEY_FILE are non-empty.
#
# The password is never printed. Errors are one `error:` line and exit 1. PGBOUNCER_RUN_DIR
# (default /run/pgbouncer, private to this user) is where the files and the admin socket go.
set -eu

run="${PGBOUNCER_RUN_DIR:-/run/pgbouncer}"
fail() { echo "error: $*" >&2; exit 1; }

for name in PGBOUNCER_DB_HOST PGBOUNCER_DB_PORT PGBOUNCER_DB_NAME PGBOUNCER_USER PGBOUNCER_PASSWORD_FILE \
            PGBOUNCER_POOL_SIZE PGBOUNCER_MAX_CLIENT_CONN PGBOUNCER_CONNECT_QUERY; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || fail "$name is not set"
done

# The same checks as the tuner's reader of password files (storage.url.read_password_file).
file="$PGBOUNCER_PASSWORD_FILE"
[ -f "$file" ] || fail "PGBOUNCER_PASSWORD_FILE=$file is not a regular file (is the secret mounted?)"
[ -r "$file" ] || fail "cannot read PGBOUNCER_PASSWORD_FILE=$file (SECRETS_GID must be the file's group)"
mode="$(stat -c %a "$file")"
case "$mode" in
    *[1-7]) fail "PGBOUNCER_PASSWORD_FILE=$file is readable or writable by other users (mode $mode): \`chmod o-rwx\` it" ;;
esac
password="$(cat "$file")"
[ -n "$password" ] || fail "PGBOUNCER_PASSWORD_FILE=$file is empty: write the password into it"
case "$password" in
    *"
"*|" "*|*" ") fail "PGBOUNCER_PASSWORD_FILE=$file must hold the password alone on one line" ;;
esac

tls=""
cert="${PGBOUNCER_TLS_CERT_FILE:-}"
key="${PGBOUNCER_TLS_KEY_FILE:-}"
if [ -s "$cert" ] || [ -s "$key" ]; then
    [ -s "$cert" ] && [ -s "$key" ] || fail "TLS needs both PGBOUNCER_TLS_CERT_FILE and PGBOUNCER_TLS_KEY_FILE"
    [ -r "$key" ] || fail "cannot read PGBOUNCER_TLS_KEY_FILE=$key (SECRETS_GID must be the file's group)"
    # client_tls_ca_file would check client certificates, which `require` never asks for; PgBouncer
    # 1.18 loads one all the same (its default path is missing on Debian), so it is our own.
    tls="client_tls_sslmode = require
client_tls_cert_file = $cert
client_tls_key_file = $key
client_tls_ca_file = $cert"
fi

umask 077
# The auth file: "role" "password", a double quote doubled.
printf '"%s" "%s"\n' "$PGBOUNCER_USER" "$(printf '%s' "$password" | sed 's/"/""/g')" > "$run/userlist.txt"
unset password
query="$(printf '%s' "$PGBOUNCER_CONNECT_QUERY" | sed "s/'/''/g")"
cat > "$run/pgbouncer.ini" <<INI
[databases]
$PGBOUNCER_DB_NAME = host=$PGBOUNCER_DB_HOST port=$PGBOUNCER_DB_PORT dbname=$PGBOUNCER_DB_NAME connect_query='$query'

[pgbouncer]
listen_addr = *
listen_port = 6432
; the admin console: user pgbouncer over this socket, as this container's user (docs/pgbouncer.md)
unix_socket_dir = $run
auth_type = scram-sha-256
auth_file = $run/userlist.txt
pool_mode = transaction
max_client_conn = $PGBOUNCER_MAX_CLIENT_CONN
default_pool_size = $PGBOUNCER_POOL_SIZE
ignore_startup_parameters = options
; no TLS to the server: that link stays inside the coordinator's compose network
$tls
INI

echo "pgbouncer: transaction pooling for $PGBOUNCER_USER on $PGBOUNCER_DB_NAME at $PGBOUNCER_DB_HOST:$PGBOUNCER_DB_PORT," \
     "pool $PGBOUNCER_POOL_SIZE, clients $PGBOUNCER_MAX_CLIENT_CONN, TLS from clients: $([ -n "$tls" ] && echo required || echo off)"
exec pgbouncer "$run/pgbouncer.ini"
