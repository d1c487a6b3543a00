//! The `switchboard.insights.v1.Insights` gRPC service: check the request envelope with
//! what the body holds that needs nothing stored (every mistake in one answer), call the
//! service, encode the answer.

mod error;

use switchboard_proto::insights::v1::insights_server::{self, InsightsServer};
use switchboard_proto::insights::v1::*;
use switchboard_runtime::requests::{current_actor, valid_prefixed_id};
use tonic::{Request, Response, Status};

pub use error::invalid;

use crate::domain::FieldViolation;
use crate::service::{self, InsightsService, now_ms};

/// The tonic service.
#[derive(Clone)]
pub struct InsightsApi {
    service: InsightsService,
}

impl InsightsApi {
    /// The API over the service's log.
    pub fn over(log: switchboard_eventlog::EventLog) -> Self {
        Self::new(InsightsService::new(log))
    }

    pub fn new(service: InsightsService) -> Self {
        Self { service }
    }

    pub fn into_server(self) -> InsightsServer<Self> {
        InsightsServer::new(self)
            .max_decoding_message_size(1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

/// Checks the workspace, the request id and the ids of a request. A bad one stops the
/// request here, with what `body` finds wrong that needs nothing stored, so every mistake
/// is named in one answer. A clean one leaves the body to the service, whose one check
/// names those mistakes beside the ones that need the store (a missing segment).
fn checked(
    workspace_id: &str,
    request_id: &str,
    ids: &[(&str, &str, &str)],
    body: impl FnOnce(&mut Vec<FieldViolation>),
) -> Result<(), Status> {
    let mut v = Vec::new();
    envelope(&mut v, workspace_id, request_id, ids);
    if v.is_empty() {
        return Ok(());
    }
    body(&mut v);
    Err(invalid(v))
}

/// Checks the workspace, the request id and the ids of a request.
fn envelope(
    v: &mut Vec<FieldViolation>,
    workspace_id: &str,
    request_id: &str,
    ids: &[(&str, &str, &str)],
) {
    if !valid_prefixed_id(workspace_id, "ws_") {
        v.push(FieldViolation::new(
            "workspace_id",
            "required: `ws_` followed by 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if request_id.len() > 128 {
        v.push(FieldViolation::new("request_id", "at most 128 bytes"));
    }
    for (field, id, prefix) in ids {
        if !valid_prefixed_id(id, prefix) {
            v.push(FieldViolation::new(
                *field,
                format!("required: `{prefix}` followed by 1 to 64 letters, digits, `_` or `-`"),
            ));
        }
    }
}

/// A request that carries nothing to check beyond its envelope.
fn nothing(_: &mut Vec<FieldViolation>) {}

/// Who acts: the gateway's caller, or the calling service itself.
fn actor() -> String {
    let actor = current_actor();
    if actor.is_empty() {
        "service".to_owned()
    } else {
        actor
    }
}

#[tonic::async_trait]
impl insights_server::Insights for InsightsApi {
    async fn list_dimensions(
        &self,
        request: Request<ListDimensionsRequest>,
    ) -> Result<Response<ListDimensionsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], nothing)?;
        Ok(Response::new(ListDimensionsResponse {
            dimensions: self.service.dimensions(&r.workspace_id).await?,
        }))
    }

    async fn get_summary(
        &self,
        request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| {
            service::check_summary(r.filter.as_ref(), v);
        })?;
        Ok(Response::new(
            self.service
                .summary(&r.workspace_id, r.filter.as_ref())
                .await?,
        ))
    }

    async fn get_breakdown(
        &self,
        request: Request<BreakdownRequest>,
    ) -> Result<Response<BreakdownResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| {
            service::check_breakdown(&r, v);
        })?;
        Ok(Response::new(self.service.breakdown(&r).await?))
    }

    async fn get_trends(
        &self,
        request: Request<TrendsRequest>,
    ) -> Result<Response<TrendsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| service::check_trends(&r, v))?;
        Ok(Response::new(self.service.trends(&r).await?))
    }

    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, &r.request_id, &[], |v| {
            service::check_create_segment(&r, v);
        })?;
        Ok(Response::new(
            self.service.create_segment(&r, &actor()).await?,
        ))
    }

    async fn get_segment(&self, request: Request<SegmentRef>) -> Result<Response<Segment>, Status> {
        let r = request.into_inner();
        checked(
            &r.workspace_id,
            "",
            &[("segment_id", &r.segment_id, "seg_")],
            nothing,
        )?;
        Ok(Response::new(
            self.service.segment(&r.workspace_id, &r.segment_id).await?,
        ))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| {
            service::check_page(r.limit, &r.cursor, v);
        })?;
        let page = self
            .service
            .segments(&r.workspace_id, r.limit, &r.cursor)
            .await?;
        Ok(Response::new(ListSegmentsResponse {
            segments: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<Segment>, Status> {
        let r = request.into_inner();
        checked(
            &r.workspace_id,
            &r.request_id,
            &[("segment_id", &r.segment_id, "seg_")],
            nothing,
        )?;
        Ok(Response::new(
            self.service
                .delete_segment(&r.workspace_id, &r.request_id, &r.segment_id, &actor())
                .await?,
        ))
    }

    async fn list_conversation_ids(
        &self,
        request: Request<ListConversationIdsRequest>,
    ) -> Result<Response<ListConversationIdsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| {
            service::check_conversation_ids(&r, v);
        })?;
        let page = self.service.conversation_ids(&r).await?;
        Ok(Response::new(ListConversationIdsResponse {
            conversation_ids: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    async fn list_findings(
        &self,
        request: Request<ListFindingsRequest>,
    ) -> Result<Response<ListFindingsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], |v| {
            service::check_page(r.limit, &r.cursor, v);
        })?;
        let page = self.service.findings(&r).await?;
        Ok(Response::new(ListFindingsResponse {
            findings: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    async fn dismiss_finding(
        &self,
        request: Request<DismissFindingRequest>,
    ) -> Result<Response<Finding>, Status> {
        let r = request.into_inner();
        checked(
            &r.workspace_id,
            &r.request_id,
            &[("finding_id", &r.finding_id, "fnd_")],
            nothing,
        )?;
        Ok(Response::new(
            self.service
                .dismiss_finding(&r.workspace_id, &r.request_id, &r.finding_id, &actor())
                .await?,
        ))
    }

    async fn detect_findings(
        &self,
        request: Request<DetectFindingsRequest>,
    ) -> Result<Response<DetectFindingsResponse>, Status> {
        let r = request.into_inner();
        checked(&r.workspace_id, "", &[], nothing)?;
        Ok(Response::new(DetectFindingsResponse {
            raised: self.service.detect(&r.workspace_id, now_ms()).await?,
        }))
    }

    async fn get_connexease_stats(
        &self,
        request: Request<ConnexeaseStatsRequest>,
    ) -> Result<Response<ConnexeaseStatsResponse>, Status> {
        use crate::store::connexease_kinds::{AGENT, CHANNEL};
        let r = request.into_inner();
        let mut v = Vec::new();
        envelope(&mut v, &r.workspace_id, "", &[]);
        let kind = match r.by.as_str() {
            "agent" => AGENT,
            "channel" => CHANNEL,
            _ => {
                v.push(FieldViolation::new("by", "`agent` or `channel`"));
                ""
            }
        };
        if !v.is_empty() {
            return Err(invalid(v));
        }
        let (rows, read_at) = self
            .service
            .store()
            .connexease_stats(&r.workspace_id, kind)
            .await
            .map_err(crate::service::ServiceError::Log)?;
        Ok(Response::new(ConnexeaseStatsResponse {
            rows,
            read_at: read_at.map(switchboard_eventlog::timestamp),
        }))
    }
}
