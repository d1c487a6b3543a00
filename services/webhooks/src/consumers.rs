//! What the webhooks service does with other services' events: every public event
//! (`events.<workspace>.<type>` on NATS, or the same events tailed from the producers' logs
//! in `dev`) becomes one message per endpoint that wants it.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_eventlog::{HandleError, Handler, RecordedEvent, Router, Tx};

use crate::service::{FanOutError, WebhooksService};

/// Fans out one producer's public events. `router` is the producer's own, so the public
/// type is exactly the subject the producer publishes it on.
pub struct FanOut {
    service: WebhooksService,
    router: Arc<dyn Router>,
}

impl FanOut {
    pub fn new(service: WebhooksService, router: Arc<dyn Router>) -> Self {
        Self { service, router }
    }

    /// `conversation.updated` for `events.ws_1.conversation.updated`; `None` for events
    /// that are not public.
    pub fn public_type(&self, event: &RecordedEvent) -> Option<String> {
        let subject = self.router.subject(event)?;
        switchboard_contract::subjects::public_event_type(&subject).map(str::to_owned)
    }
}

#[async_trait]
impl Handler for FanOut {
    async fn handle(&self, tx: &mut Tx<'_>, event: &RecordedEvent) -> Result<(), HandleError> {
        let Some(public_type) = self.public_type(event) else {
            return Ok(());
        };
        match self.service.fan_out(tx, &public_type, event).await {
            Ok(_) => Ok(()),
            Err(FanOutError::Unrenderable(reason)) => Err(HandleError::Reject(reason)),
            Err(FanOutError::Log(e)) => Err(HandleError::Retry(e.to_string())),
        }
    }

    /// Only events some endpoint of the workspace wants: the rest (most `message.created`
    /// in a workspace that subscribes to `conversation.*`, say) cost a read, not a commit.
    async fn wants(&self, event: &RecordedEvent) -> bool {
        let Some(public_type) = self.public_type(event) else {
            return false;
        };
        match self
            .service
            .store()
            .live_endpoints(event.workspace_id())
            .await
        {
            Ok(endpoints) => endpoints
                .iter()
                .any(|e| crate::domain::wants(&e.event_types, &public_type)),
            // Let the handler meet the error and retry.
            Err(_) => true,
        }
    }
}
