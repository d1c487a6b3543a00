//! A conversation as insights classify it: its dimensions, what it measures, and the few
//! facts only its history knows (when the customer first wrote, when the first answer
//! came, whether a human ever took over). Pure: [`observe`] folds one public event's
//! conversation (and the message that caused it) onto what was known before.

use std::collections::{BTreeSet, HashMap};

use prost_types::Timestamp;
use switchboard_proto::events::v1::{Author, Conversation, ConversationStatus, Message};

use super::dimensions::{ANALYSIS_PREFIX, METAFIELDS_PREFIX, resolution};

/// The metafield naming the conversation's assistant (as the flows service reads it).
pub const ASSISTANT_METAFIELD: &str = "assistant_id";

/// Custom analysis keys with a dimension of their own; every other key is
/// `analysis.<key>`.
pub mod analysis_keys {
    pub const TOPICS: &str = "topics";
    pub const REQUEST_TYPE: &str = "request_type";
    pub const URGENCY: &str = "urgency";
    pub const CUSTOMER_EFFORT: &str = "customer_effort";
    pub const CHURN_RISK: &str = "churn_risk";
    pub const KNOWLEDGE_GAP: &str = "knowledge_gap";
    /// Overrides the resolution derived from status and handover, when it names one.
    pub const RESOLUTION: &str = "resolution";
    pub const ALL: [&str; 7] = [
        TOPICS,
        REQUEST_TYPE,
        URGENCY,
        CUSTOMER_EFFORT,
        CHURN_RISK,
        KNOWLEDGE_GAP,
        RESOLUTION,
    ];
}

/// The label dimension every conversation has at least one row of: its topics, or ""
/// when it has none.
pub const TOPIC: &str = "topic";

/// Metafield values longer than this are not kept as labels (nobody filters by a blob).
pub const LABEL_VALUE_BYTES: usize = 256;
/// Topics kept per conversation.
pub const TOPICS_MAX: usize = 20;

/// What only the conversation's history knows; carried from one event to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub version: i64,
    pub first_customer_at: Option<i64>,
    pub first_response_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub handed_over: bool,
    pub flow: String,
}

/// One conversation's row in the read model, and its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fact {
    pub workspace_id: String,
    pub conversation_id: String,
    pub channel: String,
    pub status: String,
    pub assistant: String,
    pub sentiment: String,
    pub request_type: String,
    pub urgency: String,
    pub customer_effort: String,
    pub churn_risk: String,
    pub knowledge_gap: String,
    pub resolution: &'static str,
    pub messages: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub history: History,
    /// `(dimension, value)`: topics, `analysis.<key>`, `metafields.<key>`.
    pub labels: BTreeSet<(String, String)>,
}

impl Fact {
    pub fn resolved(&self) -> bool {
        matches!(self.resolution, resolution::BY_AGENT | resolution::BY_HUMAN)
    }

    pub fn agent_resolved(&self) -> bool {
        self.resolution == resolution::BY_AGENT
    }

    pub fn handed_over(&self) -> bool {
        matches!(
            self.resolution,
            resolution::HANDED_OVER | resolution::BY_HUMAN
        )
    }

    pub fn first_response_ms(&self) -> Option<i64> {
        Some(self.history.first_response_at? - self.history.first_customer_at?)
    }

    pub fn resolution_ms(&self) -> Option<i64> {
        self.resolved()
            .then(|| {
                self.history
                    .resolved_at
                    .map(|at| (at - self.created_at).max(0))
            })
            .flatten()
    }
}

/// The bucket a duration (ms) is counted in for medians: its start, to the second below
/// a minute, the minute below an hour, ten minutes below a day, the hour beyond. A median
/// is as precise as its bucket.
pub fn bucket(ms: i64) -> i64 {
    const SECOND: i64 = 1_000;
    const MINUTE: i64 = 60 * SECOND;
    const HOUR: i64 = 60 * MINUTE;
    let ms = ms.max(0);
    let width = match ms {
        v if v < MINUTE => SECOND,
        v if v < HOUR => MINUTE,
        v if v < 24 * HOUR => 10 * MINUTE,
        _ => HOUR,
    };
    ms / width * width
}

/// The median of a histogram of `(bucket, count)`: the bucket of the middle rank, or the
/// mean of the two middle ranks' buckets; `None` when it is empty.
pub fn median(mut histogram: Vec<(i64, i64)>) -> Option<i64> {
    histogram.sort_unstable();
    let n: i64 = histogram.iter().map(|(_, c)| c).sum();
    if n == 0 {
        return None;
    }
    let at = |rank: i64| {
        let mut seen = 0;
        histogram
            .iter()
            .find(|(_, c)| {
                seen += c;
                seen >= rank
            })
            .map_or(0, |(b, _)| *b)
    };
    // Ranks from 1: the middle one, or the two middle ones.
    Some((at((n + 1) / 2) + at(n / 2 + 1)) / 2)
}

