//! The `switchboard.webhooks.v1.Webhooks` gRPC service.

mod error;

use std::pin::Pin;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::Stream;
use switchboard_proto::webhooks::v1::webhooks_server::{self, WebhooksServer};
use switchboard_proto::webhooks::v1::*;
use switchboard_runtime::requests::valid_prefixed_id;
use tonic::{Request, Response, Status};

use crate::domain::FieldViolation;
use switchboard_eventlog::micros;

use crate::service::{WebhooksService, public_view};
use crate::store::{AttemptFilter, MessageFilter};

#[derive(Clone)]
pub struct WebhooksApi {
    service: WebhooksService,
}

impl WebhooksApi {
    pub fn new(service: WebhooksService) -> Self {
        Self { service }
    }

    pub fn into_server(self) -> WebhooksServer<Self> {
        WebhooksServer::new(self).max_decoding_message_size(256 * 1024)
    }
}

const ID_RULE: &str = "required: the prefix followed by 1 to 64 letters, digits, `_` or `-`";

/// The ids every request names: each `(field, value, prefix)` must be a plain prefixed id.
fn check_ids(ids: &[(&str, &str, &str)]) -> Result<(), Status> {
    let violations: Vec<FieldViolation> = ids
        .iter()
        .filter(|(_, value, prefix)| !valid_prefixed_id(value, prefix))
        .map(|(field, _, prefix)| FieldViolation {
            field: (*field).to_owned(),
            description: format!("{ID_RULE} (`{prefix}`)"),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(error::invalid(violations))
    }
}

fn page_size(requested: u32) -> u32 {
    match requested {
        0 => 50,
        n => n.min(500),
    }
}

fn encode_cursor(parts: &[String]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

fn decode_cursor(cursor: &str, parts: usize) -> Result<Option<Vec<String>>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || {
        error::invalid(vec![FieldViolation {
            field: "cursor".into(),
            description: "not a cursor this API returned".into(),
        }])
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let fields: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if fields.len() != parts {
        return Err(bad());
    }
    Ok(Some(fields))
}

fn number(text: &str) -> Result<i64, Status> {
    text.parse().map_err(|_| {
        error::invalid(vec![FieldViolation {
            field: "cursor".into(),
            description: "not a cursor this API returned".into(),
        }])
    })
}

fn time_or(t: Option<prost_types::Timestamp>, default: i64) -> i64 {
    t.map(|t| micros(&t)).unwrap_or(default)
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<RecoverProgress, Status>> + Send>>;

#[tonic::async_trait]
impl webhooks_server::Webhooks for WebhooksApi {
    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<EndpointWithSecret>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        let (endpoint, secret) = self.service.create_endpoint(r).await?;
        Ok(Response::new(EndpointWithSecret {
            endpoint: Some(public_view(endpoint)),
            secret,
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<UpdateEndpointRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("endpoint_id", &r.endpoint_id, "ep_"),
        ])?;
        Ok(Response::new(public_view(
            self.service.update_endpoint(r).await?,
        )))
    }

    async fn get_endpoint(
        &self,
        request: Request<EndpointRef>,
    ) -> Result<Response<Endpoint>, Status> {
        let r = self.endpoint_ref(request)?;
        let (endpoint, _) = self
            .service
            .endpoint(&r.workspace_id, &r.endpoint_id)
            .await?;
        Ok(Response::new(public_view(endpoint)))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        let after = decode_cursor(&r.cursor, 1)?
            .map(|mut p| p.remove(0))
            .unwrap_or_default();
        let size = page_size(r.page_size);
        let ids = self
            .service
            .store()
            .endpoint_ids(&r.workspace_id, &after, size)
            .await
            .map_err(crate::service::ServiceError::from)?;
        let mut endpoints = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some((e, _)) = self.service.load_endpoint(&r.workspace_id, id).await? {
                endpoints.push(public_view(e));
            }
        }
        let next_cursor = if ids.len() as u32 == size {
            encode_cursor(&[ids.last().cloned().unwrap_or_default()])
        } else {
            String::new()
        };
        Ok(Response::new(ListEndpointsResponse {
            endpoints,
            next_cursor,
        }))
    }

    async fn delete_endpoint(
        &self,
        request: Request<EndpointRef>,
    ) -> Result<Response<Endpoint>, Status> {
        let r = self.endpoint_ref(request)?;
        Ok(Response::new(public_view(
            self.service
                .delete_endpoint(&r.workspace_id, &r.endpoint_id)
                .await?,
        )))
    }

    async fn enable_endpoint(
        &self,
        request: Request<EndpointRef>,
    ) -> Result<Response<Endpoint>, Status> {
        let r = self.endpoint_ref(request)?;
        Ok(Response::new(public_view(
            self.service
                .set_enabled(&r.workspace_id, &r.endpoint_id, true, "")
                .await?,
        )))
    }

    async fn disable_endpoint(
        &self,
        request: Request<EndpointRef>,
    ) -> Result<Response<Endpoint>, Status> {
        let r = self.endpoint_ref(request)?;
        Ok(Response::new(public_view(
            self.service
                .set_enabled(&r.workspace_id, &r.endpoint_id, false, "api")
                .await?,
        )))
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Result<Response<EndpointWithSecret>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("endpoint_id", &r.endpoint_id, "ep_"),
        ])?;
        let (endpoint, secret) = self.service.rotate_secret(r).await?;
        Ok(Response::new(EndpointWithSecret {
            endpoint: Some(public_view(endpoint)),
            secret,
        }))
    }

    async fn get_endpoint_secret(
        &self,
        request: Request<EndpointRef>,
    ) -> Result<Response<EndpointSecret>, Status> {
        let r = self.endpoint_ref(request)?;
        let (endpoint, _) = self
            .service
            .endpoint(&r.workspace_id, &r.endpoint_id)
            .await?;
        let mut secrets = self.service.signing_secrets(&endpoint)?;
        let secret = if secrets.is_empty() {
            String::new()
        } else {
            secrets.remove(0)
        };
        Ok(Response::new(EndpointSecret {
            secret,
            previous: secrets,
        }))
    }

    async fn get_message(
        &self,
        request: Request<MessageRef>,
    ) -> Result<Response<WebhookMessage>, Status> {
        let r = self.message_ref(request)?;
        Ok(Response::new(
            self.service.message(&r.workspace_id, &r.message_id).await?,
        ))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        if !r.endpoint_id.is_empty() {
            check_ids(&[("endpoint_id", &r.endpoint_id, "ep_")])?;
        }
        let before = match decode_cursor(&r.cursor, 2)? {
            Some(p) => Some((number(&p[0])?, p[1].clone())),
            None => None,
        };
        let filter = MessageFilter {
            endpoint_id: r.endpoint_id.clone(),
            status: r.status,
            since: time_or(r.since, 0),
            until: time_or(r.until, 0),
        };
        let size = page_size(r.page_size);
        let messages = self
            .service
            .store()
            .messages(&r.workspace_id, &filter, before, size)
            .await
            .map_err(crate::service::ServiceError::from)?;
        let next_cursor = match messages.last() {
            Some(last) if messages.len() as u32 == size => {
                encode_cursor(&[time_or(last.created_at, 0).to_string(), last.id.clone()])
            }
            _ => String::new(),
        };
        Ok(Response::new(ListMessagesResponse {
            messages,
            next_cursor,
        }))
    }

    async fn list_attempts(
        &self,
        request: Request<ListAttemptsRequest>,
    ) -> Result<Response<ListAttemptsResponse>, Status> {
        let r = request.into_inner();
        check_ids(&[("workspace_id", &r.workspace_id, "ws_")])?;
        if !r.endpoint_id.is_empty() {
            check_ids(&[("endpoint_id", &r.endpoint_id, "ep_")])?;
        }
        if !r.message_id.is_empty() {
            check_ids(&[("message_id", &r.message_id, "whmsg_")])?;
        }
        let before = match decode_cursor(&r.cursor, 3)? {
            Some(p) => Some((number(&p[0])?, p[1].clone(), number(&p[2])?)),
            None => None,
        };
        let filter = AttemptFilter {
            endpoint_id: r.endpoint_id.clone(),
            message_id: r.message_id.clone(),
            outcome: r.outcome,
            since: time_or(r.since, 0),
            until: time_or(r.until, 0),
        };
        let size = page_size(r.page_size);
        let attempts = self
            .service
            .store()
            .attempts(&r.workspace_id, &filter, before, size)
            .await
            .map_err(crate::service::ServiceError::from)?;
        let next_cursor = match attempts.last() {
            Some(last) if attempts.len() as u32 == size => encode_cursor(&[
                time_or(last.attempted_at, 0).to_string(),
                last.message_id.clone(),
                last.attempt.to_string(),
            ]),
            _ => String::new(),
        };
        Ok(Response::new(ListAttemptsResponse {
            attempts,
            next_cursor,
        }))
    }

    async fn resend_message(
        &self,
        request: Request<MessageRef>,
    ) -> Result<Response<WebhookMessage>, Status> {
        let r = self.message_ref(request)?;
        self.service
            .resend(&r.workspace_id, &r.message_id, "")
            .await?;
        Ok(Response::new(
            self.service.message(&r.workspace_id, &r.message_id).await?,
        ))
    }

    type RecoverFailedStream = ProgressStream;

    async fn recover_failed(
        &self,
        request: Request<RecoverFailedRequest>,
    ) -> Result<Response<Self::RecoverFailedStream>, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("endpoint_id", &r.endpoint_id, "ep_"),
        ])?;
        let Some(since) = r.since else {
            return Err(error::invalid(vec![FieldViolation {
                field: "since".into(),
                description: "required: recover failed messages created since when".into(),
            }]));
        };
        // Refuse an unknown endpoint before the stream starts.
        self.service
            .endpoint(&r.workspace_id, &r.endpoint_id)
            .await?;
        // Unbounded: one update per page of 500, so its size is bounded by the work itself.
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let service = self.service.clone();
        tokio::spawn(async move {
            let dry_run = r.dry_run;
            let progress_sender = sender.clone();
            let mut progress = move |total, done, message_ids| {
                let _ = progress_sender.send(Ok(RecoverProgress {
                    total,
                    done,
                    dry_run,
                    finished: false,
                    message_ids,
                }));
            };
            let result = service
                .recover(
                    &r.workspace_id,
                    &r.endpoint_id,
                    micros(&since),
                    dry_run,
                    &mut progress,
                )
                .await;
            let last = match result {
                Ok(done) => Ok(RecoverProgress {
                    total: done,
                    done,
                    dry_run,
                    finished: true,
                    message_ids: vec![],
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = sender.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(receiver),
        )))
    }
}

impl WebhooksApi {
    fn endpoint_ref(&self, request: Request<EndpointRef>) -> Result<EndpointRef, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("endpoint_id", &r.endpoint_id, "ep_"),
        ])?;
        Ok(r)
    }

    fn message_ref(&self, request: Request<MessageRef>) -> Result<MessageRef, Status> {
        let r = request.into_inner();
        check_ids(&[
            ("workspace_id", &r.workspace_id, "ws_"),
            ("message_id", &r.message_id, "whmsg_"),
        ])?;
        Ok(r)
    }
}
