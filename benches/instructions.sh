#!/usr/bin/env bash
# Instructions per statement, counted with callgrind: a noise-free companion to
# benches/run.sh for finding where validate_api_key's time goes.
#
#   benches/run.sh            (or BENCH_QUICK=1 benches/run.sh: leaves a loaded, stopped cluster)
#   benches/instructions.sh   (needs valgrind; takes about two minutes)
#
# Each variant runs in a single-user backend (postgres --single) under callgrind, once
# with N1 and once with N2 executions of the same prepared statement on one fixed key;
# (instructions(N2) - instructions(N1)) / (N2 - N1) is the cost of one statement,
# startup excluded. No network and fully cached, so this counts work, not latency; the
# pgbench numbers are higher per instruction because every round trip leaves the
# caches cold. Per-function profiles: callgrind_annotate $BENCH_DIR/callgrind/<variant>-<N2>.out
#
# Environment: BENCH_DIR [/tmp/api_key_mgmt/bench], PG_BIN [/usr/lib/postgresql/15/bin],
#              N1 [200], N2 [1200], VARIANTS [all, in the order below],
#              BENCH_ALLOW_DEBUG=1 to count a debug build (refused otherwise).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=${BENCH_DIR:-/tmp/api_key_mgmt/bench}
OUT=$DIR/callgrind
N1=${N1:-200}
N2=${N2:-1200}

command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ -f "$DIR/data/PG_VERSION" ] || { echo "instructions: no benchmark cluster in $DIR; run benches/run.sh first" >&2; exit 1; }
"$ROOT/tests/cluster.sh" stop "$DIR"      # single-user mode needs the cluster stopped
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# What PostgREST sets before its pre-request hook (session-wide here, for every EXECUTE):
# a POST to a route that needs agents:orchestration, with key 4242 in X-API-Key.
HOOK_REQUEST="SELECT set_config('request.method', 'POST', false), set_config('request.path', '/rpc/orchestrate', false), set_config('request.headers', json_build_object('x-api-key', api_key)::text, false) FROM bench.side WHERE id = 4242;"
# name | PREPARE (the statement is named p) | EXECUTE
VARIANTS_ALL=(
"floor|PREPARE p(int) AS SELECT api_key FROM bench.side WHERE id = \$1;|EXECUTE p(4242);"
"lateral_scalar|PREPARE p(int) AS SELECT v FROM bench.side s CROSS JOIN LATERAL pg_catalog.length(s.api_key) v WHERE s.id = \$1;|EXECUTE p(4242);"
"validate_early_exit|PREPARE p(int, text) AS SELECT v.valid, v.code FROM bench.side s CROSS JOIN LATERAL api_key_mgmt.validate_api_key(s.api_key, \$2) v WHERE s.id = \$1;|EXECUTE p(4242, 'Not A Scope');"
"validate|PREPARE p(int, text) AS SELECT v.valid, v.code FROM bench.side s CROSS JOIN LATERAL api_key_mgmt.validate_api_key(s.api_key, \$2) v WHERE s.id = \$1;|EXECUTE p(4242, 'agents:orchestration');"
"validate_select|PREPARE p(int, text) AS SELECT api_key_mgmt.validate_api_key(s.api_key, \$2) FROM bench.side s WHERE s.id = \$1;|EXECUTE p(4242, 'agents:orchestration');"
"validate_field|PREPARE p(int, text) AS SELECT (api_key_mgmt.validate_api_key(s.api_key, \$2)).code FROM bench.side s WHERE s.id = \$1;|EXECUTE p(4242, 'agents:orchestration');"
"sql_join|PREPARE p(int) AS SELECT k.id, t.disabled_at FROM bench.side s JOIN api_key_mgmt.api_keys k ON k.key_hash = api_key_mgmt_internal.hash_key(s.api_key) JOIN api_key_mgmt.tenants t ON t.id = k.tenant_id WHERE s.id = \$1;|EXECUTE p(4242);"
"handwritten|PREPARE p(int, text) AS SELECT v.valid, v.code FROM bench.side s CROSS JOIN LATERAL bench.hw_validate_api_key(s.api_key, \$2) v WHERE s.id = \$1;|EXECUTE p(4242, 'agents:orchestration');"
"charge|PREPARE p AS SELECT (api_key_mgmt.charge_api_key((SELECT k.id FROM api_key_mgmt.api_keys k ORDER BY k.id LIMIT 1), 'agents:orchestration', 0.001)).code;|EXECUTE p;"
"hook|$HOOK_REQUEST PREPARE p AS SELECT api_key_mgmt.authenticate_request();|EXECUTE p;"
"hook_body|$HOOK_REQUEST PREPARE p AS SELECT api_key_mgmt_impl.authenticate_request();|EXECUTE p;"
)
declare -A WHAT=(
    [floor]="the floor script's statement"
    [lateral_scalar]="floor + LATERAL of a trivial built-in (length): the query shape alone"
    [validate_early_exit]="floor + LATERAL validate_api_key() that returns invalid_scope before any hashing or lookup"
    [validate]="the validate script's statement (valid key, answers ok)"
    [validate_select]="validate_api_key() in the select list: the whole row as one composite column"
    [validate_field]="(validate_api_key()).code in the select list: one field, no FunctionScan"
    [sql_join]="floor + plain SQL join: hash_key() + api_keys and tenants index probes"
    [handwritten]="the handwritten script's statement"
    [charge]="charge_api_key() of 0.001 on the first key (its native path: meter update and usage row)"
    [hook]="authenticate_request(), PostgREST's pre-request hook, through its entry point (src/caller.rs)"
    [hook_body]="the same hook's body called directly (as the owner): hook minus this is the entry point's cost"
)