/// Milliseconds since the epoch of a protobuf time (0 when unset).
pub fn millis(t: Option<&Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000)
    })
}

/// `api` for `CHANNEL_API`: an enum value's name without its prefix, lowercase; "" for the
/// unspecified value.
pub fn enum_value(name: &str, prefix: &str) -> String {
    let value = name.strip_prefix(prefix).unwrap_or(name);
    if value == "UNSPECIFIED" {
        String::new()
    } else {
        value.to_ascii_lowercase()
    }
}

/// The fact of `conversation` as of this event, given what was known before; `None` when
/// the event is older than what is known (a redelivery, or a late duplicate).
pub fn observe(
    workspace_id: &str,
    before: Option<&History>,
    conversation: &Conversation,
    message: Option<&Message>,
) -> Option<Fact> {
    let version = i64::try_from(conversation.version).unwrap_or(i64::MAX);
    let mut history = before.cloned().unwrap_or_default();
    if before.is_some() && history.version >= version {
        return None;
    }
    history.version = version;
    let updated_at = millis(conversation.updated_at.as_ref());
    if let Some(message) = message {
        let at = millis(message.created_at.as_ref());
        match message.author() {
            Author::Customer => {
                history.first_customer_at.get_or_insert(at);
            }
            Author::Agent | Author::Human => {
                if history.first_response_at.is_none()
                    && history.first_customer_at.is_some_and(|first| at >= first)
                {
                    history.first_response_at = Some(at);
                }
                if message.author() == Author::Human {
                    history.handed_over = true;
                }
            }
            Author::System | Author::Unspecified => {}
        }
    }
    if conversation
        .assignment
        .as_ref()
        .is_some_and(|a| !a.agent.is_empty())
    {
        history.handed_over = true;
    }
    let resolved = conversation.status() == ConversationStatus::Resolved;
    history.resolved_at = if resolved {
        Some(history.resolved_at.unwrap_or(updated_at))
    } else {
        None
    };

    let analysis = conversation.analysis.clone().unwrap_or_default();
    let custom = &analysis.custom;
    let level = |key: &str| custom.get(key).map(|v| v.trim().to_ascii_lowercase());
    let derived = match (resolved, history.handed_over) {
        (true, false) => resolution::BY_AGENT,
        (true, true) => resolution::BY_HUMAN,
        (false, true) => resolution::HANDED_OVER,
        (false, false) => resolution::UNRESOLVED,
    };
    let resolution = level(analysis_keys::RESOLUTION)
        .and_then(|r| resolution::ALL.iter().find(|known| **known == r).copied())
        .unwrap_or(derived);

    let mut labels = BTreeSet::new();
    let topics = topics(&analysis.topic, &analysis.topics, custom);
    if topics.is_empty() {
        // "No topic" is a row too, so a topic breakdown reads the labels alone.
        labels.insert((TOPIC.to_owned(), String::new()));
    }
    for topic in topics {
        labels.insert((TOPIC.to_owned(), topic));
    }
    for (key, value) in custom {
        if !analysis_keys::ALL.contains(&key.as_str()) && !value.is_empty() {
            labels.insert((format!("{ANALYSIS_PREFIX}{key}"), value.clone()));
        }
    }
    for (key, value) in &conversation.metafields {
        if !value.is_empty() && value.len() <= LABEL_VALUE_BYTES {
            labels.insert((format!("{METAFIELDS_PREFIX}{key}"), value.clone()));
        }
    }

    Some(Fact {
        workspace_id: workspace_id.to_owned(),
        conversation_id: conversation.id.clone(),
        channel: enum_value(conversation.channel().as_str_name(), "CHANNEL_"),
        status: enum_value(conversation.status().as_str_name(), "CONVERSATION_STATUS_"),
        assistant: conversation
            .metafields
            .get(ASSISTANT_METAFIELD)
            .cloned()
            .unwrap_or_default(),
        sentiment: enum_value(analysis.sentiment().as_str_name(), "SENTIMENT_"),
        request_type: level(analysis_keys::REQUEST_TYPE).unwrap_or_default(),
        urgency: level(analysis_keys::URGENCY).unwrap_or_default(),
        customer_effort: level(analysis_keys::CUSTOMER_EFFORT).unwrap_or_default(),
        churn_risk: level(analysis_keys::CHURN_RISK).unwrap_or_default(),
        knowledge_gap: custom
            .get(analysis_keys::KNOWLEDGE_GAP)
            .cloned()
            .unwrap_or_default(),
        resolution,
        messages: i64::try_from(conversation.message_count).unwrap_or(i64::MAX),
        created_at: millis(conversation.created_at.as_ref()),
        updated_at,
        history,
        labels,
    })
}

