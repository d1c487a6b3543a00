//! The JetStream streams, one per producing service. Names are prefixed per deployment
//! (`SWITCHBOARD_NATS_PREFIX`) by the relay and subscriptions, never here.

use crate::{services, subjects};

/// One producer's stream: its name, who writes it, and the subjects it captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The stream's unprefixed name (`CONVERSATIONS`).
    pub name: &'static str,
    /// The service whose relay publishes to it.
    pub producer: &'static str,
    /// Subject patterns the stream captures.
    pub subjects: &'static [&'static str],
}

pub const CONVERSATIONS: Stream = Stream {
    name: "CONVERSATIONS",
    producer: services::CONVERSATIONS,
    subjects: &[subjects::CONVERSATION_EVENTS, "events.*.message.>"],
};

pub const ACTIONS: Stream = Stream {
    name: "ACTIONS",
    producer: services::ACTIONS,
    subjects: &["events.*.action.>", "internal.actions.>"],
};

pub const CONNEXEASE: Stream = Stream {
    name: "CONNEXEASE",
    producer: services::CONNEXEASE,
    subjects: &["events.*.connexease.>"],
};

pub const WEBHOOKS: Stream = Stream {
    name: "WEBHOOKS",
    producer: services::WEBHOOKS,
    subjects: &["events.*.endpoint.>"],
};

pub const FLOWS: Stream = Stream {
    name: "FLOWS",
    producer: services::FLOWS,
    subjects: &["internal.flows.>", "events.*.flow_run.>"],
};

/// Every stream.
pub const ALL: [Stream; 5] = [CONVERSATIONS, ACTIONS, CONNEXEASE, WEBHOOKS, FLOWS];

/// The stream `producer` publishes to.
pub fn of(producer: &str) -> Option<Stream> {
    ALL.into_iter().find(|s| s.producer == producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_do_not_overlap_and_each_producer_has_one() {
        for (i, a) in ALL.iter().enumerate() {
            assert_eq!(of(a.producer), Some(*a));
            for b in &ALL[i + 1..] {
                for pa in a.subjects {
                    for pb in b.subjects {
                        assert_ne!(pa, pb, "{} and {} share {pa}", a.name, b.name);
                    }
                }
            }
        }
    }

    #[test]
    fn every_published_subject_lands_in_its_producers_stream() {
        let cases = [
            (
                CONVERSATIONS,
                subjects::public("ws_1", "conversation.updated"),
            ),
            (CONVERSATIONS, subjects::public("ws_1", "message.created")),
            (ACTIONS, subjects::public("ws_1", "action.executed")),
            (ACTIONS, subjects::ACTION_COMPLETED.to_owned()),
            (
                CONNEXEASE,
                subjects::connexease("ws_1", "conversation.archived"),
            ),
            (WEBHOOKS, subjects::public("ws_1", "endpoint.disabled")),
            (FLOWS, subjects::ACTION_REQUESTED.to_owned()),
        ];
        for (stream, subject) in cases {
            assert!(
                stream
                    .subjects
                    .iter()
                    .any(|p| subjects::matches(p, &subject)),
                "{subject} is not captured by {}",
                stream.name
            );
        }
    }
}
