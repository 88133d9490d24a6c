#!/usr/bin/env bash
# api_key_mgmt benchmark: validate_api_key() against a floor, with pgbench.
#
#   make bench                 (installs the release build first, then runs this)
#   benches/run.sh             (uses whatever build is installed)
#
# On a throwaway cluster (tests/cluster.sh, as the postgres user when run as root) it
# loads 10k tenants and 100k keys, measures, grows to 1M keys and measures again. Each
# measurement runs four pgbench scripts in prepared mode (-M prepared), interleaved:
#   floor        fetch a random key's plaintext from bench.side
#   validate     the same, plus api_key_mgmt.validate_api_key() on that key
#   ceiling      the same query as validate, with a scope validate_api_key refuses
#                before any work ('agents:*': invalid_scope): what the query's shape
#                alone leaves of the floor, the most any validation could reach
#   handwritten  the same, plus a hand-written plpgsql + pgcrypto validation (bench only)
# and reports transactions/s and the ratios validate/floor (target >= 0.8),
# ceiling/floor and handwritten/floor. See BENCHMARKS.md.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS  seconds per measurement [20]      BENCH_ROUNDS  rounds, median taken [2]
#   BENCH_WARMUP   seconds of warm-up per script [5]  BENCH_CLIENTS client counts ["1 8"]
#   BENCH_SIZES    key counts, increasing ["100000 1000000"]
#   BENCH_TENANTS  tenants [10000]                   BENCH_THREADS max pgbench -j [2]
#   BENCH_QUICK=1  smoke run: 10k and 50k keys, 1k tenants, 5 s, 1 round, 2 s warm-up
#   BENCH_ALLOW_DEBUG=1  measure even when the installed library is a debug build (refused otherwise)
#   BENCH_DIR [/tmp/api_key_mgmt/bench]  BENCH_PORT [54330]  PG_BIN [/usr/lib/postgresql/15/bin]
# Results: printed at the end and written to $BENCH_DIR/results.md (raw runs: raw.csv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCHES=$ROOT/benches
CLUSTER=$ROOT/tests/cluster.sh
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PG_BIN
DIR=${BENCH_DIR:-/tmp/api_key_mgmt/bench}
PORT=${BENCH_PORT:-54330}

if [ "${BENCH_QUICK:-0}" = 1 ]; then
    d_sizes="10000 50000"; d_tenants=1000; d_seconds=5; d_rounds=1; d_warmup=2
else
    d_sizes="100000 1000000"; d_tenants=10000; d_seconds=20; d_rounds=2; d_warmup=5
fi
SIZES=${BENCH_SIZES:-$d_sizes}
TENANTS=${BENCH_TENANTS:-$d_tenants}
SECONDS_PER_RUN=${BENCH_SECONDS:-$d_seconds}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
WARMUP=${BENCH_WARMUP:-$d_warmup}
CLIENTS=${BENCH_CLIENTS:-1 8}
MAX_THREADS=${BENCH_THREADS:-2}
LOAD_BATCH=100000
SCRIPTS="floor validate ceiling handwritten"
# The scope asked for, passed as a pgbench variable: pgbench would read the ":orchestration"
# of a literal 'agents:orchestration' in the script as a variable reference.
SCOPE=agents:orchestration

PSQL=("$PG_BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
PGBENCH=("$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres)

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[%s +%4ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }
psql_value() { "${PSQL[@]}" -At -c "$1"; }

# The build profile of the installed library: a debug build keeps overflow checks
# (and their panic messages); the release profile of Cargo.toml has none.
lib_profile() {
    local so=$1
    if grep -aq 'attempt to add with overflow' "$so"; then echo debug; else echo release; fi
}

[ -x "$PG_BIN/pgbench" ] || die "pgbench not found in $PG_BIN (Debian: postgresql-contrib)"
PKGLIBDIR=$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/15/lib)
SO=$PKGLIBDIR/api_key_mgmt.so
[ -f "$SO" ] || die "$SO is missing: run 'make install' first"
for n in $SIZES; do
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1000 ] || die "BENCH_SIZES: '$n' is not a key count >= 1000"
done
[ "$(printf '%s\n' $SIZES | sort -n | tr '\n' ' ')" = "$(printf '%s\n' $SIZES | tr '\n' ' ')" ] ||
    die "BENCH_SIZES must be increasing (the cluster grows from one size to the next)"

T0=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
n_sizes=$(wc -w <<<"$SIZES"); n_clients=$(wc -w <<<"$CLIENTS")
est=$(( n_sizes * (n_clients * ROUNDS * 3 * SECONDS_PER_RUN + 3 * WARMUP) ))
log "api_key_mgmt bench: keys [$SIZES], $TENANTS tenants, clients [$CLIENTS], ${SECONDS_PER_RUN}s x $ROUNDS round(s)"
log "measuring takes ~$(( est / 60 )) min plus loading"

