# api_key_mgmt: every job is a target here. `make demo` and `make test` are the two
# that matter; see README.md.

SHELL        := /bin/bash
PG_CONFIG    ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION := 0.18.0
# Clusters run as the `postgres` user when we are root (initdb refuses root), so they
# live under /tmp, which that user can reach whatever the checkout's permissions.
WORK         ?= /tmp/api_key_mgmt
DEMO_DIR     ?= $(WORK)/demo
DEMO_PORT    ?= 54320
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev sudo build-essential pkg-config

.PHONY: all setup build install demo psql stop test test-unit test-pg test-regress \
        test-integration bench fmt lint clean

all: build

## setup: idempotent; installs what is missing (Debian packages, cargo-pgrx), pgrx init.
setup:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "setup: installing" $$missing; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	else \
	    echo "setup: Debian packages present"; \
	fi
	@if cargo pgrx --version 2>/dev/null | grep -q ' $(PGRX_VERSION)$$'; then \
	    echo "setup: cargo-pgrx $(PGRX_VERSION) present"; \
	else \
	    echo "setup: installing cargo-pgrx $(PGRX_VERSION) (about 6 minutes)"; \
	    cargo install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	fi
	@if grep -qs '^pg15' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    echo "setup: pgrx knows PostgreSQL 15"; \
	else \
	    cargo pgrx init --pg15=$(PG_CONFIG); \
	fi

build: setup
	cargo build --release

## install: build (release) and install into the system PostgreSQL 15.
install: setup
	$(SUDO) env "PATH=$$PATH" cargo pgrx install --release --pg-config $(PG_CONFIG)

## demo: install, start a throwaway cluster with the library preloaded, walk through
## the quick start. The cluster keeps running: `make psql`, then `make stop`.
demo: install
	@tests/cluster.sh stop $(DEMO_DIR)
	@rm -rf $(DEMO_DIR)
	@tests/cluster.sh start $(DEMO_DIR) $(DEMO_PORT)
	@tests/cluster.sh psql $(DEMO_DIR) $(DEMO_PORT) -X -q -v ON_ERROR_STOP=1 -f docs/demo.sql
	@echo
	@echo "The demo cluster is still running: 'make psql' opens a shell on it, 'make stop' stops it."

psql:
	@tests/cluster.sh psql $(DEMO_DIR) $(DEMO_PORT) -X

stop:
	@tests/cluster.sh stop $(DEMO_DIR)

## test: every layer; non-zero exit on any failure.
test: setup test-unit test-pg test-regress test-integration
	@echo "make test: all layers passed"

# Layer 1: pure Rust unit and property tests (no database).
test-unit:
	cargo test --lib -- --skip pg_

# Layer 2: #[pg_test] tests inside a Postgres backend (cargo pgrx test).
test-pg:
	@$(SUDO) mkdir -p $(WORK)/pgtest && $(SUDO) chown postgres: $(WORK)/pgtest
	cargo pgrx test pg15 --runas postgres --pgdata $(WORK)/pgtest/data

# Layer 3: SQL regression tests with expected output (tests/pg_regress), run by
# pg_regress on a throwaway cluster (see tests/regress.sh for why not cargo pgrx regress).
test-regress:
	$(SUDO) env "PATH=$$PATH" cargo pgrx install --pg-config $(PG_CONFIG)
	tests/regress.sh

# Layer 4: integration tests over real connections to clusters they start themselves.
test-integration:
	$(SUDO) env "PATH=$$PATH" cargo pgrx install --pg-config $(PG_CONFIG)
	cargo test --test integration --test tenancy -- --test-threads=2

## bench: pgbench, floor and extension side by side, printed as ratios.
bench: install
	benches/run.sh        # keys: validate_api_key vs a side-table floor, and a hand-written plpgsql version
	benches/secrets.sh    # secrets: get_tenant_secret vs the same floor, and pgp_sym_decrypt
	benches/metering.sh   # metering: charge and rate-limited validate vs floors

fmt:
	cargo fmt

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

clean:
	-tests/cluster.sh stop $(DEMO_DIR)
	cargo clean
	$(SUDO) rm -rf $(WORK)
