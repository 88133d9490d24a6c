//! Metering, pure Rust: exact decimal money, period rollover, and the budget decision
//! that `validate_api_key` reports (caps and credits) without writing.
//!
//! The charge itself (`charge_api_key`, `sql/007_metering.sql`) keeps running totals in
//! `api_key_mgmt.meters` under row locks and decides in SQL `numeric`; this module reads
//! the same rows and must agree with it (checked by `tests/pg_regress/sql/08_metering.sql`
//! and `#[pg_test]`). Money is never a float: [`Money`] is a fixed-point decimal with
//! [`SCALE`] fractional digits, the same bound the SQL enforces on every amount.

use crate::validation::{Code, Micros};
use std::fmt;

/// Fractional digits of every amount (the SQL refuses amounts with more, `22023`).
pub const SCALE: u32 = 9;
const ONE: i128 = 1_000_000_000;
/// Amounts are below 10^15 in absolute value (the SQL's bound), so sums of a few of
/// them never come near `i128`'s range.
pub const MAX_WHOLE: i128 = 1_000_000_000_000_000;

/// An exact decimal amount: `units / 10^SCALE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i128);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn from_units(units: i128) -> Money {
        Money(units)
    }

    pub fn units(self) -> i128 {
        self.0
    }

    /// Parse the text form of a Postgres `numeric` (`-12.5`, `3`, `0.000000001`).
    /// `None` for NaN, infinities, exponents, more than [`SCALE`] fractional digits
    /// (other than trailing zeros) or magnitudes of 10^15 and more.
    pub fn parse(s: &str) -> Option<Money> {
        let (neg, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((w, f)) => (w, f),
            None => (body, ""),
        };
        if whole.is_empty() && frac.is_empty() {
            return None;
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > SCALE as usize {
            return None;
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() > 15 {
            return None;
        }
        let w: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        if w >= MAX_WHOLE {
            return None;
        }
        let mut f: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        f *= 10i128.pow(SCALE - frac.len() as u32);
        let v = w * ONE + f;
        Some(Money(if neg { -v } else { v }))
    }

    pub fn checked_add(self, o: Money) -> Option<Money> {
        self.0.checked_add(o.0).map(Money)
    }

    pub fn checked_sub(self, o: Money) -> Option<Money> {
        self.0.checked_sub(o.0).map(Money)
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
}

impl fmt::Display for Money {
    /// The shortest exact text (`1.5`, `0`, `-0.000000001`): valid `numeric` input.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let a = self.0.unsigned_abs();
        let whole = a / ONE as u128;
        let frac = a % ONE as u128;
        if neg {
            f.write_str("-")?;
        }
        write!(f, "{whole}")?;
        if frac != 0 {
            let s = format!("{frac:09}");
            write!(f, ".{}", s.trim_end_matches('0'))?;
        }
        Ok(())
    }
}

/// A running total for one period: what was spent, and when the period ends. A total
/// whose period has ended counts as zero (the next charge starts the new period).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    pub spent: Money,
    /// End of the period the total belongs to (exclusive); `None`: never charged.
    pub ends_at: Option<Micros>,
}

impl Period {
    /// The amount spent in the period containing `now`.
    pub fn current(&self, now: Micros) -> Money {
        match self.ends_at {
            Some(end) if now < end => self.spent,
            _ => Money::ZERO,
        }
    }
}

/// How credits are topped up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    Day,
    Month,
}

impl Refill {
    pub fn parse(s: &str) -> Option<Refill> {
        match s {
            "day" => Some(Refill::Day),
            "month" => Some(Refill::Month),
            _ => None,
        }
    }
}

/// Caps, credits and running totals of one meter (a key's or a tenant's), as stored in
/// a row of `api_key_mgmt.meters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meter {
    pub daily_cap: Option<Money>,
    pub monthly_cap: Option<Money>,
    pub day: Period,
    pub month: Period,
    /// Remaining balance; `None`: the meter has no credits.
    pub credits: Option<Money>,
    /// Balance set at each refill (with `refill`).
    pub credits_refill: Option<Money>,
    pub refill: Option<Refill>,
    /// End of the refill period in which the balance was last set.
    pub credits_until: Option<Micros>,
}

