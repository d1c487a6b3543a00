//! Findings: patterns in a workspace's conversations worth a look, found by a scheduled
//! detection and kept in the workspace's `findings` stream.
//!
//! Two kinds of pattern:
//!
//! - **rising / falling**: a value's count over the last day left the range of the days
//!   before it (the baseline): beyond three standard deviations of the baseline's daily
//!   counts, at least half again (or half as much), and at least
//!   [`Thresholds::min_count`] conversations on the busier side;
//! - **co-occurrence**: two values of different dimensions found together in at least
//!   [`Thresholds::lift`] times as many conversations as chance would put together (their
//!   counts' product over the total), with at least [`Thresholds::min_count`] of them.
//!
//! The detection day is the last full day that ended at least a day ago, so the
//! conversations it counts have had a day to be analysed and resolved (the day just gone
//! would show every fresh conversation as unresolved); a workspace younger than its
//! baseline has no usual range yet and gets no trend findings.
//!
//! A pattern's identity is its fingerprint (`rising:topic=billing`): it is raised once.
//! While that finding is open it stands for the pattern; once dismissed, the pattern is
//! not raised again.

use std::collections::BTreeMap;

use switchboard_proto::insights::v1 as pb;

use super::dimensions::Window;
use super::{DomainError, Event, timestamp};

/// What counts as a pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Days of baseline before the detection day.
    pub baseline_days: i64,
    /// Days a co-occurrence is looked for over.
    pub co_occurrence_days: i64,
    pub min_count: u64,
    pub lift: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            baseline_days: 14,
            co_occurrence_days: 7,
            min_count: 10,
            lift: 2.0,
        }
    }
}

/// The dimensions whose values' daily counts are watched.
pub const WATCHED: &[&str] = &[
    "channel",
    "assistant",
    "flow",
    "topic",
    "sentiment",
    "request_type",
    "urgency",
    "customer_effort",
    "churn_risk",
    "resolution",
    "knowledge_gap",
];

/// The pairs of dimensions looked at for co-occurrences.
pub const PAIRS: &[(&str, &str)] = &[
    ("topic", "sentiment"),
    ("topic", "resolution"),
    ("topic", "channel"),
    ("topic", "urgency"),
    ("topic", "churn_risk"),
    ("request_type", "sentiment"),
    ("request_type", "resolution"),
    ("channel", "resolution"),
    ("channel", "sentiment"),
    ("assistant", "resolution"),
    ("urgency", "resolution"),
    ("customer_effort", "churn_risk"),
];

/// One value's conversations per day: the baseline days oldest first, then the detection
/// day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daily {
    pub dimension: String,
    pub value: String,
    pub counts: Vec<u64>,
}

/// Two values' conversations, together and each alone, over the co-occurrence window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Together {
    pub a: (String, String),
    pub b: (String, String),
    pub both: u64,
    pub a_count: u64,
    pub b_count: u64,
    pub total: u64,
}

fn condition(dimension: &str, value: &str) -> pb::Condition {
    pb::Condition {
        dimension: dimension.to_owned(),
        values: vec![value.to_owned()],
    }
}

/// Rising and falling values: `window` is the detection day, `baseline` the days before.
pub fn trends(
    series: &[Daily],
    window: Window,
    baseline: Window,
    t: &Thresholds,
) -> Vec<pb::Finding> {
    let mut found = Vec::new();
    for s in series {
        let Some((&observed, before)) = s.counts.split_last() else {
            continue;
        };
        if before.is_empty() || s.value.is_empty() {
            continue;
        }
        let n = before.len() as f64;
        let mean = before.iter().sum::<u64>() as f64 / n;
        let sd = (before
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let x = observed as f64;
        let kind = if observed >= t.min_count && x > mean + 3.0 * sd && x >= 1.5 * mean {
            "rising"
        } else if mean >= t.min_count as f64 && x < mean - 3.0 * sd && x <= 0.5 * mean {
            "falling"
        } else {
            continue;
        };
        let ratio = x / mean.max(1.0);
        let verb = if kind == "rising" { "rose" } else { "fell" };
        found.push(pb::Finding {
            kind: kind.to_owned(),
            pattern: vec![condition(&s.dimension, &s.value)],
            summary: format!(
                "{} = {} {verb} to {observed} conversations in a day from a usual {mean:.1} ({:+.0}%)",
                s.dimension,
                s.value,
                (x - mean) / mean.max(1.0) * 100.0
            ),
            observed: x,
            expected: mean,
            ratio,
            window_start: Some(timestamp(window.from)),
            window_end: Some(timestamp(window.to)),
            baseline_start: Some(timestamp(baseline.from)),
            baseline_end: Some(timestamp(baseline.to)),
            fingerprint: format!("{kind}:{}={}", s.dimension, s.value),
            ..Default::default()
        });
    }
    found
}

/// Values found together more than chance over `window`.
pub fn co_occurrences(pairs: &[Together], window: Window, t: &Thresholds) -> Vec<pb::Finding> {
    let mut found = Vec::new();
    for p in pairs {
        if p.total == 0 || p.both < t.min_count || p.a.1.is_empty() || p.b.1.is_empty() {
            continue;
        }
        let expected = p.a_count as f64 * p.b_count as f64 / p.total as f64;
        let ratio = p.both as f64 / expected.max(f64::MIN_POSITIVE);
        if ratio < t.lift {
            continue;
        }
        found.push(pb::Finding {
            kind: "co_occurrence".to_owned(),
            pattern: vec![condition(&p.a.0, &p.a.1), condition(&p.b.0, &p.b.1)],
            summary: format!(
                "{} = {} and {} = {} occur together in {} conversations, {ratio:.1} times what chance would give ({expected:.1})",
                p.a.0, p.a.1, p.b.0, p.b.1, p.both
            ),
            observed: p.both as f64,
            expected,
            ratio,
            window_start: Some(timestamp(window.from)),
            window_end: Some(timestamp(window.to)),
            fingerprint: format!("co_occurrence:{}={}&{}={}", p.a.0, p.a.1, p.b.0, p.b.1),
            ..Default::default()
        });
    }
    found
}

/// A workspace's findings as its commands see them.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Every pattern raised, and the finding that raised it.
    pub raised: BTreeMap<String, String>,
    /// Every finding's id, and whether it was dismissed.
    pub dismissed: BTreeMap<String, bool>,
}

