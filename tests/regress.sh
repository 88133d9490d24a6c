#!/usr/bin/env bash
# SQL regression tests: tests/pg_regress/sql/*.sql against tests/pg_regress/expected/*.out,
# with PostgreSQL's pg_regress on a throwaway cluster (library preloaded).
#
# This is what `cargo pgrx regress` does; we call pg_regress ourselves because cargo-pgrx
# 0.18.0 starts its regress server from $PGRX_HOME as the current user, ignoring
# --runas/--pgdata, and Postgres refuses to run as root (as CI does).
#
#   tests/regress.sh              run; non-zero exit and a diff on any difference
#   REGRESS_AUTO=1 tests/regress.sh   also promote the actual output to expected/
#   tests/regress.sh 03_validate 07_secrets   only these (after setup and those before them)
#   REGRESS_FROM=0.1.0 tests/regress.sh   the same suite on a database whose extension was
#                                  installed at 0.1.0 and updated (ALTER EXTENSION UPDATE)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${REGRESS_DIR:-/tmp/api_key_mgmt/regress}
port=${REGRESS_PORT:-54340}
out=$dir/out
db=api_key_mgmt_regress
# PG_CONFIG picks the PostgreSQL (default Debian's 15); its programs run the cluster.
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$("$pg_config" --bindir)
export PG_BIN=$bindir
pgxs=$(dirname "$("$pg_config" --pgxs)")
pg_regress=$pgxs/../test/regress/pg_regress

"$here/cluster.sh" stop "$dir"
rm -rf "$dir"
trap '"$here/cluster.sh" stop "$dir"' EXIT
# Unix socket only (no TCP port that another cluster could hold). The regression
# database is not the maintenance worker's (it serves postgres): its
# secret reads are audited in the reading transaction (durable reads would fail closed).
"$here/cluster.sh" start "$dir" "$port" "client_min_messages = warning" "lc_messages = 'C'" \
    "api_key_mgmt.audit_read_mode = 'transaction'" "listen_addresses = ''"
"$bindir/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres -c "CREATE DATABASE $db" \
    -c "ALTER DATABASE $db SET regress.keys = '$dir/keys'" \
    -c "ALTER DATABASE $db SET regress.from_version = '${REGRESS_FROM:-}'"

mkdir -p "$out"
# Master key files for 07_secrets (test keys, readable by the server only).
keys=$dir/keys
mkdir -p "$keys"
k1=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
k2=202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
echo "1 $k1" >"$keys/v1"
printf '# both versions, 2 active\n1 %s\n2 %s active\n' "$k1" "$k2" >"$keys/v12"
echo "2 $k2" >"$keys/v2"
echo "1 $k2" >"$keys/wrong"
echo "1 not-a-key" >"$keys/malformed"
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$keys"; fi
chmod 600 "$keys"/*
tests=(setup)
last=${!#}
for f in "$here"/pg_regress/sql/*.sql; do
    name=$(basename "$f" .sql)
    [ "$name" = setup ] && continue
    # With names given, run every test up to the last one named (later tests build on
    # the state earlier ones leave), promoting only the named ones.
    if [ $# -gt 0 ] && [[ "$name" > "$last" ]]; then continue; fi
    tests+=("$name")
done
promote=("${tests[@]}")
[ $# -gt 0 ] && promote=("$@")

if [ "${REGRESS_AUTO:-0}" = 1 ]; then
    for t in "${promote[@]}"; do touch "$here/pg_regress/expected/$t.out"; done
fi

status=0
(cd "$here/pg_regress" && env -u PGDATABASE -u PGHOST -u PGPORT -u PGUSER \
    "$pg_regress" --bindir="$bindir" --host="$dir" --port="$port" --user=postgres --use-existing \
    --dbname="$db" --inputdir="$here/pg_regress" --outputdir="$out" "${tests[@]}") || status=$?

if [ "${REGRESS_AUTO:-0}" = 1 ]; then
    for t in "${promote[@]}"; do cp "$out/results/$t.out" "$here/pg_regress/expected/$t.out"; done
    echo "regress: promoted actual output to tests/pg_regress/expected/"
elif [ "$status" != 0 ]; then
    cat "$out/regression.diffs" 2>/dev/null || true
fi
exit "$status"
