//! What the insights service does with other services' events: each conversation event
//! (`conversation.created`, `.updated`, `.ended`, which carry the conversation as it now
//! is and the message that changed it) becomes the conversation's row and labels; each
//! flow run start records the flow its conversation runs. Both write in the transaction
//! that marks the event processed, so a redelivery changes nothing.

use async_trait::async_trait;
use switchboard_contract::event_types::{conversations as conversation_events, flow_runs};
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Tx};
use switchboard_proto::events::v1::{
    ConversationCreatedEvent, ConversationEndedEvent, ConversationUpdatedEvent,
};
use switchboard_proto::flows::v1::RunEventRecord;
use switchboard_proto::flows::v1::run_event_record::Event as Record;

use crate::domain::facts;
use crate::store;

fn retry(e: switchboard_eventlog::EventLogError) -> HandleError {
    HandleError::Retry(e.to_string())
}

fn reject(e: switchboard_eventlog::EventLogError) -> HandleError {
    HandleError::Reject(e.to_string())
}

/// Conversations' public events, into the read model.
pub struct ConversationEvents;

#[async_trait]
impl Handler for ConversationEvents {
    async fn wants(&self, event: &RecordedEvent) -> bool {
        matches!(
            event.event_type.as_str(),
            conversation_events::CREATED
                | conversation_events::UPDATED
                | conversation_events::ENDED
        )
    }

    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let (conversation, message) = match event.event_type.as_str() {
            conversation_events::CREATED => (
                event
                    .decode::<ConversationCreatedEvent>()
                    .map_err(reject)?
                    .conversation,
                None,
            ),
            conversation_events::UPDATED => {
                let updated = event.decode::<ConversationUpdatedEvent>().map_err(reject)?;
                (updated.conversation, updated.message)
            }
            conversation_events::ENDED => (
                event
                    .decode::<ConversationEndedEvent>()
                    .map_err(reject)?
                    .conversation,
                None,
            ),
            _ => return Ok(()),
        };
        let Some(conversation) = conversation else {
            return Ok(());
        };
        let ws = event.workspace_id();
        let before = store::history(tx, ws, &conversation.id)
            .await
            .map_err(retry)?;
        if let Some(fact) = facts::observe(ws, before.as_ref(), &conversation, message.as_ref()) {
            store::write_fact(tx, &fact).await.map_err(retry)?;
        }
        Ok(())
    }
}

/// Flow runs starting: which flow each conversation runs.
pub struct FlowRuns;

#[async_trait]
impl Handler for FlowRuns {
    async fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == flow_runs::STARTED
    }

    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        // Run events are stored as `RunEventRecord`s, one step each.
        let record = event.decode::<RunEventRecord>().map_err(reject)?;
        let Some(Record::Started(started)) = record.event else {
            return Ok(());
        };
        if started.conversation_id.is_empty() || started.flow_id.is_empty() {
            return Ok(());
        }
        store::record_flow(
            tx,
            event.workspace_id(),
            &started.conversation_id,
            &started.flow_id,
        )
        .await
        .map_err(retry)
    }
}

/// Connexease's `/stats` readings: the latest kept per agent and channel.
pub struct ConnexeaseStats;

#[async_trait]
impl Handler for ConnexeaseStats {
    async fn wants(&self, event: &RecordedEvent) -> bool {
        event.event_type == switchboard_contract::event_types::connexease::STATS_READ
    }

    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let read = event
            .decode::<switchboard_proto::connexease::v1::StatsRead>()
            .map_err(reject)?;
        let read_at = read.read_at.as_ref().map_or(event.recorded_at, |t| {
            t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
        });
        store::record_connexease_stats(tx, event.workspace_id(), &read, read_at)
            .await
            .map_err(retry)
    }
}
