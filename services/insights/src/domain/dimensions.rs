//! The dimensions conversations are classified by, and the filters and windows questions
//! are asked over. Pure: which dimensions exist, what a valid filter is, and where in the
//! read model each dimension lives (the store turns a [`Target`] into SQL).

use std::collections::BTreeSet;

use super::FieldViolation;

/// Where a dimension's value is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A column of `insights_conversations`: one value per conversation ("" for none).
    Column(&'static str),
    /// Rows of `insights_labels` under this dimension name: any number per conversation.
    Label(String),
}

/// A dimension of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    pub key: &'static str,
    pub label: &'static str,
    /// The column it lives in; `None` for labels (`topic`).
    pub column: Option<&'static str>,
    /// The set list of values of a fixed dimension; empty for an open one.
    pub values: &'static [&'static str],
}

impl Definition {
    pub fn open(&self) -> bool {
        self.values.is_empty()
    }

    pub fn multiple(&self) -> bool {
        self.column.is_none()
    }

    pub fn target(&self) -> Target {
        match self.column {
            Some(column) => Target::Column(column),
            None => Target::Label(self.key.to_owned()),
        }
    }
}

/// Levels of the analysis' graded dimensions.
const LEVELS: &[&str] = &["low", "medium", "high"];

/// Resolution: who (if anyone) resolved the conversation.
pub mod resolution {
    pub const BY_AGENT: &str = "resolved_by_agent";
    pub const HANDED_OVER: &str = "handed_over";
    pub const BY_HUMAN: &str = "resolved_by_human";
    pub const UNRESOLVED: &str = "unresolved";
    pub const ALL: &[&str] = &[BY_AGENT, HANDED_OVER, BY_HUMAN, UNRESOLVED];
}

/// Every built-in dimension. Besides these, `analysis.<key>` (a custom analysis field) and
/// `metafields.<key>` are open dimensions kept as labels.
pub const CATALOGUE: &[Definition] = &[
    Definition {
        key: "channel",
        label: "Channel",
        column: Some("channel"),
        values: &["widget", "whatsapp", "slack", "email", "voice", "api"],
    },
    Definition {
        key: "status",
        label: "Status",
        column: Some("status"),
        values: &["active", "on_hold", "resolved", "archived"],
    },
    Definition {
        key: "assistant",
        label: "Assistant",
        column: Some("assistant"),
        values: &[],
    },
    Definition {
        key: "flow",
        label: "Flow",
        column: Some("flow"),
        values: &[],
    },
    Definition {
        key: "topic",
        label: "Topic",
        column: None,
        values: &[],
    },
    Definition {
        key: "sentiment",
        label: "Sentiment",
        column: Some("sentiment"),
        values: &["positive", "neutral", "negative", "mixed"],
    },
    Definition {
        key: "request_type",
        label: "Request type",
        column: Some("request_type"),
        values: &[],
    },
    Definition {
        key: "urgency",
        label: "Urgency",
        column: Some("urgency"),
        values: LEVELS,
    },
    Definition {
        key: "customer_effort",
        label: "Customer effort",
        column: Some("customer_effort"),
        values: LEVELS,
    },
    Definition {
        key: "churn_risk",
        label: "Churn risk",
        column: Some("churn_risk"),
        values: LEVELS,
    },
    Definition {
        key: "resolution",
        label: "Resolution",
        column: Some("resolution"),
        values: resolution::ALL,
    },
    Definition {
        key: "resolved",
        label: "Resolved",
        column: Some("resolved"),
        values: &["true", "false"],
    },
    Definition {
        key: "knowledge_gap",
        label: "Knowledge gap",
        column: Some("knowledge_gap"),
        values: &[],
    },
];

/// Prefix of custom analysis fields' dimensions.
pub const ANALYSIS_PREFIX: &str = "analysis.";
/// Prefix of metafields' dimensions.
pub const METAFIELDS_PREFIX: &str = "metafields.";

/// The built-in dimension `key`.
pub fn definition(key: &str) -> Option<&'static Definition> {
    CATALOGUE.iter().find(|d| d.key == key)
}

