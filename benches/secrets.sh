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
#               and the audit entry of the read (api_key_mgmt.audit_secret_reads = on,
#               the default; through the shared-memory queue, as the bench database is
#               the maintenance worker's), then again with audit_secret_reads = off
#   pgcrypto    pgp_sym_decrypt() of the same key from a side table: what users write
#               by hand
# Target: get >= 0.7 of the floor. Each cell is the median of SBENCH_ROUNDS rounds, the
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
"$ROOT/tests/cluster.sh" start "$DIR" "$PORT" "shared_buffers = 256MB" "synchronous_commit = off"
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
declare -A T
for (( r = 1; r <= ROUNDS; r++ )); do
    for c in $CLIENTS; do
        T[$c f]+=" $(tps floor "$c")"
        T[$c ga]+=" $(tps get "$c")"
        T[$c gn]+=" $(tps get "$c" "-c api_key_mgmt.audit_secret_reads=off")"
        T[$c p]+=" $(tps pgcrypto "$c")"
        echo "round $r/$ROUNDS, $c client(s): floor ${T[$c f]##* } audited ${T[$c ga]##* } unaudited ${T[$c gn]##* } pgcrypto ${T[$c p]##* }" >&2
    done
done
echo "| clients | floor tps | get (audited) tps | ratio | get (no audit) tps | ratio | pgp_sym_decrypt tps | ratio |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CLIENTS; do
    # shellcheck disable=SC2086
    f=$(median ${T[$c f]}); ga=$(median ${T[$c ga]}); gn=$(median ${T[$c gn]}); p=$(median ${T[$c p]})
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$f" "$ga" "$(ratio "$ga" "$f")" \
        "$gn" "$(ratio "$gn" "$f")" "$p" "$(ratio "$p" "$f")"
done
"${PSQL[@]}" -At -c "SELECT 'audit rows written: ' || count(*) FROM api_key_mgmt.audit_log WHERE action = 'secret.decrypted'" \
    -c "SELECT format('audit queue: mode %s, written %s, synchronous %s', mode, written, synchronous) FROM api_key_mgmt.audit_queue_status()"
rm -rf "$w"
