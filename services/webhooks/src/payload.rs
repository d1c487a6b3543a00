//! The JSON form of public events, for webhook bodies: derived from the same `.proto`
//! descriptors as the protobuf on NATS (prost-reflect's canonical JSON mapping with the
//! proto field names), so the two forms cannot drift apart.

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value, json};
use switchboard_contract::event_types::{actions, connexease, conversations};
use switchboard_eventlog::RecordedEvent;

/// The message each stored public event type carries.
const MESSAGES: &[(&str, &str)] = &[
    (
        conversations::CREATED,
        "switchboard.events.v1.ConversationCreatedEvent",
    ),
    (
        conversations::UPDATED,
        "switchboard.events.v1.ConversationUpdatedEvent",
    ),
    (
        conversations::ENDED,
        "switchboard.events.v1.ConversationEndedEvent",
    ),
    (
        conversations::MESSAGE_CREATED,
        "switchboard.events.v1.MessageCreatedEvent",
    ),
    (
        actions::EXECUTED,
        "switchboard.actions.v1.ActionExecutedEvent",
    ),
    (
        connexease::WEBHOOK_RECEIVED,
        "switchboard.connexease.v1.WebhookReceived",
    ),
    (
        connexease::STATS_READ,
        "switchboard.connexease.v1.StatsRead",
    ),
];

/// Renders stored public events as webhook bodies.
#[derive(Clone)]
pub struct PublicJson {
    pool: DescriptorPool,
    /// The public REST API's base URL (`https://api.example.com`), or empty for paths
    /// relative to it: a conversation in a body carries its `url` there.
    api_url: String,
}

impl Default for PublicJson {
    fn default() -> Self {
        Self::new()
    }
}

impl PublicJson {
    pub fn new() -> Self {
        Self {
            pool: DescriptorPool::decode(switchboard_proto::FILE_DESCRIPTOR_SET)
                .expect("the compiled descriptor set decodes"),
            api_url: String::new(),
        }
    }

    /// Conversations in bodies link to the REST API at `api_url` (no trailing slash).
    pub fn with_api_url(mut self, api_url: &str) -> Self {
        self.api_url = api_url.trim_end_matches('/').to_owned();
        self
    }

    /// The event's payload as JSON, or why it has none.
    pub fn data(&self, event: &RecordedEvent) -> Result<Value, String> {
        let name = MESSAGES
            .iter()
            .find(|(t, _)| *t == event.event_type)
            .map(|(_, m)| *m)
            .ok_or_else(|| format!("no JSON form for `{}`", event.event_type))?;
        let descriptor = self
            .pool
            .get_message_by_name(name)
            .ok_or_else(|| format!("`{name}` is not in the descriptor set"))?;
        let message = DynamicMessage::decode(descriptor.clone(), event.payload.as_slice())
            .map_err(|e| format!("undecodable `{}`: {e}", event.event_type))?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false)
            .stringify_64_bit_integers(false);
        let value = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| e.to_string())?;
        Ok(expand_embedded_json(value, &descriptor))
    }

    /// The webhook body: `{"type", "timestamp", "data"}`. A conversation in `data` carries
    /// its `url` in the REST API, so a receiver fetches the rest with a key.
    pub fn body(&self, public_type: &str, event: &RecordedEvent) -> Result<Value, String> {
        let mut data = self.data(event)?;
        if let Some(conversation) = data.get_mut("conversation").and_then(Value::as_object_mut)
            && let Some(id) = conversation.get("id").and_then(Value::as_str)
            && !id.is_empty()
        {
            let url = format!("{}/v1/conversations/{id}", self.api_url);
            conversation.insert("url".into(), Value::String(url));
        }
        Ok(json!({
            "type": public_type,
            "timestamp": rfc3339(event.metadata.occurred_at),
            "data": data,
        }))
    }
}

/// The message's own string fields that carry JSON (`outputs_json`, `data_json`, by the
/// schema) become that JSON under the name without `_json`, so receivers get one document,
/// not JSON inside a string. Only fields of the schema: a map's keys (metafields) and the
/// JSON itself are customers' data and stay exactly as they were written.
fn expand_embedded_json(value: Value, message: &MessageDescriptor) -> Value {
    let Value::Object(fields) = value else {
        return value;
    };
    let mut out = Map::with_capacity(fields.len());
    for (key, value) in fields {
        let Some(field) = message.get_field_by_name(&key) else {
            out.insert(key, value);
            continue;
        };
        let value = match field.kind() {
            Kind::String if !field.is_list() => match (key.strip_suffix("_json"), &value) {
                (Some(bare), Value::String(text)) => match serde_json::from_str::<Value>(text) {
                    Ok(parsed) => {
                        out.insert(bare.to_owned(), parsed);
                        continue;
                    }
                    Err(_) => value,
                },
                _ => value,
            },
            Kind::Message(entry) if field.is_map() => {
                match (entry.map_entry_value_field().kind(), value) {
                    (Kind::Message(inner), Value::Object(entries)) => Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k, expand_embedded_json(v, &inner)))
                            .collect(),
                    ),
                    (_, value) => value,
                }
            }
            Kind::Message(inner) => match value {
                Value::Array(items) => Value::Array(
                    items
                        .into_iter()
                        .map(|item| expand_embedded_json(item, &inner))
                        .collect(),
                ),
                value => expand_embedded_json(value, &inner),
            },
            _ => value,
        };
        out.insert(key, value);
    }
    Value::Object(out)
}

