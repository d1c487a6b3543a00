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

use crate::domain::Violations;
use switchboard_eventlog::micros;

use crate::service::{WebhooksService, check_rotation, public_view};
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

const CURSOR_RULE: &str = "not a cursor this API returned";

/// The ids every request names: each `(field, value, prefix)` must be a plain prefixed id.
/// Pushed, not returned, so a request's other violations come back in the same answer.
fn check_ids(v: &mut Violations, ids: &[(&str, &str, &str)]) {
    for (field, value, prefix) in ids {
        if !valid_prefixed_id(value, prefix) {
            v.push(*field, format!("{ID_RULE} (`{prefix}`)"));
        }
    }
}

/// Optional id filters of a list: an empty one filters nothing; any other is checked as
/// [`check_ids`] does.
fn check_filter_ids(v: &mut Violations, ids: &[(&str, &str, &str)]) {
    let given: Vec<(&str, &str, &str)> = ids
        .iter()
        .copied()
        .filter(|(_, value, _)| !value.is_empty())
        .collect();
    check_ids(v, &given);
}

/// Ends a request's checks: every violation gathered so far, in one INVALID_ARGUMENT.
fn finish(v: Violations) -> Result<(), Status> {
    v.finish().map_err(error::invalid)
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

/// The `N` parts of a list cursor; `None` for the first page, or (with a violation
/// pushed beside the request's others) for a cursor this API did not return.
fn decode_cursor<const N: usize>(v: &mut Violations, cursor: &str) -> Option<[String; N]> {
    if cursor.is_empty() {
        return None;
    }
    let parts = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let fields: Vec<String> = text.split('\n').map(str::to_owned).collect();
            <[String; N]>::try_from(fields).ok()
        });
    if parts.is_none() {
        v.push("cursor", CURSOR_RULE);
    }
    parts
}

/// A number a cursor holds; a violation (and `None`) when it holds none.
fn number(v: &mut Violations, text: &str) -> Option<i64> {
    let parsed = text.parse::<i64>().ok();
    if parsed.is_none() {
        v.push("cursor", CURSOR_RULE);
    }
    parsed
}

/// Where a page of messages starts: before `(created_at, message_id)`.
fn messages_cursor(v: &mut Violations, cursor: &str) -> Option<(i64, String)> {
    let [at, id] = decode_cursor::<2>(v, cursor)?;
    Some((number(v, &at)?, id))
}

/// Where a page of attempts starts: before `(attempted_at, message_id, attempt)`.
fn attempts_cursor(v: &mut Violations, cursor: &str) -> Option<(i64, String, i64)> {
    let [at, id, attempt] = decode_cursor::<3>(v, cursor)?;
    Some((number(v, &at)?, id, number(v, &attempt)?))
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
        let mut v = Violations::default();
        check_ids(&mut v, &[("workspace_id", &r.workspace_id, "ws_")]);
        self.service.check_create(&mut v, &r);
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(
            &mut v,
            &[
                ("workspace_id", &r.workspace_id, "ws_"),
                ("endpoint_id", &r.endpoint_id, "ep_"),
            ],
        );
        self.service.check_update(&mut v, &r);
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(&mut v, &[("workspace_id", &r.workspace_id, "ws_")]);
        let after = decode_cursor::<1>(&mut v, &r.cursor)
            .map(|[after]| after)
            .unwrap_or_default();
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(
            &mut v,
            &[
                ("workspace_id", &r.workspace_id, "ws_"),
                ("endpoint_id", &r.endpoint_id, "ep_"),
            ],
        );
        check_rotation(&mut v, &r);
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(&mut v, &[("workspace_id", &r.workspace_id, "ws_")]);
        check_filter_ids(&mut v, &[("endpoint_id", &r.endpoint_id, "ep_")]);
        let before = messages_cursor(&mut v, &r.cursor);
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(&mut v, &[("workspace_id", &r.workspace_id, "ws_")]);
        check_filter_ids(
            &mut v,
            &[
                ("endpoint_id", &r.endpoint_id, "ep_"),
                ("message_id", &r.message_id, "whmsg_"),
            ],
        );
        let before = attempts_cursor(&mut v, &r.cursor);
        finish(v)?;
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
        let mut v = Violations::default();
        check_ids(
            &mut v,
            &[
                ("workspace_id", &r.workspace_id, "ws_"),
                ("endpoint_id", &r.endpoint_id, "ep_"),
            ],
        );
        let Some(since) = r.since.as_ref().map(micros) else {
            // Answered with the ids' violations, if any, in the same answer.
            v.push(
                "since",
                "required: recover failed messages created since when",
            );
            return Err(error::invalid(v.0));
        };
        finish(v)?;
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
                    since,
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
        let mut v = Violations::default();
        check_ids(
            &mut v,
            &[
                ("workspace_id", &r.workspace_id, "ws_"),
                ("endpoint_id", &r.endpoint_id, "ep_"),
            ],
        );
        finish(v)?;
        Ok(r)
    }

    fn message_ref(&self, request: Request<MessageRef>) -> Result<MessageRef, Status> {
        let r = request.into_inner();
        let mut v = Violations::default();
        check_ids(
            &mut v,
            &[
                ("workspace_id", &r.workspace_id, "ws_"),
                ("message_id", &r.message_id, "whmsg_"),
            ],
        );
        finish(v)?;
        Ok(r)
    }
}