impl Meter {
    /// Credits available at `now`: a refill period that ended resets the balance to the
    /// refill amount (exactly what the next charge will store).
    pub fn credits_at(&self, now: Micros) -> Option<Money> {
        let bal = self.credits?;
        match (self.refill, self.credits_refill, self.credits_until) {
            (Some(_), Some(amount), Some(until)) if now >= until => Some(amount),
            _ => Some(bal),
        }
    }
}

/// What a meter, or a key's and its tenant's together, have left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    /// `None`: no daily cap applies.
    pub daily: Option<Money>,
    pub monthly: Option<Money>,
    pub credits: Option<Money>,
    /// When a refusal lifts (period end or refill), if it will.
    pub retry_at: Option<Micros>,
}

fn min_opt(a: Option<Money>, b: Option<Money>) -> Option<Money> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn left(cap: Option<Money>, spent: Money) -> Option<Money> {
    cap.map(|c| c.checked_sub(spent).unwrap_or(Money::ZERO))
}

/// The budget decision for the meters that apply to a request (the key's, then its
/// tenant's): `cost` must fit in every cap and in the credits. With `cost` zero (what
/// `validate_api_key` asks) a meter with nothing left refuses, so a key whose daily cap
/// is spent answers `daily_cap_exceeded`. Order: daily, monthly, credits.
///
/// Returns the code and what is left (the minimum over the meters).
pub fn decide(meters: &[&Meter], now: Micros, cost: Money) -> (Code, Remaining) {
    let mut rem = Remaining::default();
    let mut day_end = None;
    let mut month_end = None;
    let mut credit_end = None;
    for m in meters {
        rem.daily = min_opt(rem.daily, left(m.daily_cap, m.day.current(now)));
        rem.monthly = min_opt(rem.monthly, left(m.monthly_cap, m.month.current(now)));
        rem.credits = min_opt(rem.credits, m.credits_at(now));
        if m.daily_cap.is_some() {
            day_end = day_end.or(m.day.ends_at.filter(|&e| e > now));
        }
        if m.monthly_cap.is_some() {
            month_end = month_end.or(m.month.ends_at.filter(|&e| e > now));
        }
        if m.refill.is_some() {
            credit_end = credit_end.or(m.credits_until.filter(|&e| e > now));
        }
    }
    let refuses = |left: Option<Money>| match left {
        None => false,
        Some(l) if cost == Money::ZERO => !l.is_positive(),
        Some(l) => cost > l,
    };
    let code = if refuses(rem.daily) {
        rem.retry_at = day_end;
        Code::DailyCapExceeded
    } else if refuses(rem.monthly) {
        rem.retry_at = month_end;
        Code::MonthlyCapExceeded
    } else if refuses(rem.credits) {
        rem.retry_at = credit_end;
        Code::CreditsExhausted
    } else {
        Code::Ok
    };
    (code, rem)
}

/// The alert thresholds (percent of a cap) that a change of the amount spent from
/// `before` to `after` crosses, given the highest threshold already alerted this
/// period. The SQL applies the same rule (`api_key_mgmt_internal.alert_level`).
pub fn thresholds_crossed(cap: Money, after: Money, already: u8) -> Option<u8> {
    let level = if cap == Money::ZERO || after >= cap {
        100
    } else if after.units() * 100 >= cap.units() * 80 {
        80
    } else {
        0
    };
    (level > already).then_some(level)
}

/// A key's meter row as the two-statement path of `charge_api_key` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuietMeter {
    pub daily_cap: Option<Money>,
    pub monthly_cap: Option<Money>,
    pub day: Period,
    pub month: Period,
    pub credits: Option<Money>,
    /// A refill period is set (credits are topped up at `credits_until`).
    pub refills: bool,
    pub credits_until: Option<Micros>,
    pub credits_granted: Option<Money>,
    /// Highest alert already sent: daily cap, monthly cap, credits.
    pub alerted: [i16; 3],
}

