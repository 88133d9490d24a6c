#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the demo, the regression tests and the
# benchmark. initdb refuses root, so as root the cluster runs as the `postgres` user.
#
#   tests/cluster.sh start DIR PORT [postgresql.conf line ...]   (initdb when DIR is new)
#   tests/cluster.sh stop DIR
#   tests/cluster.sh psql DIR PORT [psql args ...]
set -euo pipefail
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: cluster.sh start|stop|psql DIR [PORT]}
dir=${2:?data directory}
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    port=${3:?port}
    shift 3
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        as_pg "$BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$dir'"
            echo "shared_preload_libraries = 'api_key_mgmt'"
            echo "fsync = off"
            echo "max_connections = 200"
            for line in "$@"; do echo "$line"; done
        } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if ! as_pg "$BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
    ;;
stop)
    if [ -f "$dir/data/PG_VERSION" ]; then
        as_pg "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
psql)
    port=${3:?port}
    shift 3
    exec "$BIN/psql" -h "$dir" -p "$port" -U postgres "$@"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
