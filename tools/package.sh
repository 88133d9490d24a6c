#!/usr/bin/env bash
# Release artifacts for one PostgreSQL major: a tarball that installs without a Rust
# toolchain (`make package PG=15|18`).
#
#   tools/package.sh PG_CONFIG   -> dist/api_key_mgmt-<version>-pg<major>-<arch>-linux.tar.gz
#
# Inside: lib/api_key_mgmt.so, extension/ (control file, the current install script,
# every update script, the frozen install scripts of released versions), install.sh,
# INSTALL.md, UPDATING.md, CHANGELOG.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pg_config=${1:?usage: tools/package.sh PG_CONFIG}
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' "$root/Cargo.toml" | head -1)
name=api_key_mgmt-$version-pg$major-$(uname -m)-linux
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$root"
cargo pgrx package --pg-config "$pg_config" --out-dir "$work/pgrx" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; exit 1; }
stage=$work/$name
mkdir -p "$stage/lib" "$stage/extension"
find "$work/pgrx" -name 'api_key_mgmt.so' -exec cp {} "$stage/lib/" \;
find "$work/pgrx" -path '*/extension/api_key_mgmt*' -type f -exec cp {} "$stage/extension/" \;
cp sql/api_key_mgmt--*.sql "$stage/extension/"    # frozen and update scripts
[ -f "$stage/lib/api_key_mgmt.so" ] && [ -f "$stage/extension/api_key_mgmt--$version.sql" ] ||
    { echo "package: the pgrx package lacks the library or the install script" >&2; exit 1; }
cp UPDATING.md CHANGELOG.md "$stage/"

cat >"$stage/install.sh" <<SH
#!/usr/bin/env bash
# Install api_key_mgmt $version into the PostgreSQL $major that PG_CONFIG names (default:
# pg_config on PATH). Run as a user who may write its directories (root, usually).
set -euo pipefail
here=\$(cd "\$(dirname "\$0")" && pwd)
pg_config=\${PG_CONFIG:-pg_config}
found=\$("\$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\\1/')
if [ "\$found" != "$major" ]; then
    echo "install.sh: this package is for PostgreSQL $major; \$pg_config is PostgreSQL \$found" >&2
    exit 1
fi
install -m 755 "\$here/lib/api_key_mgmt.so" "\$("\$pg_config" --pkglibdir)/"
install -m 644 "\$here"/extension/* "\$("\$pg_config" --sharedir)/extension/"
echo "installed api_key_mgmt $version into \$("\$pg_config" --pkglibdir) and \$("\$pg_config" --sharedir)/extension"
SH
chmod 755 "$stage/install.sh"

cat >"$stage/INSTALL.md" <<MD
# api_key_mgmt $version for PostgreSQL $major ($(uname -m) Linux)

1. Install the files, as a user who may write PostgreSQL's directories:

       PG_CONFIG=/path/to/pg_config ./install.sh

   (or copy \`lib/api_key_mgmt.so\` into \`pg_config --pkglibdir\` and \`extension/*\`
   into \`pg_config --sharedir\`/extension).
2. In \`postgresql.conf\`: \`shared_preload_libraries = 'api_key_mgmt'\` (rate limits in
   shared memory, the durable secret-read audit and the maintenance worker need it), and
   \`api_key_mgmt.agent_maintenance_database\` = your application's database. Restart.
3. As a superuser, in your database: \`CREATE EXTENSION api_key_mgmt;\`
   Already installed at an older version? \`ALTER EXTENSION api_key_mgmt UPDATE;\`
   instead (UPDATING.md) — never DROP EXTENSION, which deletes every key and secret.

Built from api_key_mgmt $version for PostgreSQL $major with glibc $(ldd --version | head -1 | awk '{print $NF}').
MD

mkdir -p "$root/dist"
tar -C "$work" -czf "$root/dist/$name.tar.gz" "$name"
echo "$root/dist/$name.tar.gz"