# ---------------------------------------------------------------------------------
# A fresh cluster, stopped whatever happens.
# ---------------------------------------------------------------------------------
case "$DIR" in /*/*) ;; *) die "BENCH_DIR must be an absolute path at least two levels deep (it is wiped)";; esac
if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/data/PG_VERSION" ] && [ ! -f "$DIR/raw.csv" ]; then
    die "$DIR exists and does not look like a benchmark cluster; refusing to wipe it"
fi
"$CLUSTER" stop "$DIR"
rm -rf "$DIR"
cleanup() {
    local rc=$?
    "$CLUSTER" stop "$DIR" || true
    [ $rc = 0 ] || echo "bench: failed (exit $rc); server log: $DIR/server.log, pgbench logs: $DIR/logs" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port 54330 lies in Linux's ephemeral port range: a client connection elsewhere on the
# machine can hold it for a moment, so starting is retried.
start_cluster() {
    "$CLUSTER" start "$DIR" "$PORT" \
        "shared_buffers = '1GB'" \
        "work_mem = '64MB'" \
        "maintenance_work_mem = '512MB'" \
        "max_wal_size = '8GB'" \
        "checkpoint_timeout = '30min'" \
        "synchronous_commit = off" \
        "full_page_writes = off" \
        "jit = off"
}
for attempt in 1 2 3 4 5; do
    start_cluster && break
    [ "$attempt" -lt 5 ] || die "cannot start the cluster on port $PORT (see $DIR/server.log)"
    echo "bench: could not start the cluster on port $PORT (attempt $attempt; see $DIR/server.log), retrying in 10s" >&2
    sleep 10
done
mkdir -p "$DIR/logs"
# The postmaster has just preloaded the library; backends keep that copy even if the
# file is replaced later (other builds on a shared machine), so identify it now.
[ -f "$SO" ] || die "$SO disappeared (another install in progress?)"
PROFILE=$(lib_profile "$SO")
SO_SUM=$(sha256sum "$SO" | cut -c1-12)
log "library $SO: $PROFILE build, sha256 $SO_SUM"
if [ "$PROFILE" != release ] && [ "${BENCH_ALLOW_DEBUG:-0}" != 1 ]; then
    die "the installed library is a $PROFILE build, which measures nothing useful: run 'make bench' (installs the release build) or set BENCH_ALLOW_DEBUG=1"
fi
PG_VERSION=$(psql_value "SELECT version()")
log "cluster up on port $PORT ($DIR): $(psql_value 'SHOW server_version'), shared_buffers $(psql_value 'SHOW shared_buffers')"

# ---------------------------------------------------------------------------------
# Schema, tenants, keys.
# ---------------------------------------------------------------------------------
"${PSQL[@]}" -v ntenants="$TENANTS" -f "$BENCHES/setup.sql"
log "schema and $TENANTS tenants created"

loaded=0
grow_to() {
    local target=$1 hi t
    t=$(date +%s)
    while [ "$loaded" -lt "$target" ]; do
        hi=$(( loaded + LOAD_BATCH < target ? loaded + LOAD_BATCH : target ))
        "${PSQL[@]}" -v lo=$(( loaded + 1 )) -v hi="$hi" -v ntenants="$TENANTS" -f "$BENCHES/load_keys.sql"
        loaded=$hi
    done
    log "keys loaded: $loaded ($(( $(date +%s) - t ))s); VACUUM ANALYZE"
    "${PSQL[@]}" -c "VACUUM ANALYZE" -c "CHECKPOINT"
    local ok
    ok=$("${PSQL[@]}" -v nkeys="$loaded" -f "$BENCHES/check.sql")
    [ "$ok" = "t t t t t t t t t t" ] || die "sanity check failed at $loaded keys: '$ok' (see benches/check.sql)"
    "${PSQL[@]}" -At -c "
        SELECT pg_size_pretty(sum(pg_prewarm(c.oid)) * current_setting('block_size')::bigint)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname IN ('api_key_mgmt', 'bench') AND c.relkind IN ('r', 'i')" >"$DIR/logs/prewarm.txt"
    log "sanity check passed; prewarmed $(cat "$DIR/logs/prewarm.txt") into shared_buffers"
}

# ---------------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------------
declare -A TPS     # "size clients script" -> space-separated tps of every round
echo "keys,tenants,clients,round,script,tps" >"$DIR/raw.csv"

# run_pgbench SCRIPT CLIENTS SECONDS NKEYS LOGFILE -> prints tps
run_pgbench() {
    local script=$1 c=$2 secs=$3 nkeys=$4 out=$5 j tps failed
    j=$(( c < MAX_THREADS ? c : MAX_THREADS ))
    if ! "${PGBENCH[@]}" -c "$c" -j "$j" -T "$secs" -D nkeys="$nkeys" -D scope="$SCOPE" -D ceilingscope='agents:*' \
            -f "$BENCHES/$script.pgbench" postgres >"$out" 2>&1; then
        cat "$out" >&2
        die "pgbench $script failed (log: $out)"
    fi
    failed=$(awk '/^number of failed transactions:/ {print $5}' "$out")
    [ -z "$failed" ] || [ "$failed" = 0 ] || { cat "$out" >&2; die "pgbench $script: $failed failed transactions"; }
    tps=$(awk '/^tps = / {print $3; exit}' "$out")
    [ -n "$tps" ] || { cat "$out" >&2; die "pgbench $script: no tps in output"; }
    echo "$tps"
}

measure() {
    local n=$1 r c s tps line
    log "warm-up: ${WARMUP}s per script"
    for s in $SCRIPTS; do
        run_pgbench "$s" "$MAX_THREADS" "$WARMUP" "$n" "$DIR/logs/warmup-$n-$s.log" >/dev/null
    done
    # Rounds outermost; within a round and a client count the scripts run back to back,
    # so that drift on the machine hits floor, validate, ceiling and handwritten alike.
    for (( r = 1; r <= ROUNDS; r++ )); do
        for c in $CLIENTS; do
            line="keys $n, clients $c, round $r/$ROUNDS:"
            for s in $SCRIPTS; do
                tps=$(run_pgbench "$s" "$c" "$SECONDS_PER_RUN" "$n" "$DIR/logs/$n-c$c-r$r-$s.log")
                TPS["$n $c $s"]+=" $tps"
                echo "$n,$TENANTS,$c,$r,$s,$tps" >>"$DIR/raw.csv"
                line+=$(printf ' %s %.0f' "$s" "$tps")
            done
            log "$line"
        done
    done
}

for n in $SIZES; do
    grow_to "$n"
    measure "$n"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
SO_SUM_END=$(sha256sum "$SO" 2>/dev/null | cut -c1-12)
ELAPSED=$(( $(date +%s) - T0 ))

# ---------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
fmt() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }

table=$(
    echo "| keys | clients | floor tps | validate tps | validate / floor | ceiling / floor | handwritten tps | handwritten / floor |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for n in $SIZES; do
        for c in $CLIENTS; do
            # shellcheck disable=SC2086
            f=$(median ${TPS["$n $c floor"]}); v=$(median ${TPS["$n $c validate"]}); h=$(median ${TPS["$n $c handwritten"]})
            # shellcheck disable=SC2086
            z=$(median ${TPS["$n $c ceiling"]})
            echo "| $n | $c | $(fmt "$f") | $(fmt "$v") | $(ratio "$v" "$f") | $(ratio "$z" "$f") | $(fmt "$h") | $(ratio "$h" "$f") |"
        done
    done
)
below=$(awk -F'|' 'NR > 2 && $6 + 0 < 0.8 { printf "  %s keys, %s client(s): validate/floor %.2f\n", $2 + 0, $3 + 0, $6 + 0 }' <<<"$table")

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576; exit }' /proc/meminfo)
commit=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
mode="median of $ROUNDS round(s)"
[ "$ROUNDS" -gt 1 ] || mode="single round"

{
    echo "## api_key_mgmt benchmark results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($cpu), $mem RAM; load average at start $LOAD_START, at end $LOAD_END"
    echo "- PostgreSQL: $PG_VERSION"
    echo "- pgbench: $("$PG_BIN/pgbench" --version)"
    echo "- api_key_mgmt: $PROFILE build (pgrx 0.18.0), library sha256 $SO_SUM, source $commit"
    echo "- workload: $TENANTS tenants; keys spread evenly; pgbench -M prepared, -T $SECONDS_PER_RUN, -j min(clients, $MAX_THREADS); ${WARMUP}s warm-up per script and size"
    echo "- tps: $mode, floor / validate / ceiling / handwritten interleaved per setting; ratio = median validate (ceiling, handwritten) tps / median floor tps"
    echo "- cluster: shared_buffers 1GB (tables and indexes prewarmed), fsync off, synchronous_commit off, jit off"
    echo "- total runtime: $(( ELAPSED / 60 ))m$(( ELAPSED % 60 ))s"
    echo
    echo "$table"
    echo
    if [ -n "$below" ]; then
        echo "Below the 0.8 target:"
        echo '```'
        echo "$below"
        echo '```'
    else
        echo "validate / floor >= 0.8 in every setting."
    fi
    if [ "$SO_SUM_END" != "$SO_SUM" ]; then
        echo
        echo "WARNING: $SO changed during the run (sha256 $SO_SUM -> $SO_SUM_END); the cluster kept the library it preloaded at start."
    fi
    echo
    echo "<details><summary>Every run (tps)</summary>"
    echo
    echo '```'
    awk -F, '{ printf "%-8s %-8s %-8s %-6s %-12s %s\n", $1, $2, $3, $4, $5, $6 }' "$DIR/raw.csv"
    echo '```'
    echo "</details>"
} >"$DIR/results.md"

echo
cat "$DIR/results.md"
echo
log "done in $(( ELAPSED / 60 ))m$(( ELAPSED % 60 ))s; results in $DIR/results.md"
