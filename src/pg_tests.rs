//! `#[pg_test]` tests: run inside a Postgres backend by `cargo pgrx test`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn placeholder() {}
}
