//! Monitoring, pure: the counters the extension keeps in shared memory
//! (src/metrics_pg.rs), their slots, and their Prometheus names and labels. The SQL
//! view `api_key_mgmt.metrics` (sql/011_monitoring.sql) shows them beside the figures
//! read from the tables.

use crate::validation::Code;

/// One counter slot per validation code, per charge outcome (the validation codes and
/// `other`), per rate-limit decision.
pub const VALIDATIONS: usize = 0;
pub const CHARGES: usize = VALIDATIONS + Code::ALL.len();
pub const CHARGE_OTHER: usize = CHARGES + Code::ALL.len();
pub const RATE_LIMIT_ALLOWED: usize = CHARGE_OTHER + 1;
pub const RATE_LIMIT_LIMITED: usize = RATE_LIMIT_ALLOWED + 1;
pub const SLOTS: usize = RATE_LIMIT_LIMITED + 1;

/// The slot of a validation's code.
pub fn validation_slot(code: Code) -> usize {
    VALIDATIONS + code.index()
}

/// The slot of a charge's outcome code (as `charge_result.code` spells it).
pub fn charge_slot(code: &str) -> usize {
    Code::parse(code).map_or(CHARGE_OTHER, |c| CHARGES + c.index())
}

/// The slot of a rate-limit decision.
pub fn rate_limit_slot(allowed: bool) -> usize {
    if allowed {
        RATE_LIMIT_ALLOWED
    } else {
        RATE_LIMIT_LIMITED
    }
}

/// (metric name, label name, label value) of a slot.
pub fn describe(slot: usize) -> (&'static str, &'static str, &'static str) {
    match slot {
        s if s < CHARGES => (
            "api_key_mgmt_validations_total",
            "code",
            Code::ALL[s - VALIDATIONS].as_str(),
        ),
        s if s < CHARGE_OTHER => (
            "api_key_mgmt_charges_total",
            "code",
            Code::ALL[s - CHARGES].as_str(),
        ),
        CHARGE_OTHER => ("api_key_mgmt_charges_total", "code", "other"),
        RATE_LIMIT_ALLOWED => (
            "api_key_mgmt_rate_limit_decisions_total",
            "decision",
            "allowed",
        ),
        RATE_LIMIT_LIMITED => (
            "api_key_mgmt_rate_limit_decisions_total",
            "decision",
            "limited",
        ),
        _ => panic!("no counter slot {slot}"),
    }
}

/// Whether `name` follows Prometheus' naming rules (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_slot_has_one_distinct_series() {
        let series: HashSet<_> = (0..SLOTS).map(describe).collect();
        assert_eq!(series.len(), SLOTS);
        for s in 0..SLOTS {
            let (name, label, value) = describe(s);
            assert!(valid_metric_name(name), "{name}");
            assert!(name.ends_with("_total"), "counters end in _total: {name}");
            assert!(!label.is_empty() && !value.is_empty());
        }
        assert_eq!(SLOTS, 17 + 18 + 2);
    }

    #[test]
    fn slots_follow_the_codes() {
        for code in Code::ALL {
            assert_eq!(describe(validation_slot(code)).2, code.as_str());
            assert_eq!(Code::parse(code.as_str()), Some(code));
            let (name, _, value) = describe(charge_slot(code.as_str()));
            assert_eq!((name, value), ("api_key_mgmt_charges_total", code.as_str()));
        }
        assert_eq!(describe(charge_slot("something new")).2, "other");
        assert_eq!(describe(rate_limit_slot(true)).2, "allowed");
        assert_eq!(describe(rate_limit_slot(false)).2, "limited");
    }

    #[test]
    fn metric_names() {
        assert!(valid_metric_name("api_key_mgmt_audit_queue_depth"));
        assert!(!valid_metric_name("9lives"));
        assert!(!valid_metric_name("has-dash"));
        assert!(!valid_metric_name(""));
    }
}
