//! api_key_mgmt: API keys, tenant secrets and metering inside PostgreSQL.
//!
//! Pure logic (no Postgres types, unit- and property-tested): [`keys`], [`scopes`],
//! [`validation`]. The pgrx layer: [`catalog`] (direct index lookups),
//! [`validation_pg`] (`validate_api_key`), [`keys_pg`] (helpers for the SQL in `sql/`),
//! [`gucs`], [`errors`], [`logmask_pg`] (the log hook over the pure [`logmask`]).
//! The schema, policies, grants and management functions are
//! hand-written SQL in `sql/`, in the order given below.

use pgrx::prelude::*;

/// `finfo_v1!(pg_finfo_<symbol>)`: the V1 calling-convention record Postgres looks up
/// for a raw `extern "C-unwind" fn <symbol>(fcinfo)` (the hand-written hot-path and
/// secret-returning functions; `#[pg_extern]` emits its own).
macro_rules! finfo_v1 {
    ($name:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $name() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

pub mod agents;
pub mod agents_pg;
pub mod audit;
pub mod audit_pg;
pub mod caller;
pub mod catalog;
pub mod charge_pg;
pub mod crypto;
pub mod errors;
pub mod failures;
pub mod failures_pg;
pub mod gucs;
pub mod keys;
pub mod keys_pg;
pub mod logmask;
pub mod logmask_pg;
pub mod metering;
pub mod metering_pg;
pub mod metrics;
pub mod metrics_pg;
pub mod pg_compat;
pub mod ratelimit;
pub mod ratelimit_pg;
pub mod result_row;
pub mod ring;
pub mod scopes;
pub mod secrets_pg;
pub mod shmem;
pub mod tenancy;
pub mod tenancy_pg;
pub mod validation;
pub mod validation_pg;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/001_schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/002_internal.sql",
    name = "internal",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/003_tables.sql",
    name = "tables",
    requires = ["internal"]
);
extension_sql_file!("../sql/004_keys.sql", name = "keys", requires = ["tables"]);
extension_sql_file!(
    "../sql/005_validation.sql",
    name = "validation",
    requires = ["keys"]
);
extension_sql_file!(
    "../sql/006_secrets.sql",
    name = "secrets",
    requires = ["validation"]
);
extension_sql_file!(
    "../sql/007_metering.sql",
    name = "metering",
    requires = ["secrets"]
);
extension_sql_file!(
    "../sql/008_tenancy.sql",
    name = "tenancy",
    requires = ["metering"]
);
extension_sql_file!(
    "../sql/010_agents.sql",
    name = "agents",
    requires = ["tenancy"]
);
extension_sql_file!(
    "../sql/011_monitoring.sql",
    name = "monitoring",
    requires = ["agents"]
);
extension_sql_file!(
    "../sql/098_entry_points.sql",
    name = "entry_points",
    requires = ["monitoring"]
);
extension_sql_file!("../sql/099_grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    failures_pg::init();
    logmask_pg::install();
    ratelimit_pg::init();
    audit_pg::init();
    metrics_pg::init();
    agents_pg::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The test database is not the maintenance worker's: reads audit in-transaction.
        vec![
            "shared_preload_libraries = 'api_key_mgmt'",
            "api_key_mgmt.audit_read_mode = 'transaction'",
        ]
    }
}