/// Whether a charge of `cost` at `now` is one that `charge_api_key` may write in two
/// statements: no period of the meter has ended (a rollover would change nothing), the
/// charge fits the caps and the credits, and it crosses no alert threshold (the SQL's
/// `alert_level` for caps; credits: 100 at or below zero, 20 at a fifth of the balance
/// last granted). Anything else, or an amount out of [`Money`]'s range: `false`, and
/// the full path decides.
pub fn charges_quietly(m: &QuietMeter, cost: Money, now: Micros) -> bool {
    let open = |p: &Period| p.ends_at.is_some_and(|end| now < end);
    if !open(&m.day) || !open(&m.month) {
        return false;
    }
    if m.refills && m.credits_until.is_none_or(|until| now >= until) {
        return false;
    }
    let caps = [
        (m.daily_cap, m.day.spent, m.alerted[0]),
        (m.monthly_cap, m.month.spent, m.alerted[1]),
    ];
    for (cap, spent, alerted) in caps {
        let Some(cap) = cap else { continue };
        let Some(after) = spent.checked_add(cost) else {
            return false;
        };
        let crossed = thresholds_crossed(cap, after, alerted.clamp(0, 100) as u8);
        if after > cap || crossed.is_some() {
            return false;
        }
    }
    if let Some(credits) = m.credits {
        let Some(left) = credits.checked_sub(cost) else {
            return false;
        };
        let low = |granted: Money| granted.is_positive() && left.units() * 5 <= granted.units();
        let level = if !left.is_positive() {
            100
        } else if m.credits_granted.is_some_and(low) {
            20
        } else {
            0
        };
        if cost > credits || level > m.alerted[2] {
            return false;
        }
    }
    true
}