pub fn apply(state: &mut Findings, event: &Event) {
    match event {
        Event::FindingRaised(raised) => {
            if let Some(f) = &raised.finding {
                state.raised.insert(f.fingerprint.clone(), f.id.clone());
                state.dismissed.insert(f.id.clone(), false);
            }
        }
        Event::FindingDismissed(d) => {
            state.dismissed.insert(d.finding_id.clone(), true);
        }
        Event::SegmentCreated(_) | Event::SegmentDeleted(_) => {}
    }
}

/// Raising the `candidates` whose pattern was never raised (each candidate has its id
/// and `raised_at` set).
pub fn raise(state: &Findings, candidates: Vec<pb::Finding>) -> Vec<Event> {
    let mut seen = std::collections::BTreeSet::new();
    candidates
        .into_iter()
        .filter(|f| {
            !state.raised.contains_key(&f.fingerprint) && seen.insert(f.fingerprint.clone())
        })
        .map(|finding| {
            Event::FindingRaised(pb::FindingRaised {
                finding: Some(finding),
            })
        })
        .collect()
}

/// Dismissing finding `id`; dismissing it again changes nothing.
pub fn dismiss(state: &Findings, id: &str, by: &str, now: i64) -> Result<Vec<Event>, DomainError> {
    match state.dismissed.get(id) {
        None => Err(DomainError::NotFound("finding")),
        Some(true) => Ok(vec![]),
        Some(false) => Ok(vec![Event::FindingDismissed(pb::FindingDismissed {
            finding_id: id.to_owned(),
            dismissed_at: Some(timestamp(now)),
            dismissed_by: by.to_owned(),
        })]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dimensions::DAY_MS;

    const W: Window = Window {
        from: 14 * DAY_MS,
        to: 15 * DAY_MS,
    };
    const B: Window = Window {
        from: 0,
        to: 14 * DAY_MS,
    };

    fn daily(value: &str, counts: &[u64]) -> Daily {
        Daily {
            dimension: "topic".into(),
            value: value.into(),
            counts: counts.to_vec(),
        }
    }

    #[test]
    fn a_value_leaving_its_usual_range_is_a_trend() {
        let usual = [10, 12, 11, 9, 10, 13, 12, 11, 10, 9, 12, 11, 10, 10];
        let mut rising = usual.to_vec();
        rising.push(40);
        let mut falling = usual.to_vec();
        falling.push(1);
        let mut steady = usual.to_vec();
        steady.push(13);
        let mut small = vec![0; 14];
        small.push(5);
        let found = trends(
            &[
                daily("billing", &rising),
                daily("shipping", &falling),
                daily("login", &steady),
                daily("rare", &small),
                daily("", &rising),
            ],
            W,
            B,
            &Thresholds::default(),
        );
        let kinds: Vec<_> = found
            .iter()
            .map(|f| (f.kind.as_str(), f.fingerprint.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("rising", "rising:topic=billing"),
                ("falling", "falling:topic=shipping")
            ]
        );
        assert!(
            (found[0].expected - 10.714).abs() < 0.01,
            "{}",
            found[0].expected
        );
        assert!(
            found[0].summary.contains("rose to 40"),
            "{}",
            found[0].summary
        );
    }

    #[test]
    fn values_together_beyond_chance_are_a_co_occurrence() {
        let pair = |both, a_count, b_count| Together {
            a: ("topic".into(), "billing".into()),
            b: ("sentiment".into(), "negative".into()),
            both,
            a_count,
            b_count,
            total: 1000,
        };
        let t = Thresholds::default();
        // 100 billing, 100 negative: chance gives 10 together.
        assert_eq!(co_occurrences(&[pair(40, 100, 100)], W, &t).len(), 1);
        assert!(co_occurrences(&[pair(15, 100, 100)], W, &t).is_empty());
        assert!(co_occurrences(&[pair(8, 20, 20)], W, &t).is_empty());
    }

    #[test]
    fn a_pattern_is_raised_once() {
        let finding = |id: &str| pb::Finding {
            id: id.into(),
            fingerprint: "rising:topic=billing".into(),
            raised_at: Some(timestamp(DAY_MS)),
            ..Default::default()
        };
        let mut state = Findings::default();
        let events = raise(&state, vec![finding("fnd_1"), finding("fnd_2")]);
        assert_eq!(events.len(), 1, "one per pattern in a run");
        for e in &events {
            apply(&mut state, e);
        }
        assert!(
            raise(&state, vec![finding("fnd_3")]).is_empty(),
            "open: not again"
        );
        for e in dismiss(&state, "fnd_1", "api_key:key_1", 2 * DAY_MS).unwrap() {
            apply(&mut state, &e);
        }
        assert!(
            raise(&state, vec![finding("fnd_4")]).is_empty(),
            "dismissed: not again"
        );
        assert_eq!(dismiss(&state, "fnd_1", "x", 3 * DAY_MS), Ok(vec![]));
        assert_eq!(
            dismiss(&state, "fnd_9", "x", 3 * DAY_MS),
            Err(DomainError::NotFound("finding"))
        );
    }
}
