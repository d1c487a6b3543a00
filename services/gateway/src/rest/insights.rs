//! `/v1/insights`: the classified, analysed view of the workspace's conversations, from the
//! insights service. Questions (`summary`, `breakdown`, `trends`) take one filter, the same
//! for all three: a window of creation times (`from`, `to`; the last 30 days by default),
//! a saved segment, and per dimension the values it may have, comma-separated
//! (`sentiment=negative,mixed`). Answers are the service's messages as JSON.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use switchboard_proto::insights::v1 as pb;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Json, Path, Query};
use super::problem::{ApiError, Problem};
use super::proto_json::{self, proto_schema};
use super::{AppState, List, RequestKey, cursor_of, page, page_limit, parse_time};
use crate::domain::Access;
use crate::service::Caller;

const RESOURCE: &str = "insights";

proto_schema!(
    /// Every measure over the filtered conversations, and over the window before.
    SummaryJson = "switchboard.insights.v1.SummaryResponse" as "InsightsSummary",
    omit [],
    strict = false
);
proto_schema!(
    /// The measures grouped by one or two dimensions.
    BreakdownJson = "switchboard.insights.v1.BreakdownResponse" as "InsightsBreakdown",
    omit [],
    strict = false
);
proto_schema!(
    /// The measures per bucket of time.
    TrendsJson = "switchboard.insights.v1.TrendsResponse" as "InsightsTrends",
    omit [],
    strict = false
);
proto_schema!(
    /// A dimension conversations are classified by.
    DimensionJson = "switchboard.insights.v1.Dimension" as "InsightsDimension",
    omit [],
    strict = false
);
proto_schema!(
    /// A saved filter.
    SegmentJson = "switchboard.insights.v1.Segment" as "Segment",
    omit [],
    strict = false
);
proto_schema!(
    /// A segment to save: conditions (a dimension and the values it may have, ANDed),
    /// and a fixed (`from`, `to`) or moving (`last_days`) window, or none.
    SegmentInput = "switchboard.insights.v1.CreateSegmentRequest" as "SegmentInput",
    omit ["workspace_id", "request_id"],
    strict = true
);
proto_schema!(
    /// A pattern worth a look.
    FindingJson = "switchboard.insights.v1.Finding" as "Finding",
    omit [],
    strict = false
);
proto_schema!(
    /// What a detection run raised.
    DetectedJson = "switchboard.insights.v1.DetectFindingsResponse" as "DetectedFindings",
    omit [],
    strict = false
);

proto_schema!(
    /// Connexease's response times and counters by agent or by channel, as its `/stats`
    /// last said.
    ConnexeaseStatsJson = "switchboard.insights.v1.ConnexeaseStatsResponse" as "ConnexeaseStats",
    omit [],
    strict = false
);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dimensions))
        .routes(routes!(summary))
        .routes(routes!(breakdown))
        .routes(routes!(trends))
        .routes(routes!(list_segments, create_segment))
        .routes(routes!(get_segment, delete_segment))
        .routes(routes!(list_findings))
        .routes(routes!(dismiss_finding))
        .routes(routes!(detect_findings))
        .routes(routes!(connexease_stats))
}

/// The filter's dimensions as query parameters, in this order.
const DIMENSION_PARAMS: [&str; 13] = [
    "channel",
    "status",
    "assistant",
    "flow",
    "topic",
    "sentiment",
    "request_type",
    "urgency",
    "customer_effort",
    "churn_risk",
    "resolution",
    "resolved",
    "knowledge_gap",
];