/// Where dimension `key` lives, or why it is not a dimension.
pub fn target(key: &str) -> Result<Target, String> {
    if let Some(d) = definition(key) {
        return Ok(d.target());
    }
    for prefix in [ANALYSIS_PREFIX, METAFIELDS_PREFIX] {
        if let Some(name) = key.strip_prefix(prefix) {
            return if valid_key(name) {
                Ok(Target::Label(key.to_owned()))
            } else {
                Err(format!(
                    "`{prefix}<key>` needs a key of [a-z0-9_.-]{{1,64}}"
                ))
            };
        }
    }
    Err(format!(
        "unknown dimension `{}`; one of {}, `{ANALYSIS_PREFIX}<key>` or `{METAFIELDS_PREFIX}<key>`",
        shorten(key),
        CATALOGUE
            .iter()
            .map(|d| d.key)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A metafield or analysis key: `[a-z0-9_.-]{1,64}`, as the conversations service
/// accepts them.
pub fn valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Bounds of a filter.
pub mod limits {
    pub const CONDITIONS: usize = 20;
    pub const VALUES: usize = 100;
    pub const VALUE_BYTES: usize = 1024;
    /// The longest window a question can span.
    pub const WINDOW_DAYS: i64 = 400;
    /// The window when none is given.
    pub const DEFAULT_DAYS: i64 = 30;
}

pub const DAY_MS: i64 = 86_400_000;

/// The last millisecond of year 9999: no time a question names is later.
pub const MAX_TIME: i64 = 253_402_300_799_999;

/// One condition: the dimension has any of the values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Condition {
    pub dimension: String,
    pub values: Vec<String>,
}

/// A checked condition, ready for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub target: Target,
    pub values: Vec<String>,
}

/// Checks `conditions` (named `field[i]` in violations) and resolves their dimensions.
/// How many a request may have is the caller's to check ([`limits::CONDITIONS`]).
pub fn clauses(field: &str, conditions: &[Condition], v: &mut Vec<FieldViolation>) -> Vec<Clause> {
    let mut out = Vec::new();
    for (i, condition) in conditions.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let target = match target(&condition.dimension) {
            Ok(t) => Some(t),
            Err(why) => {
                v.push(FieldViolation::new(format!("{at}.dimension"), why));
                None
            }
        };
        if condition.values.is_empty() {
            v.push(FieldViolation::new(
                format!("{at}.values"),
                "name at least one value",
            ));
        }
        if condition.values.len() > limits::VALUES {
            v.push(FieldViolation::new(
                format!("{at}.values"),
                format!("at most {} values", limits::VALUES),
            ));
        }
        let fixed = definition(&condition.dimension).filter(|d| !d.open());
        for (j, value) in condition.values.iter().enumerate() {
            if value.len() > limits::VALUE_BYTES {
                v.push(FieldViolation::new(
                    format!("{at}.values[{j}]"),
                    format!("at most {} bytes", limits::VALUE_BYTES),
                ));
            } else if let Some(d) = fixed
                && !value.is_empty()
                && !d.values.contains(&value.as_str())
            {
                v.push(FieldViolation::new(
                    format!("{at}.values[{j}]"),
                    format!(
                        "`{}` is not a value of {}; one of {}",
                        shorten(value),
                        d.key,
                        d.values.join(", ")
                    ),
                ));
            }
        }
        if let Some(target) = target {
            let values: BTreeSet<String> = condition.values.iter().cloned().collect();
            out.push(Clause {
                target,
                values: values.into_iter().collect(),
            });
        }
    }
    out
}

/// A span of conversation creation times, `[from, to)`, in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
}

impl Window {
    /// Its length in milliseconds.
    pub fn span(&self) -> i64 {
        self.to - self.from
    }

    /// The window of the same length just before this one.
    pub fn previous(&self) -> Window {
        Window {
            from: self.from - self.span(),
            to: self.from,
        }
    }
}

/// The window a question spans: `from` and `to` as given, the other end 30 days away when
/// one is missing, the last 30 days up to `now` when both are. At most 400 days.
pub fn window(from: Option<i64>, to: Option<i64>, now: i64, v: &mut Vec<FieldViolation>) -> Window {
    let span = limits::DEFAULT_DAYS * DAY_MS;
    let window = match (from, to) {
        (Some(from), Some(to)) => Window { from, to },
        (Some(from), None) => Window {
            from,
            to: from + span,
        },
        (None, Some(to)) => Window {
            from: to - span,
            to,
        },
        (None, None) => Window {
            from: now - span,
            to: now,
        },
    };
    if !(0..=MAX_TIME).contains(&window.from) || !(0..=MAX_TIME).contains(&window.to) {
        v.push(FieldViolation::new(
            "filter.from",
            "times are between 1970 and 9999",
        ));
    } else if window.to <= window.from {
        v.push(FieldViolation::new("filter.to", "must be after `from`"));
    } else if window.span() > limits::WINDOW_DAYS * DAY_MS {
        v.push(FieldViolation::new(
            "filter.to",
            format!("a window spans at most {} days", limits::WINDOW_DAYS),
        ));
    }
    window
}

/// `s`, cut for an error message.
fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        s.to_owned()
    } else {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(dimension: &str, values: &[&str]) -> Condition {
        Condition {
            dimension: dimension.into(),
            values: values.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn every_bad_condition_is_named() {
        let mut v = Vec::new();
        let ok = clauses(
            "filter.conditions",
            &[
                condition("colour", &["red"]),
                condition("sentiment", &["furious"]),
                condition("topic", &[]),
                condition("analysis.Bad Key", &["x"]),
                condition("metafields.plan", &["pro", "pro"]),
            ],
            &mut v,
        );
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "filter.conditions[0].dimension",
                "filter.conditions[1].values[0]",
                "filter.conditions[2].values",
                "filter.conditions[3].dimension",
            ]
        );
        // The valid ones resolve; repeated values collapse.
        assert_eq!(
            ok.last(),
            Some(&Clause {
                target: Target::Label("metafields.plan".into()),
                values: vec!["pro".into()],
            })
        );
        assert_eq!(ok[0].target, Target::Column("sentiment"));
    }

    #[test]
    fn windows_default_to_the_last_thirty_days_and_are_bounded() {
        let mut v = Vec::new();
        let now = 1_000 * DAY_MS;
        assert_eq!(
            window(None, None, now, &mut v),
            Window {
                from: now - 30 * DAY_MS,
                to: now
            }
        );
        assert_eq!(window(Some(0), None, now, &mut v).to, 30 * DAY_MS);
        assert!(v.is_empty());
        window(Some(10), Some(10), now, &mut v);
        window(Some(0), Some(401 * DAY_MS), now, &mut v);
        assert_eq!(v.len(), 2);
        let w = Window { from: 10, to: 30 };
        assert_eq!(w.previous(), Window { from: -10, to: 10 });
    }
}
