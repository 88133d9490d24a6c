#!/usr/bin/env bash
# api_key_mgmt metering benchmark (issue 4), separate from run.sh's key benchmark.
#
#   benches/metering.sh      (uses whatever build is installed; `make install` first)
#
# On a throwaway cluster (library preloaded, so the rate limiter is in shared memory):
# 1000 tenants, 10000 keys, each key with a daily and monthly cap (never reached) and a
# rate limit (never reached). pgbench, prepared mode, at 1, 8 and 32 clients:
#   charge_floor     INSERT of the same usage row into api_key_mgmt.usage_events
#   charge           api_key_mgmt.charge_api_key() with caps enabled    (target >= 0.7)
#   validate_floor   fetch a random key's plaintext from a side table
#   validate_rl      the same, plus validate_api_key(..., cost => 1)    (target >= 0.75)
#   ceiling          validate_rl's query with a scope refused before any work ('agents:*'):
#                    what the query's shape alone leaves of validate_floor
# Each cell is the median of MBENCH_ROUNDS rounds, the runs of a client count back to back
# in each round. Environment: MBENCH_SECONDS [10], MBENCH_ROUNDS [3], MBENCH_CLIENTS
# ["1 8 32"], MBENCH_DIR, MBENCH_PORT.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PG_BIN
DIR=${MBENCH_DIR:-/tmp/api_key_mgmt/bench-metering}
PORT=${MBENCH_PORT:-54331}
SECS=${MBENCH_SECONDS:-10}
ROUNDS=${MBENCH_ROUNDS:-3}
CLIENTS=${MBENCH_CLIENTS:-1 8 32}
NKEYS=10000
PSQL=("$PG_BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
PGBENCH=("$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -d postgres)

"$ROOT/tests/cluster.sh" stop "$DIR"
rm -rf "$DIR"
trap '"$ROOT/tests/cluster.sh" stop "$DIR"' EXIT
"$ROOT/tests/cluster.sh" start "$DIR" "$PORT" "shared_buffers = 256MB" "synchronous_commit = off"

"${PSQL[@]}" <<SQL
CREATE EXTENSION api_key_mgmt;
SELECT api_key_mgmt.create_usage_partitions(1);
CREATE SCHEMA bench;
CREATE TABLE bench.keys (id int PRIMARY KEY, tenant_id uuid, key_id uuid, api_key text);
DO \$\$
DECLARE t uuid; k record;
BEGIN
  FOR i IN 1..1000 LOOP
    t := api_key_mgmt.create_tenant('t' || i, '{*}');
    FOR j IN 1..$((NKEYS / 1000)) LOOP
      SELECT * INTO k FROM api_key_mgmt.issue_api_key(t, 'k', '{agents:*}');
      INSERT INTO bench.keys VALUES ((i - 1) * $((NKEYS / 1000)) + j, t, k.key_id, k.api_key);
      PERFORM api_key_mgmt.set_key_caps(k.key_id, daily_cap => 1000000000, monthly_cap => 1000000000);
      PERFORM api_key_mgmt.set_rate_limit(k.key_id, 'per_second', 1000000000, '1 second');
    END LOOP;
  END LOOP;
END
\$\$;
VACUUM ANALYZE;
SQL

w=$(mktemp -d)
cat >"$w/charge_floor.pgbench" <<'S'
\set id random(1, :nkeys)
INSERT INTO api_key_mgmt.usage_events (tenant_id, key_id, scope, units, cost, occurred_at) SELECT tenant_id, key_id, :scope, 1, 0.001, now() FROM bench.keys WHERE id = :id;
S
cat >"$w/charge.pgbench" <<'S'
\set id random(1, :nkeys)
SELECT c.allowed FROM bench.keys k CROSS JOIN LATERAL api_key_mgmt.charge_api_key(k.key_id, :scope, 0.001) c WHERE k.id = :id;
S
cat >"$w/validate_floor.pgbench" <<'S'
\set id random(1, :nkeys)
SELECT api_key FROM bench.keys WHERE id = :id;
S
cat >"$w/validate_rl.pgbench" <<'S'
\set id random(1, :nkeys)
SELECT v.valid, v.code FROM bench.keys s CROSS JOIN LATERAL api_key_mgmt.validate_api_key(s.api_key, :scope, cost => 1) v WHERE s.id = :id;
S
cat >"$w/ceiling.pgbench" <<'S'
\set id random(1, :nkeys)
SELECT v.valid, v.code FROM bench.keys s CROSS JOIN LATERAL api_key_mgmt.validate_api_key(s.api_key, :ceilingscope, cost => 1) v WHERE s.id = :id;
S

tps() { # script clients
    local j=$(( $2 < 2 ? $2 : 2 ))
    "${PGBENCH[@]}" -c "$2" -j "$j" -T "$SECS" -D nkeys=$NKEYS -D scope=agents:chat -D ceilingscope='agents:*' -f "$w/$1.pgbench" 2>/dev/null \
        | awk '/^tps = / {printf "%.0f", $3}'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
declare -A T
for (( r = 1; r <= ROUNDS; r++ )); do
    for c in $CLIENTS; do
        line="round $r/$ROUNDS, $c client(s):"
        for s in charge_floor charge validate_floor validate_rl ceiling; do
            t=$(tps "$s" "$c")
            T[$c $s]+=" $t"
            line+=" $s $t"
        done
        echo "$line" >&2
    done
done
echo "| clients | charge_floor | charge | ratio | validate_floor | validate_rl | ratio | ceiling ratio |"
echo "|---|---|---|---|---|---|---|---|"
for c in $CLIENTS; do
    # shellcheck disable=SC2086
    cf=$(median ${T[$c charge_floor]}); ch=$(median ${T[$c charge]})
    # shellcheck disable=SC2086
    vf=$(median ${T[$c validate_floor]}); vr=$(median ${T[$c validate_rl]}); vz=$(median ${T[$c ceiling]})
    printf '| %s | %s | %s | %.2f | %s | %s | %.2f | %.2f |\n' "$c" "$cf" "$ch" "$(echo "$ch / $cf" | bc -l)" \
        "$vf" "$vr" "$(echo "$vr / $vf" | bc -l)" "$(echo "$vz / $vf" | bc -l)"
done
"${PSQL[@]}" -At -c "SELECT 'rate_limit_mode: ' || api_key_mgmt.rate_limit_mode()"
rm -rf "$w"
