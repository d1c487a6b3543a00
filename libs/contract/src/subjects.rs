//! Subjects: `events.<workspace_id>.<public event type>` for public integration events,
//! and `internal.<service>.<event>` for service-to-service requests and results.

/// Every public integration event, of any workspace.
pub const PUBLIC: &str = "events.>";

/// Flow runs asking the actions service to run an action.
pub const ACTION_REQUESTED: &str = "internal.flows.action_requested";

/// The actions service answering a flow run's request.
pub const ACTION_COMPLETED: &str = "internal.actions.action_completed";

/// Every conversation event (`conversation.created`, `.updated`, `.ended`) of any
/// workspace; not messages.
pub const CONVERSATION_EVENTS: &str = "events.*.conversation.>";

/// A flow run starting (which flow, for which conversation), for the insights service.
pub const FLOW_RUN_STARTED: &str = "internal.flows.flow_run_started";

/// Connexease's response times per channel and agent, as the connexease service reads
/// them from `/stats`: two tokens after `connexease`, so no hook's subject (one token,
/// [`connexease`]) can be taken for it.
pub const CONNEXEASE_STATS: &str = "events.*.connexease.stats.read";

/// The public event type of Connexease's `/stats` readings.
pub const CONNEXEASE_STATS_TYPE: &str = "connexease.stats.read";

const PUBLIC_PREFIX: &str = "events.";

/// `events.<workspace>.<event_type>`.
pub fn public(workspace_id: &str, event_type: &str) -> String {
    format!("{PUBLIC_PREFIX}{workspace_id}.{event_type}")
}

/// A Connexease webhook's subject: `events.<workspace>.connexease.<event>`, the dots of
/// Connexease's event name turned into `_` (`connexease.conversation_archived`).
pub fn connexease(workspace_id: &str, connexease_event: &str) -> String {
    public(
        workspace_id,
        &format!("connexease.{}", connexease_event.replace('.', "_")),
    )
}

/// The public event type of a public subject (`conversation.updated` for
/// `events.ws_1.conversation.updated`); `None` for any other subject.
pub fn public_event_type(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(PUBLIC_PREFIX)?;
    let (_workspace, event_type) = rest.split_once('.')?;
    Some(event_type)
}

/// Whether `subject` matches the NATS subject `pattern` (`*` one token, `>` the rest).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in pattern.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_nats_does() {
        assert!(matches("events.>", "events.ws_1.conversation.updated"));
        assert!(!matches("events.>", "events"));
        assert!(matches("events.*.message.>", "events.ws_1.message.created"));
        assert!(!matches(
            "events.*.message.>",
            "events.ws_1.conversation.created"
        ));
        assert!(matches(ACTION_REQUESTED, "internal.flows.action_requested"));
        assert!(!matches(
            ACTION_REQUESTED,
            "internal.flows.action_requested.x"
        ));
        assert!(!matches("internal.flows.*", "internal.flows"));
    }

    #[test]
    fn public_subjects_round_trip_their_event_type() {
        let subject = public("ws_1", "conversation.updated");
        assert_eq!(subject, "events.ws_1.conversation.updated");
        assert_eq!(public_event_type(&subject), Some("conversation.updated"));
        assert_eq!(public_event_type(ACTION_REQUESTED), None);
        assert_eq!(
            connexease("ws_1", "conversation.archived"),
            "events.ws_1.connexease.conversation_archived"
        );
    }
}
