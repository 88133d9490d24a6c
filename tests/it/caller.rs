//! The caller is whoever really called (issue 13), over real connections: a tenant
//! user's `SECURITY DEFINER` function, reached from an index expression, is run by
//! autovacuum's auto-analyze (no human action), by a superuser's `ANALYZE`, and called
//! by a platform administrator's login session. Every attempt to issue a key for
//! another tenant, replace the platform's OpenAI secret or add an owner is refused with
//! 42501, and nothing is written. A cluster of its own (autovacuum every second).

use crate::common::secrets::*;
use crate::common::sql::*;
use crate::common::{wait_until, Cluster};
use postgres::Client;
use std::time::Duration;

/// The attack of the issue, created by `usr` in its own schema against `victim`.
fn plant(usr: &mut Client, victim: &str) {
    usr.batch_execute(&format!(
        r#"CREATE TABLE usrschema.loot (phase text, what text, outcome text);
        CREATE FUNCTION usrschema.grab() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
            SET search_path = pg_catalog AS $$
        DECLARE v_phase text := coalesce(current_setting('it.phase', true), 'autovacuum');
        BEGIN
            BEGIN
                PERFORM api_key FROM api_key_mgmt.issue_api_key('{victim}', 'pwned', '{{*}}');
                INSERT INTO usrschema.loot VALUES (v_phase, 'issue_api_key', 'done');
            EXCEPTION WHEN OTHERS THEN
                INSERT INTO usrschema.loot VALUES (v_phase, 'issue_api_key', SQLSTATE);
            END;
            BEGIN
                PERFORM api_key_mgmt.put_tenant_secret(NULL, 'openai', 'sk-attacker-000000000000000000000000');
                INSERT INTO usrschema.loot VALUES (v_phase, 'put_tenant_secret', 'done');
            EXCEPTION WHEN OTHERS THEN
                INSERT INTO usrschema.loot VALUES (v_phase, 'put_tenant_secret', SQLSTATE);
            END;
            BEGIN
                PERFORM api_key_mgmt.add_tenant_member('{victim}', 'mallory', 'owner');
                INSERT INTO usrschema.loot VALUES (v_phase, 'add_tenant_member', 'done');
            EXCEPTION WHEN OTHERS THEN
                INSERT INTO usrschema.loot VALUES (v_phase, 'add_tenant_member', SQLSTATE);
            END;
        END $$;
        CREATE FUNCTION usrschema.f(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
            $$ BEGIN PERFORM usrschema.grab(); RETURN i; END $$;
        CREATE TABLE usrschema.t (i int) WITH (autovacuum_analyze_threshold = 10,
                                              autovacuum_analyze_scale_factor = 0);
        CREATE INDEX ON usrschema.t (usrschema.f(i));"#
    ))
    .unwrap();
}

/// (phase, what, outcome) rows of the loot table, distinct and sorted.
fn outcomes(c: &mut Client) -> Vec<(String, String, String)> {
    c.query(
        "SELECT DISTINCT phase, what, outcome FROM usrschema.loot ORDER BY 1, 2, 3",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn refused(phase: &str) -> Vec<(String, String, String)> {
    ["add_tenant_member", "issue_api_key", "put_tenant_secret"]
        .iter()
        .map(|w| (phase.to_owned(), w.to_string(), "42501".to_owned()))
        .collect()
}

#[test]
fn a_tenant_users_definer_function_never_acts_as_its_privileged_caller() {
    let mut cluster = Cluster::init("caller");
    let conf = cluster.data().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nautovacuum_naptime = 1\n");
    std::fs::write(&conf, text).unwrap();
    cluster.start();
    let mut su = cluster.connect("postgres");
    su.batch_execute(
        "CREATE EXTENSION api_key_mgmt;
         CREATE ROLE usr LOGIN IN ROLE api_key_mgmt_user;
         CREATE ROLE padmin LOGIN IN ROLE api_key_mgmt_admin;
         CREATE SCHEMA usrschema AUTHORIZATION usr;
         GRANT USAGE ON SCHEMA usrschema TO padmin;",
    )
    .unwrap();
    private_key_file(&cluster, &mut su, "postgres", "it_caller");
    let mut su = cluster.connect("postgres");
    let victim = create_tenant(&mut su, "victim");

    let mut usr = cluster.connect_as("postgres", "usr");
    plant(&mut usr, &victim);
    usr.batch_execute("GRANT EXECUTE ON FUNCTION usrschema.grab() TO padmin")
        .unwrap();
    // usr itself: its own index build was refused (no tenant context).
    usr.batch_execute(
        "SET it.phase = 'usr'; INSERT INTO usrschema.t SELECT generate_series(1, 50)",
    )
    .unwrap();

    // Autovacuum's auto-analyze evaluates the index expression, with no one asking.
    wait_until(
        "autovacuum analyzes usrschema.t",
        Duration::from_secs(60),
        || {
            su.query_one(
                "SELECT count(*) FROM usrschema.loot WHERE phase = 'autovacuum'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
                > 0
        },
    );
    // A superuser's ANALYZE, and a platform administrator calling the function.
    su.batch_execute("SET it.phase = 'superuser ANALYZE'; ANALYZE usrschema.t")
        .unwrap();
    let mut padmin = cluster.connect_as("postgres", "padmin");
    padmin
        .batch_execute("SET it.phase = 'platform admin'; SELECT usrschema.grab()")
        .unwrap();

    let got = outcomes(&mut su);
    let mut want = Vec::new();
    for phase in ["autovacuum", "platform admin", "superuser ANALYZE", "usr"] {
        want.extend(refused(phase));
    }
    want.sort();
    assert_eq!(got, want);
    let written: i64 = su
        .query_one(
            "SELECT (SELECT count(*) FROM api_key_mgmt.api_keys WHERE name = 'pwned')
                  + (SELECT count(*) FROM api_key_mgmt.tenant_secrets WHERE tenant_id IS NULL)
                  + (SELECT count(*) FROM api_key_mgmt.tenant_members WHERE user_id = 'mallory')
                  + (SELECT count(*) FROM api_key_mgmt.audit_log WHERE action <> 'tenant.created')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "nothing written by the attack");
    cluster.destroy();
}