/// Declares a query-parameter struct with the filter's parameters and `$extra` ones.
macro_rules! with_filter {
    ($(#[$doc:meta])* $name:ident { $($(#[$field_doc:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Deserialize, IntoParams)]
        #[into_params(parameter_in = Query)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Conversations created at or after this time (RFC 3339).
            pub from: Option<String>,
            /// Conversations created before this time (RFC 3339).
            pub to: Option<String>,
            /// A saved segment whose conditions (and window) apply too.
            pub segment_id: Option<String>,
            /// Channels, comma-separated (`whatsapp,api`).
            pub channel: Option<String>,
            /// Statuses, comma-separated.
            pub status: Option<String>,
            /// Assistant ids, comma-separated.
            pub assistant: Option<String>,
            /// Flow ids, comma-separated.
            pub flow: Option<String>,
            /// Topics, comma-separated (any of them).
            pub topic: Option<String>,
            /// Sentiments, comma-separated (`negative,mixed`).
            pub sentiment: Option<String>,
            /// Request types, comma-separated.
            pub request_type: Option<String>,
            /// `low`, `medium`, `high`, comma-separated.
            pub urgency: Option<String>,
            /// `low`, `medium`, `high`, comma-separated.
            pub customer_effort: Option<String>,
            /// `low`, `medium`, `high`, comma-separated.
            pub churn_risk: Option<String>,
            /// `resolved_by_agent`, `handed_over`, `resolved_by_human`, `unresolved`.
            pub resolution: Option<String>,
            /// `true` or `false`.
            pub resolved: Option<String>,
            /// Knowledge gaps, comma-separated.
            pub knowledge_gap: Option<String>,
            /// Custom analysis fields as `key:value`, comma-separated (`intent:cancel`).
            pub analysis: Option<String>,
            /// Metafields as `key:value`, comma-separated (`plan:pro,plan:team`).
            pub metafields: Option<String>,
            $($(#[$field_doc])* pub $field: $ty,)*
        }

        impl $name {
            /// The filter these parameters make, and each condition's parameter name.
            fn filter(&self) -> Result<(pb::Filter, Vec<&'static str>), ApiError> {
                let dimensions = [
                    &self.channel, &self.status, &self.assistant, &self.flow, &self.topic,
                    &self.sentiment, &self.request_type, &self.urgency, &self.customer_effort,
                    &self.churn_risk, &self.resolution, &self.resolved, &self.knowledge_gap,
                ];
                build_filter(
                    (&self.from, &self.to, &self.segment_id),
                    &dimensions,
                    (&self.analysis, &self.metafields),
                )
            }
        }
    };
}

fn split(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

fn build_filter(
    (from, to, segment_id): (&Option<String>, &Option<String>, &Option<String>),
    dimensions: &[&Option<String>; 13],
    (analysis, metafields): (&Option<String>, &Option<String>),
) -> Result<(pb::Filter, Vec<&'static str>), ApiError> {
    let mut filter = pb::Filter {
        from: from
            .as_deref()
            .map(|v| parse_time("query.from", v))
            .transpose()?,
        to: to
            .as_deref()
            .map(|v| parse_time("query.to", v))
            .transpose()?,
        segment_id: segment_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut names = Vec::new();
    for (name, value) in DIMENSION_PARAMS.iter().zip(dimensions) {
        if let Some(value) = value {
            filter.conditions.push(pb::Condition {
                dimension: (*name).to_owned(),
                values: split(value),
            });
            names.push(*name);
        }
    }
    for (name, prefix, value) in [
        ("analysis", "analysis.", analysis),
        ("metafields", "metafields.", metafields),
    ] {
        let Some(value) = value else { continue };
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in split(value) {
            let Some((key, value)) = pair.split_once(':') else {
                return Err(ApiError::field(
                    format!("query.{name}"),
                    format!("`key:value` pairs, comma-separated; `{pair}` has no `:`"),
                ));
            };
            by_key
                .entry(format!("{prefix}{}", key.trim()))
                .or_default()
                .push(value.trim().to_owned());
        }
        for (dimension, values) in by_key {
            filter.conditions.push(pb::Condition { dimension, values });
            names.push(name);
        }
    }
    Ok((filter, names))
}

/// Metafields are the conversations' own data: filtering or grouping by them needs the
/// right to read conversations, not only insights.
fn check_metafields<'a>(
    caller: &Caller,
    dimensions: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    if dimensions.into_iter().any(|d| d.starts_with("metafields")) {
        caller.require("conversations", Access::Read)?;
    }
    Ok(())
}

/// The insights service's field names, as this API's parameters: `extra` first (a prefix
/// of theirs and our parameter), then the filter's conditions (`conditions[i]` is the
/// parameter that made condition `i`), then any other `filter.<name>` as `query.<name>`.
pub(super) fn renamed(
    mut error: ApiError,
    conditions: &[&str],
    extra: &[(&str, &str)],
) -> ApiError {
    for e in &mut error.errors {
        let field = e.field.clone();
        e.field =
            if let Some((_, ours)) = extra.iter().find(|(theirs, _)| field.starts_with(theirs)) {
                format!("query.{ours}")
            } else if field == "filter.conditions" {
                "query".to_owned()
            } else if let Some(rest) = field.strip_prefix("filter.conditions[") {
                let index: Option<usize> = rest.split(']').next().and_then(|i| i.parse().ok());
                index
                    .and_then(|i| conditions.get(i))
                    .map_or_else(|| "query".to_owned(), |n| format!("query.{n}"))
            } else if let Some(rest) = field.strip_prefix("filter.") {
                format!("query.{rest}")
            } else {
                field
            };
    }
    error
}

with_filter!(
    /// Which conversations a summary is about.
    SummaryQuery {}
);

with_filter!(
    /// A breakdown: its dimensions and filter.
    BreakdownQuery {
        /// One or two dimensions, comma-separated (`topic` or `topic,sentiment`; also
        /// `analysis.<key>`, `metafields.<key>`).
        pub by: String,
        /// Values kept per dimension (1 to 50, default 10); the rest are "other".
        pub top: Option<u32>,
    }
);

with_filter!(
    /// A trend: its interval, time zone and filter.
    TrendsQuery {
        /// `hour`, `day` (default), `week` (from Monday) or `month`.
        pub interval: Option<String>,
        /// An IANA time zone (default `UTC`).
        pub time_zone: Option<String>,
        /// `previous`: also the window of the same length just before.
        pub compare: Option<String>,
    }
);

fn answer(name: &str, message: &impl prost::Message) -> Response {
    axum::Json(proto_json::to_json(name, message)).into_response()
}

/// The dimensions a filter, breakdown or segment can use, with their known values.
#[utoipa::path(
    get, path = "/insights/dimensions", tag = "insights",
    responses(
        (status = 200, description = "Every dimension", body = List<DimensionJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_dimensions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let listed = state
        .insights_for(&caller)?
        .list_dimensions(pb::ListDimensionsRequest {
            workspace_id: caller.workspace_id.clone(),
        })
        .await?;
    let may_read_conversations = caller.may("conversations", Access::Read);
    let data: Vec<Value> = listed
        .dimensions
        .into_iter()
        .map(|mut d| {
            if d.key.starts_with("metafields.") && !may_read_conversations {
                d.values.clear();
            }
            proto_json::to_json("switchboard.insights.v1.Dimension", &d)
        })
        .collect();
    Ok(page("/v1/insights/dimensions", 100, data, None))
}

/// Every measure over the filtered conversations: counts, messages, resolution, agent
/// resolution and handover rates, first-response and resolution times (mean and median),
/// with the same over the window just before.
#[utoipa::path(
    get, path = "/insights/summary", tag = "insights", params(SummaryQuery),
    responses(
        (status = 200, description = "The summary", body = SummaryJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SummaryQuery>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let (filter, names) = query.filter()?;
    check_metafields(&caller, names.iter().copied())?;
    let found = state
        .insights_for(&caller)?
        .get_summary(pb::SummaryRequest {
            workspace_id: caller.workspace_id.clone(),
            filter: Some(filter),
        })
        .await
        .map_err(|s| renamed(s.into(), &names, &[]))?;
    Ok(answer("switchboard.insights.v1.SummaryResponse", &found))
}

/// The measures grouped by one or two dimensions: the top values by conversations, the
/// rest as one "other" row. A conversation with several topics counts once per topic.
#[utoipa::path(
    get, path = "/insights/breakdown", tag = "insights", params(BreakdownQuery),
    responses(
        (status = 200, description = "The breakdown", body = BreakdownJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn breakdown(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<BreakdownQuery>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let (filter, names) = query.filter()?;
    let by = split(&query.by);
    check_metafields(
        &caller,
        names.iter().copied().chain(by.iter().map(String::as_str)),
    )?;
    let found = state
        .insights_for(&caller)?
        .get_breakdown(pb::BreakdownRequest {
            workspace_id: caller.workspace_id.clone(),
            filter: Some(filter),
            dimensions: by,
            top: query.top.unwrap_or(0),
        })
        .await
        .map_err(|s| renamed(s.into(), &names, &[("dimensions", "by"), ("top", "top")]))?;
    Ok(answer("switchboard.insights.v1.BreakdownResponse", &found))
}

/// The measures per hour, day, week or month of local time in a time zone, empty buckets
/// as zeros; with `compare=previous`, the window before too.
#[utoipa::path(
    get, path = "/insights/trends", tag = "insights", params(TrendsQuery),
    responses(
        (status = 200, description = "The trend", body = TrendsJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn trends(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TrendsQuery>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let (filter, names) = query.filter()?;
    check_metafields(&caller, names.iter().copied())?;
    let compare_previous = match query.compare.as_deref() {
        None | Some("") => false,
        Some("previous") => true,
        Some(_) => {
            return Err(ApiError::field(
                "query.compare",
                "`previous`, or leave it out",
            ));
        }
    };
    let found = state
        .insights_for(&caller)?
        .get_trends(pb::TrendsRequest {
            workspace_id: caller.workspace_id.clone(),
            filter: Some(filter),
            interval: query.interval.clone().unwrap_or_default(),
            time_zone: query.time_zone.clone().unwrap_or_default(),
            compare_previous,
        })
        .await
        .map_err(|s| {
            renamed(
                s.into(),
                &names,
                &[("interval", "interval"), ("time_zone", "time_zone")],
            )
        })?;
    Ok(answer("switchboard.insights.v1.TrendsResponse", &found))
}

/// Paging of segments and findings.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FindingsPage {
    /// Dismissed findings too.
    pub include_dismissed: Option<bool>,
    /// Items per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, example = 20)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists the saved segments, newest first.
#[utoipa::path(
    get, path = "/insights/segments", tag = "insights", params(super::Page),
    responses(
        (status = 200, description = "One page of segments", body = List<SegmentJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    Query(page_of): Query<super::Page>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_of.limit()?;
    let listed = state
        .insights_for(&caller)?
        .list_segments(pb::ListSegmentsRequest {
            workspace_id: caller.workspace_id.clone(),
            limit,
            cursor: page_of.cursor.unwrap_or_default(),
        })
        .await
        .map_err(|s| renamed(s.into(), &[], &[("cursor", "cursor")]))?;
    let data: Vec<Value> = listed
        .segments
        .iter()
        .map(|s| proto_json::to_json("switchboard.insights.v1.Segment", s))
        .collect();
    let next = cursor_of(listed.next_cursor);
    Ok(page("/v1/insights/segments", limit, data, next))
}

/// Saves a segment: a filter to ask questions over (`segment_id`) and to list its
/// conversations (`/v1/conversations?segment_id=`).
#[utoipa::path(
    post, path = "/insights/segments", tag = "insights", request_body = SegmentInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 201, description = "Created", body = SegmentJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let mut request: pb::CreateSegmentRequest = proto_json::from_json(
        "switchboard.insights.v1.CreateSegmentRequest",
        body,
        &["workspace_id", "request_id"],
    )?;
    check_metafields(
        &caller,
        request.conditions.iter().map(|c| c.dimension.as_str()),
    )?;
    request.workspace_id = caller.workspace_id.clone();
    request.request_id = request_id;
    let segment = state.insights_for(&caller)?.create_segment(request).await?;
    let location = format!("/v1/insights/segments/{}", segment.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, location)],
        axum::Json(proto_json::to_json(
            "switchboard.insights.v1.Segment",
            &segment,
        )),
    )
        .into_response())
}

/// Gets a segment.
#[utoipa::path(
    get, path = "/insights/segments/{id}", tag = "insights",
    params(("id" = String, Path, description = "The segment's id, `seg_...`")),
    responses(
        (status = 200, description = "The segment", body = SegmentJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let segment = state
        .insights_for(&caller)?
        .get_segment(pb::SegmentRef {
            workspace_id: caller.workspace_id.clone(),
            segment_id: id,
        })
        .await
        .map_err(not_found_for_bad_id)?;
    Ok(answer("switchboard.insights.v1.Segment", &segment))
}

/// An id that cannot be one answers as a missing one does.
fn not_found_for_bad_id(status: tonic::Status) -> ApiError {
    if status.code() == tonic::Code::InvalidArgument {
        ApiError::not_found("segment or finding")
    } else {
        status.into()
    }
}

/// Deletes a segment.
#[utoipa::path(
    delete, path = "/insights/segments/{id}", tag = "insights",
    params(("id" = String, Path, description = "The segment's id, `seg_...`")),
    responses(
        (status = 200, description = "The deleted segment", body = SegmentJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_segment(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let segment = state
        .insights_for(&caller)?
        .delete_segment(pb::DeleteSegmentRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            segment_id: id,
        })
        .await
        .map_err(not_found_for_bad_id)?;
    Ok(answer("switchboard.insights.v1.Segment", &segment))
}

/// Lists findings, newest first: patterns the scheduled detection found (a value rising
/// or falling beyond its usual range, two values together more than chance).
#[utoipa::path(
    get, path = "/insights/findings", tag = "insights", params(FindingsPage),
    responses(
        (status = 200, description = "One page of findings", body = List<FindingJson>),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_findings(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<FindingsPage>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let limit = page_limit(query.limit)?;
    let listed = state
        .insights_for(&caller)?
        .list_findings(pb::ListFindingsRequest {
            workspace_id: caller.workspace_id.clone(),
            include_dismissed: query.include_dismissed.unwrap_or(false),
            limit,
            cursor: query.cursor.unwrap_or_default(),
        })
        .await
        .map_err(|s| renamed(s.into(), &[], &[("cursor", "cursor")]))?;
    let data: Vec<Value> = listed
        .findings
        .iter()
        .map(|f| proto_json::to_json("switchboard.insights.v1.Finding", f))
        .collect();
    let next = cursor_of(listed.next_cursor);
    Ok(page("/v1/insights/findings", limit, data, next))
}

/// Dismisses a finding; the same pattern is not raised again within the cool-down.
#[utoipa::path(
    post, path = "/insights/findings/{id}/dismiss", tag = "insights",
    params(
        ("id" = String, Path, description = "The finding's id, `fnd_...`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request"),
    ),
    responses(
        (status = 200, description = "The dismissed finding", body = FindingJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dismiss_finding(
    State(state): State<AppState>,
    caller: Caller,
    RequestKey(request_id): RequestKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let finding = state
        .insights_for(&caller)?
        .dismiss_finding(pb::DismissFindingRequest {
            workspace_id: caller.workspace_id.clone(),
            request_id,
            finding_id: id,
        })
        .await
        .map_err(not_found_for_bad_id)?;
    Ok(answer("switchboard.insights.v1.Finding", &finding))
}

/// Runs the detection now (it also runs on a schedule) and answers what it raised.
#[utoipa::path(
    post, path = "/insights/findings/detect", tag = "insights",
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer to the same request")),
    responses(
        (status = 200, description = "The findings this run raised", body = DetectedJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn detect_findings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Write)?;
    let raised = state
        .insights_for(&caller)?
        .detect_findings(pb::DetectFindingsRequest {
            workspace_id: caller.workspace_id.clone(),
        })
        .await?;
    Ok(answer(
        "switchboard.insights.v1.DetectFindingsResponse",
        &raised,
    ))
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConnexeaseStatsQuery {
    /// `agent` or `channel`.
    #[param(example = "agent")]
    pub by: String,
}

/// Connexease's response times (first and average, in seconds) and counters by agent or by
/// channel, as its `/stats` last said (read every 15 minutes by the connexease service);
/// empty for a workspace not connected to Connexease.
#[utoipa::path(
    get, path = "/insights/connexease/stats", tag = "insights", params(ConnexeaseStatsQuery),
    responses(
        (status = 200, description = "Slowest first response first", body = ConnexeaseStatsJson),
        (status = "4XX", description = "Refused", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn connexease_stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ConnexeaseStatsQuery>,
) -> Result<Response, ApiError> {
    caller.require(RESOURCE, Access::Read)?;
    let stats = state
        .insights_for(&caller)?
        .get_connexease_stats(pb::ConnexeaseStatsRequest {
            workspace_id: caller.workspace_id.clone(),
            by: query.by,
        })
        .await?;
    Ok(answer(
        "switchboard.insights.v1.ConnexeaseStatsResponse",
        &stats,
    ))
}
