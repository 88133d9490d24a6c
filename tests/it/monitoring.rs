//! Monitoring through Debian's `prometheus-postgres-exporter` (issue 17): the exporter
//! runs with `monitoring/queries.yaml` against a cluster of its own, logged in as a
//! member of `api_key_mgmt_monitor`; validations, charges and refusals are driven
//! through SQL; `/metrics` is scraped over loopback and its api_key_mgmt series are
//! checked by name, label and value. The scrape holds no key.

use crate::common::secrets::*;
use crate::common::sql::*;
use crate::common::{free_port, wait_until, Cluster};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";

/// The exporter process, killed when dropped.
struct Exporter {
    child: Child,
    port: u16,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exporter(cluster: &Cluster) -> Exporter {
    assert!(
        std::path::Path::new(EXPORTER).exists(),
        "{EXPORTER} is missing: `make setup` installs prometheus-postgres-exporter"
    );
    let port = free_port();
    let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/queries.yaml");
    let child = Command::new(EXPORTER)
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "{} sslmode=disable",
                cluster.conninfo("postgres", "exporter")
            ),
        )
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            &format!("--extend.query-path={queries}"),
            "--disable-default-metrics",
            "--disable-settings-metrics",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the exporter");
    Exporter { child, port }
}

/// GET /metrics (HTTP/1.0 over loopback).
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.0 200")
        .then(|| body.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// A scraped series: its name and its labels (sorted, without the exporter's `server`).
type Series = (String, Vec<(String, String)>);

/// api_key_mgmt samples: series → value.
fn samples(text: &str) -> HashMap<Series, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("api_key_mgmt")) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .filter(|(k, _)| k != "server")
            .collect();
        labels.sort();
        out.insert((name.to_owned(), labels), value.parse().expect("value"));
    }
    out
}

fn get(s: &HashMap<Series, f64>, name: &str, label: Option<(&str, &str)>) -> f64 {
    let labels = label
        .map(|(k, v)| vec![(k.to_owned(), v.to_owned())])
        .unwrap_or_default();
    *s.get(&(name.to_owned(), labels.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape"))
}

#[test]
fn postgres_exporter_scrapes_the_metrics() {
    let mut cluster = Cluster::init("monitoring");
    cluster.start();
    let mut su = cluster.connect("postgres");
    su.batch_execute(
        "CREATE EXTENSION api_key_mgmt;
         CREATE ROLE exporter LOGIN IN ROLE api_key_mgmt_monitor;",
    )
    .unwrap();
    private_key_file(&cluster, &mut su, "postgres", "it_monitoring");
    let mut c = cluster.connect("postgres");
    let tenant = create_tenant(&mut c, "monitored");
    let good = issue(&mut c, &tenant, "good");
    let gone = issue(&mut c, &tenant, "gone");
    revoke(&mut c, &gone.id);
    for _ in 0..3 {
        assert_eq!(code(&mut c, &good.key), "ok");
    }
    for _ in 0..2 {
        assert_eq!(code(&mut c, "sk_live_short"), "malformed");
    }
    assert_eq!(code(&mut c, &gone.key), "revoked");
    c.execute(
        "SELECT api_key_mgmt.set_key_caps($1::text::uuid, 5)",
        &[&good.id],
    )
    .unwrap();
    let charge = |c: &mut postgres::Client, cost: &str| -> String {
        c.query_one(
            "SELECT code FROM api_key_mgmt.charge_api_key($1::text::uuid, 'a:b', $2::text::numeric)",
            &[&good.id, &cost],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(charge(&mut c, "2"), "ok");
    assert_eq!(charge(&mut c, "2"), "ok");
    assert_eq!(charge(&mut c, "2"), "daily_cap_exceeded");
    put_secret(&mut c, Some(&tenant), "openai", &openai_secret(), None);

    let exporter = start_exporter(&cluster);
    let mut text = String::new();
    wait_until(
        "the exporter serves api_key_mgmt metrics",
        Duration::from_secs(60),
        || {
            text = scrape(exporter.port).unwrap_or_default();
            text.contains("api_key_mgmt_validations_total")
        },
    );
    let s = samples(&text);
    assert_eq!(get(&s, "api_key_mgmt_preloaded", None), 1.0);
    assert_eq!(
        get(&s, "api_key_mgmt_validations_total", Some(("code", "ok"))),
        3.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_validations_total",
            Some(("code", "malformed"))
        ),
        2.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_validations_total",
            Some(("code", "revoked"))
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_validations_total",
            Some(("code", "expired"))
        ),
        0.0
    );
    assert_eq!(
        get(&s, "api_key_mgmt_charges_total", Some(("code", "ok"))),
        2.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_charges_total",
            Some(("code", "daily_cap_exceeded"))
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_secrets_by_key_version",
            Some(("version", "1"))
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            "api_key_mgmt_tenants_by_state",
            Some(("state", "active"))
        ),
        1.0
    );
    assert_eq!(get(&s, "api_key_mgmt_audit_queue_capacity", None), 4096.0);
    assert_eq!(get(&s, "api_key_mgmt_keys_due_for_rotation", None), 0.0);
    for name in [
        "api_key_mgmt_partitions_ahead_months",
        "api_key_mgmt_audit_queue_depth",
        "api_key_mgmt_tenants_near_monthly_cap",
        "api_key_mgmt_rate_limit_decisions_total",
        "api_key_mgmt_audit_entries_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "no {name} in the scrape"
        );
    }
    // health(): the key file matches, the worker serves this database.
    for check in [
        "library_preloaded",
        "maintenance_worker",
        "master_key_file",
        "reservations",
    ] {
        assert_eq!(
            get(&s, "api_key_mgmt_health_status", Some(("check", check))),
            0.0,
            "health check {check}"
        );
    }
    // No per-tenant series unless asked for; nothing key-like anywhere.
    assert!(!text.contains("api_key_mgmt_tenant_month_spend"));
    for key in [&good.key, &gone.key] {
        assert!(!text.contains(key.as_str()));
    }
    assert!(!text.contains("sk_live_") && !text.contains("sk-proj"));

    // The counters move with the traffic between two scrapes.
    assert_eq!(code(&mut c, &good.key), "ok");
    wait_until(
        "the next scrape counts the validation",
        Duration::from_secs(30),
        || {
            let t = scrape(exporter.port).unwrap_or_default();
            samples(&t)
                .get(&(
                    "api_key_mgmt_validations_total".to_owned(),
                    vec![("code".to_owned(), "ok".to_owned())],
                ))
                .copied()
                == Some(4.0)
        },
    );
    drop(exporter);
    cluster.destroy();
}