/// A conversation's topics: the analysis' `topics`, its `topic`, and a comma-separated
/// `topics` custom field, trimmed, lowercased, without repeats, at most [`TOPICS_MAX`].
fn topics(topic: &str, listed: &[String], custom: &HashMap<String, String>) -> Vec<String> {
    let from_custom = custom
        .get(analysis_keys::TOPICS)
        .map(|t| t.split(',').collect::<Vec<_>>())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    std::iter::once(topic)
        .chain(listed.iter().map(String::as_str))
        .chain(from_custom)
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty() && t.len() <= LABEL_VALUE_BYTES)
        .filter(|t| seen.insert(t.clone()))
        .take(TOPICS_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use switchboard_proto::events::v1::{Analysis, Assignment, Channel, Sentiment};

    use super::*;

    fn at(ms: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: ms / 1000,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    fn conversation(version: u64, status: ConversationStatus, updated: i64) -> Conversation {
        Conversation {
            id: "conv_1".into(),
            channel: Channel::Whatsapp as i32,
            status: status as i32,
            version,
            created_at: at(1_000),
            updated_at: at(updated),
            metafields: [("assistant_id".to_owned(), "asst_1".to_owned())].into(),
            ..Default::default()
        }
    }

    fn message(author: Author, ms: i64) -> Message {
        Message {
            author: author as i32,
            created_at: at(ms),
            ..Default::default()
        }
    }

    #[test]
    fn the_first_answer_after_the_customer_is_the_first_response() {
        let c = conversation(2, ConversationStatus::Active, 5_000);
        // An agent greeting before the customer wrote is not a response.
        let f = observe("ws", None, &c, Some(&message(Author::Agent, 1_500))).unwrap();
        assert_eq!(f.first_response_ms(), None);
        let c = conversation(3, ConversationStatus::Active, 6_000);
        let f = observe(
            "ws",
            Some(&f.history),
            &c,
            Some(&message(Author::Customer, 6_000)),
        )
        .unwrap();
        let c = conversation(4, ConversationStatus::Resolved, 9_000);
        let f = observe(
            "ws",
            Some(&f.history),
            &c,
            Some(&message(Author::Agent, 8_500)),
        )
        .unwrap();
        assert_eq!(f.first_response_ms(), Some(2_500));
        assert_eq!(f.resolution, resolution::BY_AGENT);
        assert_eq!(f.resolution_ms(), Some(8_000));
        assert_eq!(
            (f.channel.as_str(), f.status.as_str(), f.assistant.as_str()),
            ("whatsapp", "resolved", "asst_1")
        );
        // An older event changes nothing.
        assert_eq!(observe("ws", Some(&f.history), &c, None), None);
    }

    #[test]
    fn medians_come_from_bucket_counts() {
        assert_eq!(bucket(12_345), 12_000);
        assert_eq!(bucket(125_000), 120_000);
        assert_eq!(bucket(5 * 3_600_000 + 1), 5 * 3_600_000);
        assert_eq!(bucket(-5), 0);
        assert_eq!(median(vec![]), None);
        // 1, 2, 2, 9: the middle two are 2 and 2.
        assert_eq!(median(vec![(9, 1), (1, 1), (2, 2)]), Some(2));
        // 1, 3: their mean.
        assert_eq!(median(vec![(1, 1), (3, 1)]), Some(2));
        assert_eq!(median(vec![(5, 3)]), Some(5));
    }

    #[test]
    fn a_human_taking_over_is_a_handover_for_good() {
        let mut c = conversation(2, ConversationStatus::Active, 2_000);
        c.assignment = Some(Assignment {
            group: "billing".into(),
            agent: "agent_7".into(),
        });
        let f = observe("ws", None, &c, None).unwrap();
        assert_eq!(f.resolution, resolution::HANDED_OVER);
        // Unassigned and resolved later: still resolved by a human.
        let c = conversation(3, ConversationStatus::Resolved, 3_000);
        let f = observe("ws", Some(&f.history), &c, None).unwrap();
        assert_eq!(f.resolution, resolution::BY_HUMAN);
        assert!(f.resolved() && f.handed_over() && !f.agent_resolved());
    }

    #[test]
    fn analysis_becomes_dimensions_and_labels() {
        let mut c = conversation(2, ConversationStatus::Active, 2_000);
        c.analysis = Some(Analysis {
            topic: "Billing".into(),
            sentiment: Sentiment::Negative as i32,
            topics: vec!["billing".into(), "refunds".into()],
            custom: [
                ("urgency", " High "),
                ("request_type", "refund"),
                ("intent", "cancel"),
                ("resolution", "resolved_by_human"),
                ("topics", "invoices, refunds"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        });
        let f = observe("ws", None, &c, None).unwrap();
        assert_eq!(f.sentiment, "negative");
        assert_eq!(f.urgency, "high");
        assert_eq!(f.request_type, "refund");
        assert_eq!(f.resolution, resolution::BY_HUMAN);
        let labels: Vec<_> = f.labels.iter().map(|(d, v)| format!("{d}={v}")).collect();
        assert_eq!(
            labels,
            [
                "analysis.intent=cancel",
                "metafields.assistant_id=asst_1",
                "topic=billing",
                "topic=invoices",
                "topic=refunds"
            ]
        );
    }
}
