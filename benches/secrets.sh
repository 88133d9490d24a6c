#!/usr/bin/env bash
# api_key_mgmt tenant-secrets benchmark (issue 3), beside run.sh's key benchmark.
#
#   benches/secrets.sh      (uses whatever build is installed; `make install` first)
#
# On a throwaway cluster (library preloaded): 1000 tenants, each with its own OpenAI key
# stored with put_tenant_secret, and a platform default. pgbench, prepared mode, at 1
# and 8 clients, three scripts on a random tenant:
#   floor       fetch the tenant's key in plaintext from a side table (what storing
#               secrets unencrypted costs)
#   get         api_key_mgmt.get_tenant_secret(): resolution, AES-256-GCM decryption,
#               and the audit entry of the read, in three ways: durable (the default
#               api_key_mgmt.audit_read_mode: the read returns once the maintenance
#               worker has committed its entry), queued (returns at once), and with
#               audit_secret_reads = off. The bench database is the worker's.
#   pgcrypto    pgp_sym_decrypt() of the same key from a side table: what users write
#               by hand
# Targets: get (queued or unaudited) >= 0.7 of the floor; durable >= 0.5 of unaudited
# at 8 clients. The cluster runs with fsync = on, so that a durable read pays for a
# real WAL flush (pg_test_fsync's figure for this disk is printed), and reports the
# latency a durable read adds (p50, p99) and the worker's batch size. Each cell is the median of SBENCH_ROUNDS rounds, the
# four runs of a client count back to back in each round (drift hits them alike).
# Environment: SBENCH_SECONDS [10], SBENCH_ROUNDS [3], SBENCH_CLIENTS ["1 8"],
# SBENCH_DIR, SBENCH_PORT.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PG_BIN
DIR=${SBENCH_DIR:-/tmp/api_key_mgmt/bench-secrets}
PORT=${SBENCH_PORT:-54332}
SECS=${SBENCH_SECONDS:-10}
ROUNDS=${SBENCH_ROUNDS:-3}
CLIENTS=${SBENCH_CLIENTS:-1 8}
NTENANTS=1000
PSQL=("$PG_BIN/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
PGBENCH=("$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -d postgres)

"$ROOT/tests/cluster.sh" stop "$DIR"
rm -rf "$DIR"
trap '"$ROOT/tests/cluster.sh" stop "$DIR"' EXIT
"$ROOT/tests/cluster.sh" start "$DIR" "$PORT" "shared_buffers = 256MB" "synchronous_commit = off" "fsync = on"
# A master key file readable by the server only (bench key, thrown away with the cluster).
KEYS=$DIR/master.keys
echo "1 $(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$KEYS"
if [ "$(id -u)" = 0 ]; then chown postgres: "$KEYS"; fi
chmod 600 "$KEYS"

"${PSQL[@]}" <<SQL
CREATE EXTENSION api_key_mgmt;
CREATE EXTENSION pgcrypto;
ALTER DATABASE postgres SET api_key_mgmt.master_key_file = '$KEYS';
SET api_key_mgmt.master_key_file = '$KEYS';
CREATE SCHEMA bench;
CREATE TABLE bench.side (id int PRIMARY KEY, tenant_id uuid NOT NULL, secret text NOT NULL,
                         pgp bytea NOT NULL);
SELECT api_key_mgmt.put_tenant_secret(NULL, 'openai', 'sk-platform-' || md5('platform') || md5('p'));
DO \$\$
DECLARE t uuid; s text;
BEGIN
  FOR i IN 1..$NTENANTS LOOP
    t := api_key_mgmt.create_tenant('t' || i);
    s := 'sk-proj-' || md5(i::text) || md5(t::text);
    PERFORM api_key_mgmt.put_tenant_secret(t, 'openai', s);
    INSERT INTO bench.side VALUES (i, t, s, pgp_sym_encrypt(s, 'bench passphrase'));
  END LOOP;
END
\$\$;
VACUUM ANALYZE;
SQL

w=$(mktemp -d)
cat >"$w/floor.pgbench" <<'S'
\set id random(1, :n)
SELECT secret FROM bench.side WHERE id = :id;
S
cat >"$w/get.pgbench" <<'S'
\set id random(1, :n)
SELECT api_key_mgmt.get_tenant_secret(s.tenant_id, 'openai', :scope) FROM bench.side s WHERE s.id = :id;
S
cat >"$w/pgcrypto.pgbench" <<'S'
\set id random(1, :n)
SELECT pgp_sym_decrypt(pgp, :pass) FROM bench.side WHERE id = :id;
S

tps() { # script clients [PGOPTIONS]
    local j=$(( $2 < 2 ? $2 : 2 ))
    PGOPTIONS=${3:-} "${PGBENCH[@]}" -c "$2" -j "$j" -T "$SECS" -D n=$NTENANTS -D scope=agents:chat \
        -D pass='bench passphrase' -f "$w/$1.pgbench" 2>/dev/null | awk '/^tps = / {printf "%.0f", $3}'
}
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else printf "n/a" }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.0f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
QUEUED="-c api_key_mgmt.audit_read_mode=queued"
OFF="-c api_key_mgmt.audit_secret_reads=off"
declare -A T
for (( r = 1; r <= ROUNDS; r++ )); do
    for c in $CLIENTS; do
        T[$c f]+=" $(tps floor "$c")"
        T[$c gd]+=" $(tps get "$c")"
        T[$c gq]+=" $(tps get "$c" "$QUEUED")"
        T[$c gn]+=" $(tps get "$c" "$OFF")"
        T[$c p]+=" $(tps pgcrypto "$c")"
        echo "round $r/$ROUNDS, $c client(s): floor ${T[$c f]##* } durable ${T[$c gd]##* } queued ${T[$c gq]##* } unaudited ${T[$c gn]##* } pgcrypto ${T[$c p]##* }" >&2
    done
done
echo "| clients | floor tps | get, durable audit | / floor | / unaudited | get, queued audit | / floor | get, no audit | / floor | pgp_sym_decrypt | / floor |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CLIENTS; do
    # shellcheck disable=SC2086
    f=$(median ${T[$c f]}); gd=$(median ${T[$c gd]}); gq=$(median ${T[$c gq]}); gn=$(median ${T[$c gn]}); p=$(median ${T[$c p]})
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$f" "$gd" "$(ratio "$gd" "$f")" \
        "$(ratio "$gd" "$gn")" "$gq" "$(ratio "$gq" "$f")" "$gn" "$(ratio "$gn" "$f")" "$p" "$(ratio "$p" "$f")"
done

# Latency of a read (ms, p50 and p99 of one run each, from pgbench's per-transaction log).
lat() { # clients [PGOPTIONS]
    local d j=$(( $1 < 2 ? $1 : 2 ))
    d=$(mktemp -d)
    (cd "$d" && PGOPTIONS=${2:-} "${PGBENCH[@]}" -c "$1" -j "$j" -T "$SECS" -D n=$NTENANTS -D scope=agents:chat \
        -l -f "$w/get.pgbench" >/dev/null 2>&1)
    cat "$d"/pgbench_log.* | awk '{ print $3 }' | sort -n | awk '{ a[NR] = $1 } END {
        printf "%.3f / %.3f", a[int(NR * 0.5) + 1] / 1000, a[int(NR * 0.99) + 1] / 1000 }'
    rm -rf "$d"
}
echo
echo "| clients | latency p50 / p99 (ms), durable | queued | no audit |"
echo "|---:|---:|---:|---:|"
for c in $CLIENTS; do
    printf '| %s | %s | %s | %s |\n' "$c" "$(lat "$c")" "$(lat "$c" "$QUEUED")" "$(lat "$c" "$OFF")"
done
echo
"${PSQL[@]}" -At -c "SELECT 'audit rows written: ' || count(*) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted'" \
    -c "SELECT format('worker batch: %s entries per commit on average (%s commits)', round(count(*)::numeric / count(DISTINCT xmin::text), 1), count(DISTINCT xmin::text)) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted'" \
    -c "SELECT format('audit queue: written %s, synchronous %s, failed %s', written, synchronous, failed) FROM api_key_mgmt.audit_queue_status()"
# The disk's WAL flush: what one durable commit costs at least.
if [ -x "$PG_BIN/pg_test_fsync" ]; then
    flush=$("$PG_BIN/pg_test_fsync" -s 2 -f "$DIR/fsync.test" 2>/dev/null | awk '/fdatasync/ && /ops\/sec/ { print $(NF-3), $(NF-2), $(NF-1), $NF; exit }')
    echo "WAL flush (pg_test_fsync, fdatasync): $flush"
fi
rm -rf "$w"