rm -rf "$OUT"; mkdir -p "$OUT"
[ "$(id -u)" = 0 ] && chown postgres: "$OUT"
count() { # variant n -> instructions
    local name=$1 prep=$2 exec=$3 n=$4 input=$OUT/$1-$4.sql
    { echo "$prep"; for (( i = 0; i < n; i++ )); do echo "$exec"; done; } >"$input"
    as_pg valgrind --tool=callgrind --callgrind-out-file="$OUT/$name-$n.out" \
        "$PG_BIN/postgres" --single -D "$DIR/data" -c shared_buffers=128MB postgres \
        <"$input" >"$OUT/$name-$n.txt" 2>"$OUT/$name-$n.log"
    grep -q 'ERROR' "$OUT/$name-$n.txt" && { echo "instructions: $name failed, see $OUT/$name-$n.txt" >&2; exit 1; }
    grep -o 'Collected : [0-9]*' "$OUT/$name-$n.log" | grep -o '[0-9]*$'
}

SO=$("$PG_BIN/pg_config" --pkglibdir)/api_key_mgmt.so
lib() { if grep -aq 'attempt to add with overflow' "$SO"; then echo -n "debug"; else echo -n "release"; fi; echo " build, sha256 $(sha256sum "$SO" | cut -c1-12)"; }
LIB=$(lib)
echo "library $SO: $LIB"
case "$LIB" in
release*) ;;
*) [ "${BENCH_ALLOW_DEBUG:-0}" = 1 ] || { echo "instructions: the installed library is a debug build; install the release build (make install) or set BENCH_ALLOW_DEBUG=1" >&2; exit 1; } ;;
esac
printf '%-20s %14s %12s  %s\n' variant "instr/stmt" "vs floor" "what"
floor=
for v in "${VARIANTS_ALL[@]}"; do
    IFS='|' read -r name prep exec <<<"$v"
    if [ -n "${VARIANTS:-}" ] && ! grep -qw "$name" <<<"$VARIANTS floor"; then continue; fi
    a=$(count "$name" "$prep" "$exec" "$N1")
    b=$(count "$name" "$prep" "$exec" "$N2")
    per=$(( (b - a) / (N2 - N1) ))
    [ -n "$floor" ] || floor=$per
    printf '%-20s %14d %+12d  %s\n' "$name" "$per" "$(( per - floor ))" "${WHAT[$name]}"
done
[ "$(lib)" = "$LIB" ] || echo "instructions: WARNING: $SO changed during the run (now $(lib)); the numbers mix builds" >&2