/// Whether `scope` may be charged: one concrete `area:action` of `[a-z0-9_.-]` characters, at most
/// 200 characters (the SQL's `^[a-z0-9_.-]+:[a-z0-9_.-]+$`).
pub fn charge_scope_ok(scope: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    };
    scope.chars().count() <= 200
        && matches!(scope.split_once(':'), Some((a, b)) if part(a) && part(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap_or_else(|| panic!("parse {s}"))
    }

    #[test]
    fn parse_and_print() {
        for (i, o) in [
            ("0", "0"),
            ("1", "1"),
            ("-1.50", "-1.5"),
            ("0.000000001", "0.000000001"),
            ("12.345000000000", "12.345"),
            (".5", "0.5"),
            ("5.", "5"),
            ("999999999999999.999999999", "999999999999999.999999999"),
        ] {
            assert_eq!(m(i).to_string(), o, "{i}");
        }
        for bad in [
            "",
            "-",
            ".",
            "NaN",
            "1e5",
            "0.0000000001",
            "1000000000000000",
            "1.2.3",
            " 1",
            "Infinity",
        ] {
            assert_eq!(Money::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn periods_roll_over() {
        let p = Period {
            spent: m("7"),
            ends_at: Some(100),
        };
        assert_eq!(p.current(99), m("7"));
        assert_eq!(p.current(100), Money::ZERO);
        assert_eq!(Period::default().current(5), Money::ZERO);
    }

    fn capped(daily: &str, spent: &str) -> Meter {
        Meter {
            daily_cap: Some(m(daily)),
            day: Period {
                spent: m(spent),
                ends_at: Some(1000),
            },
            ..Default::default()
        }
    }

    #[test]
    fn caps() {
        let k = capped("10", "9.5");
        assert_eq!(decide(&[&k], 0, m("0.5")).0, Code::Ok);
        let (code, rem) = decide(&[&k], 0, m("0.500000001"));
        assert_eq!(code, Code::DailyCapExceeded);
        assert_eq!(rem.daily, Some(m("0.5")));
        assert_eq!(rem.retry_at, Some(1000));
        // Validation (cost 0) refuses only when nothing is left.
        assert_eq!(decide(&[&k], 0, Money::ZERO).0, Code::Ok);
        assert_eq!(
            decide(&[&capped("10", "10")], 0, Money::ZERO).0,
            Code::DailyCapExceeded
        );
        // The next day the cap is whole again.
        let (code, rem) = decide(&[&capped("10", "10")], 1000, Money::ZERO);
        assert_eq!((code, rem.daily), (Code::Ok, Some(m("10"))));
        // A zero cap admits nothing but zero-cost charges.
        assert_eq!(
            decide(&[&capped("0", "0")], 0, Money::ZERO).0,
            Code::DailyCapExceeded
        );
    }

    #[test]
    fn key_and_tenant_take_the_minimum() {
        let key = capped("10", "1");
        let mut tenant = capped("100", "95");
        tenant.monthly_cap = Some(m("1000"));
        let (code, rem) = decide(&[&key, &tenant], 0, m("5"));
        assert_eq!(code, Code::Ok);
        assert_eq!(rem.daily, Some(m("5")));
        assert_eq!(rem.monthly, Some(m("1000")));
        assert_eq!(
            decide(&[&key, &tenant], 0, m("6")).0,
            Code::DailyCapExceeded
        );
    }

    #[test]
    fn monthly_then_credits() {
        let mut k = Meter {
            monthly_cap: Some(m("50")),
            month: Period {
                spent: m("50"),
                ends_at: Some(5000),
            },
            credits: Some(m("0")),
            ..Default::default()
        };
        let (code, rem) = decide(&[&k], 0, Money::ZERO);
        assert_eq!((code, rem.retry_at), (Code::MonthlyCapExceeded, Some(5000)));
        k.monthly_cap = None;
        let (code, rem) = decide(&[&k], 0, Money::ZERO);
        assert_eq!((code, rem.retry_at), (Code::CreditsExhausted, None));
        // A daily refill: the balance is whole again once the refill period ended.
        k.refill = Some(Refill::Day);
        k.credits_refill = Some(m("3"));
        k.credits_until = Some(200);
        let (code, rem) = decide(&[&k], 100, Money::ZERO);
        assert_eq!((code, rem.retry_at), (Code::CreditsExhausted, Some(200)));
        let (code, rem) = decide(&[&k], 200, m("3"));
        assert_eq!((code, rem.credits), (Code::Ok, Some(m("3"))));
        assert_eq!(decide(&[&k], 200, m("3.1")).0, Code::CreditsExhausted);
    }

    #[test]
    fn alert_levels() {
        let cap = m("100");
        assert_eq!(thresholds_crossed(cap, m("79.99"), 0), None);
        assert_eq!(thresholds_crossed(cap, m("80"), 0), Some(80));
        assert_eq!(thresholds_crossed(cap, m("90"), 80), None);
        assert_eq!(thresholds_crossed(cap, m("100"), 80), Some(100));
        assert_eq!(thresholds_crossed(cap, m("150"), 0), Some(100));
        assert_eq!(thresholds_crossed(cap, m("150"), 100), None);
        assert_eq!(thresholds_crossed(Money::ZERO, Money::ZERO, 0), Some(100));
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(u in -(MAX_WHOLE * ONE - 1)..(MAX_WHOLE * ONE)) {
            let x = Money::from_units(u);
            prop_assert_eq!(Money::parse(&x.to_string()), Some(x));
        }

        /// Admitting charges one by one while `decide` says Ok never exceeds the cap,
        /// and stops only when the next charge would not fit.
        #[test]
        fn sequential_charges_never_exceed(cap in 0i128..10_000, costs in proptest::collection::vec(0i128..500, 1..100)) {
            let cap = Money::from_units(cap * 1_000_000);
            let mut meter = Meter { daily_cap: Some(cap), day: Period { spent: Money::ZERO, ends_at: Some(10) }, ..Default::default() };
            for c in costs {
                let c = Money::from_units(c * 1_000_000);
                let (code, rem) = decide(&[&meter], 0, c);
                // Cost zero asks "is anything left" (validation's question).
                let fits = if c == Money::ZERO {
                    meter.day.spent < cap
                } else {
                    meter.day.spent.checked_add(c).unwrap() <= cap
                };
                prop_assert_eq!(code == Code::Ok, fits);
                prop_assert_eq!(rem.daily, Some(cap.checked_sub(meter.day.spent).unwrap()));
                if code == Code::Ok {
                    meter.day.spent = meter.day.spent.checked_add(c).unwrap();
                }
                prop_assert!(meter.day.spent <= cap);
            }
        }
    }

    #[test]
    fn charge_scopes_like_the_sql_pattern() {
        for ok in [
            "agents:chat",
            "a:b",
            "document.v2:ocr-fast",
            "x_1:y.2",
            "_a:-b",
        ] {
            assert!(charge_scope_ok(ok), "{ok}");
        }
        for bad in [
            "agents:*",
            "agents",
            ":chat",
            "agents:",
            "a:b:c",
            "Agents:chat",
            "a b:c",
            "",
        ] {
            assert!(!charge_scope_ok(bad), "{bad}");
        }
        assert!(charge_scope_ok(&format!("a:{}", "b".repeat(198))));
        assert!(!charge_scope_ok(&format!("a:{}", "b".repeat(199))));
    }

    fn quiet(daily: &str, spent: &str, credits: Option<&str>, alerted: [i16; 3]) -> QuietMeter {
        let day = Period {
            spent: m(spent),
            ends_at: Some(1_000),
        };
        QuietMeter {
            daily_cap: (!daily.is_empty()).then(|| m(daily)),
            monthly_cap: None,
            day,
            month: day,
            credits: credits.map(m),
            refills: false,
            credits_until: None,
            credits_granted: credits.map(m),
            alerted,
        }
    }

    #[test]
    fn quiet_charges() {
        let now = 500;
        // Under 80 % of the cap: quiet; reaching 80 % or the cap, or passing it: not.
        assert!(charges_quietly(
            &quiet("10", "0", None, [0; 3]),
            m("7.99"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("10", "0", None, [0; 3]),
            m("8"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("10", "7", None, [0; 3]),
            m("3.5"),
            now
        ));
        // 80 % already alerted: quiet up to the cap, not at it.
        assert!(charges_quietly(
            &quiet("10", "8", None, [80, 0, 0]),
            m("1.999"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("10", "8", None, [80, 0, 0]),
            m("2"),
            now
        ));
        // No cap: anything (within range).
        assert!(charges_quietly(
            &quiet("", "123456", None, [0; 3]),
            m("99999"),
            now
        ));
        // A zero cap is at 100 % from the start.
        assert!(!charges_quietly(
            &quiet("0", "0", None, [0; 3]),
            m("0"),
            now
        ));
        // Credits: 20 % of the last grant and zero are alerts; more than the balance is refused.
        assert!(charges_quietly(
            &quiet("", "0", Some("10"), [0; 3]),
            m("7.99"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("", "0", Some("10"), [0; 3]),
            m("8"),
            now
        ));
        assert!(charges_quietly(
            &quiet("", "0", Some("10"), [0, 0, 20]),
            m("9.5"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("", "0", Some("10"), [0, 0, 20]),
            m("10"),
            now
        ));
        assert!(!charges_quietly(
            &quiet("", "0", Some("10"), [0, 0, 100]),
            m("10.5"),
            now
        ));
        // An ended period (or one never started) is the full path's rollover.
        assert!(!charges_quietly(
            &quiet("10", "0", None, [0; 3]),
            m("1"),
            1_000
        ));
        let mut fresh = quiet("10", "0", None, [0; 3]);
        fresh.day.ends_at = None;
        assert!(!charges_quietly(&fresh, m("1"), now));
        // A refill due: full path.
        let mut refill = quiet("", "0", Some("10"), [0; 3]);
        refill.refills = true;
        refill.credits_until = Some(600);
        assert!(charges_quietly(&refill, m("1"), now));
        assert!(!charges_quietly(&refill, m("1"), 600));
    }

    proptest! {
        /// A quiet charge is one the budget decision admits, on a meter with open periods.
        #[test]
        fn quiet_charges_are_admitted(cap in 0i64..1_000, spent in 0i64..1_000, cost in 0i64..1_000,
                                      credits in proptest::option::of(0i64..1_000)) {
            let mut q = quiet("1", "0", None, [0; 3]);
            q.daily_cap = Some(Money::from_units(cap as i128 * 1_000_000));
            q.day.spent = Money::from_units(spent as i128 * 1_000_000);
            q.credits = credits.map(|c| Money::from_units(c as i128 * 1_000_000));
            q.credits_granted = q.credits;
            let cost = Money::from_units(cost as i128 * 1_000_000);
            if charges_quietly(&q, cost, 500) {
                let meter = Meter {
                    daily_cap: q.daily_cap,
                    day: q.day,
                    month: q.month,
                    credits: q.credits,
                    ..Meter::default()
                };
                prop_assert_eq!(decide(&[&meter], 500, cost).0, Code::Ok);
            }
        }
    }
}