/// Microseconds since the epoch as RFC 3339 with microseconds, UTC.
pub fn rfc3339(micros: i64) -> String {
    switchboard_eventlog::timestamp(micros).to_string()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use switchboard_eventlog::{Metadata, StreamRef};
    use switchboard_proto::events::v1::{
        Conversation, ConversationStatus, ConversationUpdatedEvent,
    };

    use super::*;

    #[test]
    fn conversation_updated_is_the_conversation_now_plus_what_changed() {
        let updated = ConversationUpdatedEvent {
            conversation: Some(Conversation {
                id: "conv_1".into(),
                status: ConversationStatus::Archived as i32,
                ..Default::default()
            }),
            changed_fields: vec!["status".into()],
            ..Default::default()
        };
        let event = RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream: StreamRef::new("conversation", "ws_1/conv_1"),
            stream_version: 2,
            global_position: 2,
            transaction_id: 0,
            event_type: "conversation.updated".into(),
            schema_version: 1,
            payload: updated.encode_to_vec(),
            metadata: Metadata {
                workspace_id: "ws_1".into(),
                occurred_at: 1_614_265_330_000_001,
                ..Default::default()
            },
            recorded_at: 0,
        };
        let body = PublicJson::new()
            .body("conversation.updated", &event)
            .unwrap();
        assert_eq!(body["type"], "conversation.updated");
        assert_eq!(body["timestamp"], "2021-02-25T15:02:10.000001Z");
        assert_eq!(body["data"]["conversation"]["id"], "conv_1");
        assert_eq!(
            body["data"]["conversation"]["status"],
            "CONVERSATION_STATUS_ARCHIVED"
        );
        assert_eq!(body["data"]["changed_fields"][0], "status");
        assert_eq!(
            body["data"]["conversation"]["url"], "/v1/conversations/conv_1",
            "a receiver fetches the rest from the REST API"
        );
        let absolute = PublicJson::new()
            .with_api_url("https://api.example.com/")
            .body("conversation.updated", &event)
            .unwrap();
        assert_eq!(
            absolute["data"]["conversation"]["url"],
            "https://api.example.com/v1/conversations/conv_1"
        );
    }

    fn recorded(event_type: &str, payload: Vec<u8>) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::nil(),
            stream: StreamRef::new("conversation", "ws_1/conv_1"),
            stream_version: 1,
            global_position: 1,
            transaction_id: 0,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata {
                workspace_id: "ws_1".into(),
                ..Default::default()
            },
            recorded_at: 0,
        }
    }

    #[test]
    fn json_fields_of_the_schema_are_expanded_and_customers_data_is_not() {
        use switchboard_proto::actions::v1::{ActionExecutedEvent, ExecutionResult};
        let executed = ActionExecutedEvent {
            result: Some(ExecutionResult {
                outputs_json: r#"{"order": {"total_json": "{\"x\":1}"}}"#.into(),
                ..Default::default()
            }),
        };
        let data = PublicJson::new()
            .data(&recorded("action.executed", executed.encode_to_vec()))
            .unwrap();
        // The schema's `outputs_json` is JSON; what it holds is the customer's, untouched.
        assert_eq!(
            data["result"]["outputs"],
            json!({"order": {"total_json": "{\"x\":1}"}})
        );
        assert!(data["result"].get("outputs_json").is_none());

        let updated = ConversationUpdatedEvent {
            conversation: Some(Conversation {
                id: "conv_1".into(),
                metafields: [
                    ("settings_json".to_owned(), r#"{"a":1}"#.to_owned()),
                    ("note_json".to_owned(), "not json".to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let data = PublicJson::new()
            .data(&recorded("conversation.updated", updated.encode_to_vec()))
            .unwrap();
        assert_eq!(
            data["conversation"]["metafields"],
            json!({"settings_json": "{\"a\":1}", "note_json": "not json"}),
            "metafields are carried exactly as they were written"
        );
    }
}
