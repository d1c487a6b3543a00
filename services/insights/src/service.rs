//! The insights service: questions over the read model (summary, breakdown, trends,
//! dimensions, conversation ids), the segments' and findings' commands, and the detection
//! that raises findings.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use switchboard_eventlog::{
    Aggregate, Command, CommandError, Decision, EventLog, EventLogError, Executed, Metadata,
    NewEvent, RecordedEvent, StreamRef, now_micros,
};
use switchboard_proto::insights::v1 as pb;

use crate::domain::buckets::{self, Interval};
use crate::domain::dimensions::{self, CATALOGUE, Clause, DAY_MS, Target, Window};
use crate::domain::facts::millis;
use crate::domain::findings::{self, Daily, Findings, PAIRS, Thresholds, Together, WATCHED};
use crate::domain::segments::{self, Segments};
use crate::domain::{DomainError, Event, FieldViolation, finish, timestamp};
use crate::store::{Group, InsightsStore, Measured, Page, Scope, decode_cursor};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Another writer kept changing the stream.
    #[error("the workspace's {0} are changing too fast; retry")]
    Contended(&'static str),
    /// This request id was used for another request.
    #[error("this request id was already used for another request")]
    RequestIdReused,
    #[error(transparent)]
    Log(#[from] EventLogError),
}

fn invalid(violations: Vec<FieldViolation>) -> ServiceError {
    ServiceError::Domain(DomainError::Invalid(violations))
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    now_micros() / 1000
}

/// Breakdown values kept per dimension unless the caller says.
pub const DEFAULT_TOP: u32 = 10;
pub const MAX_TOP: u32 = 50;

/// A filter, checked: its window (when the question needs one), and its clauses.
struct Checked {
    window: Option<Window>,
    clauses: Vec<Clause>,
}

struct SegmentsAggregate;

impl Aggregate for SegmentsAggregate {
    type State = Segments;

    fn apply(&self, state: &mut Segments, event: &RecordedEvent) -> Result<(), EventLogError> {
        if let Some(event) = Event::decode(event)? {
            segments::apply(state, &event);
        }
        Ok(())
    }
}

struct FindingsAggregate;

impl Aggregate for FindingsAggregate {
    type State = Findings;

    fn apply(&self, state: &mut Findings, event: &RecordedEvent) -> Result<(), EventLogError> {
        if let Some(event) = Event::decode(event)? {
            findings::apply(state, &event);
        }
        Ok(())
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Answers questions and runs commands.
#[derive(Clone)]
pub struct InsightsService {
    log: EventLog,
    store: InsightsStore,
    thresholds: Thresholds,
}

impl InsightsService {
    pub fn new(log: EventLog) -> Self {
        Self {
            store: InsightsStore::new(log.clone()),
            log,
            thresholds: Thresholds::default(),
        }
    }

    pub fn store(&self) -> &InsightsStore {
        &self.store
    }

    /// Checks `filter` (with its segment's conditions and window added). `needs_window`:
    /// a question over time gets the default window when none is given; a listing does not.
    async fn check(
        &self,
        workspace_id: &str,
        filter: Option<&pb::Filter>,
        needs_window: bool,
        now: i64,
        v: &mut Vec<FieldViolation>,
    ) -> Result<Checked, ServiceError> {
        let filter = filter.cloned().unwrap_or_default();
        let mut conditions = segments::conditions_of(&filter.conditions);
        let (mut from, mut to) = bounds_of(&filter);
        if !filter.segment_id.is_empty() {
            match self.store.segment(workspace_id, &filter.segment_id).await? {
                None => v.push(FieldViolation::new(
                    "filter.segment_id",
                    "no such segment in the workspace",
                )),
                Some(segment) => {
                    conditions.extend(segments::conditions_of(&segment.conditions));
                    if from.is_none() && to.is_none() {
                        if segment.last_days > 0 {
                            from = Some(now - i64::from(segment.last_days) * DAY_MS);
                            to = Some(now);
                        } else {
                            from = segment.from.as_ref().map(|t| millis(Some(t)));
                            to = segment.to.as_ref().map(|t| millis(Some(t)));
                        }
                    }
                }
            }
        }
        check_condition_count(&filter, v);
        let clauses = dimensions::clauses("filter.conditions", &conditions, v);
        let window = window_of(from, to, needs_window, now, v);
        Ok(Checked { window, clauses })
    }

    /// Every measure over `window` and `clauses`.
    async fn measure_window(
        &self,
        workspace_id: &str,
        window: Window,
        clauses: &[Clause],
    ) -> Result<pb::Measures, ServiceError> {
        let scope = Scope {
            workspace_id,
            window: Some(window),
            clauses,
        };
        let measured = self.store.measure(&scope, &[]).await?;
        Ok(measures(measured.into_values().next().unwrap_or_default()))
    }

    pub async fn summary(
        &self,
        workspace_id: &str,
        filter: Option<&pb::Filter>,
    ) -> Result<pb::SummaryResponse, ServiceError> {
        let mut v = Vec::new();
        let checked = self
            .check(workspace_id, filter, true, now_ms(), &mut v)
            .await?;
        finish(v)?;
        let window = checked.window.unwrap_or(Window { from: 0, to: 0 });
        let (now, before) = tokio::try_join!(
            self.measure_window(workspace_id, window, &checked.clauses),
            self.measure_window(workspace_id, window.previous(), &checked.clauses),
        )?;
        Ok(pb::SummaryResponse {
            from: Some(timestamp(window.from)),
            to: Some(timestamp(window.to)),
            measures: Some(now),
            previous: Some(before),
        })
    }

    pub async fn breakdown(
        &self,
        r: &pb::BreakdownRequest,
    ) -> Result<pb::BreakdownResponse, ServiceError> {
        let mut v = Vec::new();
        let checked = self
            .check(&r.workspace_id, r.filter.as_ref(), true, now_ms(), &mut v)
            .await?;
        let targets = breakdown_targets(r, &mut v);
        finish(v)?;
        let top = if r.top == 0 { DEFAULT_TOP } else { r.top } as usize;
        let window = checked.window.unwrap_or(Window { from: 0, to: 0 });
        let scope = Scope {
            workspace_id: &r.workspace_id,
            window: Some(window),
            clauses: &checked.clauses,
        };
        let groups: Vec<Group> = targets.into_iter().map(Group::Dimension).collect();
        // A conversation is in one row per value of a single-valued dimension, so the
        // rows add up to the total; with several topics it is in several, and the total
        // is its own question.
        let single_valued = groups
            .iter()
            .all(|g| matches!(g, Group::Dimension(Target::Column(_))));
        let (rows, total) = if single_valued {
            let rows = self.store.measure(&scope, &groups).await?;
            let mut total = Measured::default();
            for m in rows.values() {
                total.merge(m);
            }
            (rows, measures(total))
        } else {
            tokio::try_join!(
                async { Ok::<_, ServiceError>(self.store.measure(&scope, &groups).await?) },
                self.measure_window(&r.workspace_id, window, &checked.clauses),
            )?
        };
        Ok(pb::BreakdownResponse {
            from: Some(timestamp(window.from)),
            to: Some(timestamp(window.to)),
            dimensions: r.dimensions.clone(),
            rows: top_and_other(rows, groups.len(), top),
            total: Some(total),
        })
    }

    pub async fn trends(&self, r: &pb::TrendsRequest) -> Result<pb::TrendsResponse, ServiceError> {
        let mut v = Vec::new();
        let checked = self
            .check(&r.workspace_id, r.filter.as_ref(), true, now_ms(), &mut v)
            .await?;
        let (interval, tz) = trend_shape(r, &mut v);
        let window = checked.window.unwrap_or(Window { from: 0, to: 0 });
        let plans = trend_plans(interval, tz.as_ref(), window, r.compare_previous, &mut v);
        finish(v)?;
        // The window and the one before, at once.
        let series = futures::future::try_join_all(plans.iter().map(|(w, plan)| async {
            let scope = Scope {
                workspace_id: &r.workspace_id,
                window: Some(*w),
                clauses: &checked.clauses,
            };
            let groups = [Group::Expr(plan.key_sql.clone())];
            let mut measured = self.store.measure(&scope, &groups).await?;
            Ok::<_, ServiceError>(
                plan.buckets
                    .iter()
                    .map(|(key, start)| pb::TrendsPoint {
                        start: Some(timestamp(*start)),
                        measures: Some(measures(
                            measured.remove(&vec![key.to_string()]).unwrap_or_default(),
                        )),
                    })
                    .collect::<Vec<_>>(),
            )
        }))
        .await?;
        let mut series = series.into_iter();
        Ok(pb::TrendsResponse {
            from: Some(timestamp(window.from)),
            to: Some(timestamp(window.to)),
            interval: interval.map(Interval::name).unwrap_or_default().to_owned(),
            time_zone: if r.time_zone.is_empty() {
                "UTC".to_owned()
            } else {
                r.time_zone.clone()
            },
            points: series.next().unwrap_or_default(),
            previous: series.next().unwrap_or_default(),
        })
    }

    /// The catalogue, with the workspace's values of its open dimensions and its custom
    /// analysis fields and metafields.
    pub async fn dimensions(&self, workspace_id: &str) -> Result<Vec<pb::Dimension>, ServiceError> {
        const VALUES: usize = 20;
        // Values seen in the last 90 days.
        let since = now_ms() - 90 * DAY_MS;
        let labels = self.store.label_values(workspace_id, since, VALUES).await?;
        let mut out = Vec::new();
        for d in CATALOGUE {
            let values = match d.target() {
                _ if !d.open() => d.values.iter().map(|v| (*v).to_owned()).collect(),
                Target::Column(column) => {
                    self.store
                        .top_values(workspace_id, column, VALUES as i64)
                        .await?
                }
                Target::Label(name) => labels.get(&name).cloned().unwrap_or_default(),
            };
            out.push(pb::Dimension {
                key: d.key.to_owned(),
                label: d.label.to_owned(),
                open: d.open(),
                multiple: d.multiple(),
                values,
            });
        }
        for (key, values) in labels {
            if dimensions::definition(&key).is_some() {
                continue;
            }
            let label = key.clone();
            out.push(pb::Dimension {
                key,
                label,
                open: true,
                multiple: false,
                values,
            });
        }
        Ok(out)
    }

    pub async fn conversation_ids(
        &self,
        r: &pb::ListConversationIdsRequest,
    ) -> Result<Page<String>, ServiceError> {
        let mut v = Vec::new();
        let checked = self
            .check(&r.workspace_id, r.filter.as_ref(), false, now_ms(), &mut v)
            .await?;
        let (limit, cursor) = paging(r.limit, &r.cursor, &mut v);
        finish(v)?;
        let scope = Scope {
            workspace_id: &r.workspace_id,
            window: checked.window,
            clauses: &checked.clauses,
        };
        let updated = (
            r.updated_after.as_ref().map_or(0, |t| millis(Some(t))),
            r.updated_before.as_ref().map_or(0, |t| millis(Some(t))),
        );
        Ok(self
            .store
            .conversation_ids(&scope, updated, limit, &cursor)
            .await?)
    }

    // -----------------------------------------------------------------------------------
    // Segments.
    // -----------------------------------------------------------------------------------

    pub async fn create_segment(
        &self,
        r: &pb::CreateSegmentRequest,
        by: &str,
    ) -> Result<pb::Segment, ServiceError> {
        let segment = pb::Segment {
            id: new_id("seg"),
            created_at: Some(timestamp(now_ms())),
            created_by: by.to_owned(),
            ..requested_segment(r)
        };
        let stream = StreamRef::new("segments", &r.workspace_id);
        let executed = Command::new(&self.log, &stream)
            .request(&r.workspace_id, &r.request_id)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&SegmentsAggregate, |loaded| {
                let events = segments::create(&loaded.state, segment.clone())?;
                Ok::<_, DomainError>(Decision::new(
                    self.new_events(&r.workspace_id, &r.request_id, by, &events),
                    (),
                ))
            })
            .await;
        let id = match executed {
            Ok(Executed::Appended { .. } | Executed::Unchanged { .. }) => segment.id,
            // A retry: the segment the first request created.
            Ok(Executed::Duplicate { events, .. }) => {
                created_segment(&events).ok_or(ServiceError::RequestIdReused)?
            }
            Err(e) => return Err(command_error(e, "segments")),
        };
        self.store
            .segment(&r.workspace_id, &id)
            .await?
            .ok_or(ServiceError::Domain(DomainError::NotFound("segment")))
    }

    pub async fn segment(&self, workspace_id: &str, id: &str) -> Result<pb::Segment, ServiceError> {
        self.store
            .segment(workspace_id, id)
            .await?
            .ok_or(ServiceError::Domain(DomainError::NotFound("segment")))
    }

    pub async fn segments(
        &self,
        workspace_id: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<Page<pb::Segment>, ServiceError> {
        let mut v = Vec::new();
        let (limit, cursor) = paging(limit, cursor, &mut v);
        finish(v)?;
        Ok(self.store.segments(workspace_id, limit, &cursor).await?)
    }

    pub async fn delete_segment(
        &self,
        workspace_id: &str,
        request_id: &str,
        id: &str,
        by: &str,
    ) -> Result<pb::Segment, ServiceError> {
        let before = self.store.segment(workspace_id, id).await?;
        let stream = StreamRef::new("segments", workspace_id);
        let executed = Command::new(&self.log, &stream)
            .request(workspace_id, request_id)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&SegmentsAggregate, |loaded| {
                let events = segments::delete(&loaded.state, id)?;
                Ok::<_, DomainError>(Decision::new(
                    self.new_events(workspace_id, request_id, by, &events),
                    (),
                ))
            })
            .await;
        match executed {
            Ok(_) => before.ok_or(ServiceError::Domain(DomainError::NotFound("segment"))),
            // A retry of a deletion that went through: answered as the first was.
            Err(CommandError::Rejected {
                original: Some(_), ..
            }) => Ok(before.unwrap_or_else(|| pb::Segment {
                id: id.to_owned(),
                workspace_id: workspace_id.to_owned(),
                ..Default::default()
            })),
            Err(e) => Err(command_error(e, "segments")),
        }
    }

    // -----------------------------------------------------------------------------------
    // Findings.
    // -----------------------------------------------------------------------------------

    pub async fn findings(
        &self,
        r: &pb::ListFindingsRequest,
    ) -> Result<Page<pb::Finding>, ServiceError> {
        let mut v = Vec::new();
        let (limit, cursor) = paging(r.limit, &r.cursor, &mut v);
        finish(v)?;
        Ok(self
            .store
            .findings(&r.workspace_id, r.include_dismissed, limit, &cursor)
            .await?)
    }

    pub async fn dismiss_finding(
        &self,
        workspace_id: &str,
        request_id: &str,
        id: &str,
        by: &str,
    ) -> Result<pb::Finding, ServiceError> {
        let stream = StreamRef::new("findings", workspace_id);
        let executed = Command::new(&self.log, &stream)
            .request(workspace_id, request_id)
            .fingerprint(&switchboard_runtime::requests::current_request_hash())
            .run(&FindingsAggregate, |loaded| {
                let events = findings::dismiss(&loaded.state, id, by, now_ms())?;
                Ok::<_, DomainError>(Decision::new(
                    self.new_events(workspace_id, request_id, by, &events),
                    (),
                ))
            })
            .await;
        if let Err(e) = executed {
            return Err(command_error(e, "findings"));
        }
        self.store
            .finding(workspace_id, id)
            .await?
            .ok_or(ServiceError::Domain(DomainError::NotFound("finding")))
    }

    /// Looks for patterns in a workspace's conversations up to `now` and raises the new
    /// ones. Replicas may run it at once: the stream's version check lets one of them
    /// raise each pattern.
    pub async fn detect(
        &self,
        workspace_id: &str,
        now: i64,
    ) -> Result<Vec<pb::Finding>, ServiceError> {
        let t = self.thresholds;
        // The last full day that ended a day ago: its conversations had time to be
        // analysed and resolved.
        let day = Window {
            from: now - 2 * DAY_MS,
            to: now - DAY_MS,
        };
        let baseline = Window {
            from: day.from - t.baseline_days * DAY_MS,
            to: day.from,
        };
        let mut candidates = Vec::new();
        let has_history = self
            .store
            .first_created_at(workspace_id)
            .await?
            .is_some_and(|first| first < baseline.from);
        // Daily counts per watched value over the baseline and the day.
        let whole = Window {
            from: baseline.from,
            to: day.to,
        };
        let scope = Scope {
            workspace_id,
            window: Some(whole),
            clauses: &[],
        };
        let day_key = format!("(c.created_at - {}) / {DAY_MS}", whole.from);
        let days = usize::try_from(t.baseline_days + 1).unwrap_or(15);
        let mut series = Vec::new();
        // Without a whole baseline there is no usual range to leave.
        let watched: &[&str] = if has_history { WATCHED } else { &[] };
        for dimension in watched {
            let target = dimensions::target(dimension)
                .map_err(|why| invalid(vec![FieldViolation::new("dimension", why)]))?;
            let rows = self
                .store
                .measure(
                    &scope,
                    &[Group::Dimension(target), Group::Expr(day_key.clone())],
                )
                .await?;
            let mut counts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for (values, sums) in rows {
                let (Some(value), Some(d)) = (values.first(), values.get(1)) else {
                    continue;
                };
                let Ok(d) = d.parse::<usize>() else { continue };
                let days_of = counts.entry(value.clone()).or_insert_with(|| vec![0; days]);
                if let Some(slot) = days_of.get_mut(d) {
                    *slot += u64::try_from(sums.conversations).unwrap_or(0);
                }
            }
            series.extend(counts.into_iter().map(|(value, counts)| Daily {
                dimension: (*dimension).to_owned(),
                value,
                counts,
            }));
        }
        candidates.extend(findings::trends(&series, day, baseline, &t));
        // Co-occurrences over the last days.
        let recent = Window {
            from: now - t.co_occurrence_days * DAY_MS,
            to: now,
        };
        let scope = Scope {
            workspace_id,
            window: Some(recent),
            clauses: &[],
        };
        let total = self
            .store
            .measure(&scope, &[])
            .await?
            .into_values()
            .next()
            .map_or(0, |m| m.conversations);
        let mut single: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
        let mut together = Vec::new();
        for (a, b) in PAIRS {
            for d in [a, b] {
                if !single.contains_key(d) {
                    let rows = self.store.measure(&scope, &[group_of(d)?]).await?;
                    single.insert(
                        d,
                        rows.into_iter()
                            .map(|(v, s)| (v.concat(), u64::try_from(s.conversations).unwrap_or(0)))
                            .collect(),
                    );
                }
            }
            for (values, sums) in self
                .store
                .measure(&scope, &[group_of(a)?, group_of(b)?])
                .await?
            {
                let (va, vb) = (values[0].clone(), values[1].clone());
                together.push(Together {
                    a_count: single[a].get(&va).copied().unwrap_or(0),
                    b_count: single[b].get(&vb).copied().unwrap_or(0),
                    a: ((*a).to_owned(), va),
                    b: ((*b).to_owned(), vb),
                    both: u64::try_from(sums.conversations).unwrap_or(0),
                    total: u64::try_from(total).unwrap_or(0),
                });
            }
        }
        candidates.extend(findings::co_occurrences(&together, recent, &t));
        if candidates.is_empty() {
            return Ok(vec![]);
        }
        for c in &mut candidates {
            c.id = new_id("fnd");
            c.workspace_id = workspace_id.to_owned();
            c.raised_at = Some(timestamp(now));
        }
        let stream = StreamRef::new("findings", workspace_id);
        let executed = Command::new(&self.log, &stream)
            .run(&FindingsAggregate, |loaded| {
                let events = findings::raise(&loaded.state, candidates.clone());
                let raised: Vec<pb::Finding> = events
                    .iter()
                    .filter_map(|e| match e {
                        Event::FindingRaised(r) => r.finding.clone(),
                        _ => None,
                    })
                    .collect();
                Ok::<_, DomainError>(Decision::new(
                    self.new_events(workspace_id, "", "insights", &events),
                    raised,
                ))
            })
            .await;
        match executed {
            Ok(done) => {
                let raised = done.into_output();
                for f in &raised {
                    tracing::info!(workspace = workspace_id, finding = %f.id, "{}", f.summary);
                }
                Ok(raised)
            }
            Err(e) => Err(command_error(e, "findings")),
        }
    }

    fn new_events(
        &self,
        workspace_id: &str,
        request_id: &str,
        by: &str,
        events: &[Event],
    ) -> Vec<NewEvent> {
        let now = now_micros();
        events
            .iter()
            .map(|event| NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: event.event_type().to_owned(),
                schema_version: 1,
                payload: event.encode(),
                metadata: Metadata {
                    workspace_id: workspace_id.to_owned(),
                    correlation_id: request_id.to_owned(),
                    occurred_at: now,
                    actor: by.to_owned(),
                    ..Default::default()
                },
            })
            .collect()
    }
}

fn group_of(dimension: &str) -> Result<Group, ServiceError> {
    dimensions::target(dimension)
        .map(Group::Dimension)
        .map_err(|why| invalid(vec![FieldViolation::new("dimension", why)]))
}

fn created_segment(events: &[RecordedEvent]) -> Option<String> {
    events.iter().find_map(|e| match Event::decode(e) {
        Ok(Some(Event::SegmentCreated(c))) => c.segment.map(|s| s.id),
        _ => None,
    })
}

fn command_error(e: CommandError<DomainError>, what: &'static str) -> ServiceError {
    match e {
        CommandError::Rejected { error, .. } => ServiceError::Domain(error),
        CommandError::Contended { .. } => ServiceError::Contended(what),
        CommandError::RequestReused => ServiceError::RequestIdReused,
        CommandError::Log(e) => ServiceError::Log(e),
    }
}

/// 1..=100; 0 means 20.
fn page_limit(limit: u32, v: &mut Vec<FieldViolation>) -> u32 {
    match limit {
        0 => 20,
        1..=100 => limit,
        _ => {
            v.push(FieldViolation::new("limit", "1 to 100"));
            20
        }
    }
}

/// A page's size and where it starts, checked.
fn paging(limit: u32, cursor: &str, v: &mut Vec<FieldViolation>) -> (u32, String) {
    let limit = page_limit(limit, v);
    let cursor = decode_cursor(cursor)
        .map_err(|e| v.push(e))
        .unwrap_or_default();
    (limit, cursor)
}

// ---------------------------------------------------------------------------------------
// The checks that need nothing stored, one per request that has any: the service's own
// checks run them beside the ones that need the store, and the gRPC layer runs them with
// a request's bad envelope (whose workspace cannot be looked in), so that every mistake
// is named in one answer either way.
// ---------------------------------------------------------------------------------------

/// A summary's filter, as far as it fixes itself.
pub fn check_summary(filter: Option<&pb::Filter>, v: &mut Vec<FieldViolation>) {
    check_own(filter, true, now_ms(), v);
}

/// A breakdown's filter and dimensions.
pub fn check_breakdown(r: &pb::BreakdownRequest, v: &mut Vec<FieldViolation>) {
    check_own(r.filter.as_ref(), true, now_ms(), v);
    breakdown_targets(r, v);
}

/// A trend's filter, interval and time zone, and its buckets when the filter fixes the
/// window.
pub fn check_trends(r: &pb::TrendsRequest, v: &mut Vec<FieldViolation>) {
    let window = check_own(r.filter.as_ref(), true, now_ms(), v);
    let (interval, tz) = trend_shape(r, v);
    if let Some(window) = window {
        trend_plans(interval, tz.as_ref(), window, r.compare_previous, v);
    }
}

/// A listing of conversation ids: its filter and its page.
pub fn check_conversation_ids(r: &pb::ListConversationIdsRequest, v: &mut Vec<FieldViolation>) {
    check_own(r.filter.as_ref(), false, now_ms(), v);
    paging(r.limit, &r.cursor, v);
}

/// A listing's page.
pub fn check_page(limit: u32, cursor: &str, v: &mut Vec<FieldViolation>) {
    paging(limit, cursor, v);
}

/// A new segment's fields (how many segments the workspace keeps is the command's).
pub fn check_create_segment(r: &pb::CreateSegmentRequest, v: &mut Vec<FieldViolation>) {
    segments::check(&requested_segment(r), v);
}

/// Checks what `filter` holds by itself, needing no stored segment: its conditions, and its
/// window when it fixes one (its bounds, or the default when it names no segment either).
/// That window, if any.
fn check_own(
    filter: Option<&pb::Filter>,
    needs_window: bool,
    now: i64,
    v: &mut Vec<FieldViolation>,
) -> Option<Window> {
    let none = pb::Filter::default();
    let filter = filter.unwrap_or(&none);
    check_condition_count(filter, v);
    dimensions::clauses(
        "filter.conditions",
        &segments::conditions_of(&filter.conditions),
        v,
    );
    let (from, to) = bounds_of(filter);
    if from.is_none() && to.is_none() && !filter.segment_id.is_empty() {
        // The segment's window stands: the service checks it.
        return None;
    }
    window_of(from, to, needs_window, now, v)
}

/// A filter names at most [`dimensions::limits::CONDITIONS`] conditions of its own.
fn check_condition_count(filter: &pb::Filter, v: &mut Vec<FieldViolation>) {
    if filter.conditions.len() > dimensions::limits::CONDITIONS {
        v.push(FieldViolation::new(
            "filter.conditions",
            format!("at most {} conditions", dimensions::limits::CONDITIONS),
        ));
    }
}

/// A filter's bounds, in milliseconds since the epoch.
fn bounds_of(filter: &pb::Filter) -> (Option<i64>, Option<i64>) {
    (
        filter.from.as_ref().map(|t| millis(Some(t))),
        filter.to.as_ref().map(|t| millis(Some(t))),
    )
}

/// The window between `from` and `to`, checked. `needs_window`: a question over time gets
/// the default window when none is given; a listing's bounds are each open when not given,
/// and it has no window without either.
fn window_of(
    from: Option<i64>,
    to: Option<i64>,
    needs_window: bool,
    now: i64,
    v: &mut Vec<FieldViolation>,
) -> Option<Window> {
    if needs_window {
        return Some(dimensions::window(from, to, now, v));
    }
    if from.is_none() && to.is_none() {
        return None;
    }
    let window = Window {
        from: from.unwrap_or(0),
        to: to.unwrap_or(i64::MAX),
    };
    let in_range = |t: Option<i64>| t.is_none_or(|t| (0..=dimensions::MAX_TIME).contains(&t));
    if !in_range(from) || !in_range(to) {
        v.push(FieldViolation::new(
            "filter.from",
            "times are between 1970 and 9999",
        ));
    } else if window.to <= window.from {
        v.push(FieldViolation::new("filter.to", "must be after `from`"));
    }
    Some(window)
}

/// The dimensions a breakdown is by (one or two, known, different), and its `top` checked.
fn breakdown_targets(r: &pb::BreakdownRequest, v: &mut Vec<FieldViolation>) -> Vec<Target> {
    if r.dimensions.is_empty() || r.dimensions.len() > 2 {
        v.push(FieldViolation::new(
            "dimensions",
            "name one or two dimensions",
        ));
    }
    let mut targets = Vec::new();
    for (i, d) in r.dimensions.iter().enumerate() {
        match dimensions::target(d) {
            Ok(t) => targets.push(t),
            Err(why) => v.push(FieldViolation::new(format!("dimensions[{i}]"), why)),
        }
    }
    if r.dimensions.len() == 2 && r.dimensions[0] == r.dimensions[1] {
        v.push(FieldViolation::new(
            "dimensions[1]",
            "name two different dimensions",
        ));
    }
    if r.top > MAX_TOP {
        v.push(FieldViolation::new("top", format!("at most {MAX_TOP}")));
    }
    targets
}

/// A trend's interval and time zone, each `None` when it is not one.
fn trend_shape(
    r: &pb::TrendsRequest,
    v: &mut Vec<FieldViolation>,
) -> (Option<Interval>, Option<TimeZone>) {
    let interval = Interval::parse(&r.interval);
    if interval.is_none() {
        v.push(FieldViolation::new(
            "interval",
            "one of hour, day, week, month",
        ));
    }
    let tz = buckets::time_zone(&r.time_zone)
        .map_err(|why| v.push(FieldViolation::new("time_zone", why)))
        .ok();
    (interval, tz)
}

/// How `window` (and the one before it, compared) is cut into buckets: none when the
/// interval, the time zone or the window is wrong; a window cut too finely is named in `v`.
fn trend_plans(
    interval: Option<Interval>,
    tz: Option<&TimeZone>,
    window: Window,
    compare_previous: bool,
    v: &mut Vec<FieldViolation>,
) -> Vec<(Window, buckets::Plan)> {
    let mut plans = Vec::new();
    let (Some(interval), Some(tz)) = (interval, tz) else {
        return plans;
    };
    if window.to <= window.from {
        return plans;
    }
    let windows = if compare_previous {
        vec![window, window.previous()]
    } else {
        vec![window]
    };
    for w in windows {
        match buckets::plan(interval, tz, w) {
            Ok(plan) => plans.push((w, plan)),
            Err(why) => {
                v.push(FieldViolation::new("interval", why));
                break;
            }
        }
    }
    plans
}

/// A segment as a request asks for it, before it has an id, a time and an author.
fn requested_segment(r: &pb::CreateSegmentRequest) -> pb::Segment {
    pb::Segment {
        workspace_id: r.workspace_id.clone(),
        name: r.name.trim().to_owned(),
        description: r.description.clone(),
        conditions: r.conditions.clone(),
        from: r.from,
        to: r.to,
        last_days: r.last_days,
        ..Default::default()
    }
}

/// The measures of a group of conversations.
pub fn measures(m: Measured) -> pb::Measures {
    let n = m.conversations.max(0) as f64;
    let rate = |x: i64| if n > 0.0 { x as f64 / n } else { 0.0 };
    let mean = |total: i64, over: i64| (over > 0).then(|| total as f64 / over as f64 / 1000.0);
    let median = |histogram: Vec<(i64, i64)>| {
        crate::domain::facts::median(histogram).map(|ms| ms as f64 / 1000.0)
    };
    pb::Measures {
        conversations: u64::try_from(m.conversations).unwrap_or(0),
        messages: u64::try_from(m.messages).unwrap_or(0),
        resolution_rate: rate(m.resolved),
        agent_resolution_rate: rate(m.agent_resolved),
        handover_rate: rate(m.handed_over),
        first_response_mean_seconds: mean(m.first_response_total_ms, m.with_first_response),
        first_response_median_seconds: median(m.first_response_histogram),
        resolution_mean_seconds: mean(m.resolution_total_ms, m.with_resolution),
        resolution_median_seconds: median(m.resolution_histogram),
    }
}

/// Breakdown rows: per dimension, the `top` values by conversations are kept and the rest
/// folded into "other" (its figures and histograms added up, so its medians hold too).
fn top_and_other(
    rows: BTreeMap<Vec<String>, Measured>,
    dims: usize,
    top: usize,
) -> Vec<pb::BreakdownRow> {
    // The top values of each dimension, by conversations over every row.
    let mut kept: Vec<std::collections::BTreeSet<String>> = Vec::new();
    for d in 0..dims {
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        for (values, m) in &rows {
            *totals.entry(&values[d]).or_default() += m.conversations;
        }
        let mut ranked: Vec<(&str, i64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kept.push(
            ranked
                .into_iter()
                .take(top)
                .map(|(v, _)| v.to_owned())
                .collect(),
        );
    }
    // Rows keyed by (value, or None for "other") per dimension.
    let mut merged: BTreeMap<Vec<Option<String>>, Measured> = BTreeMap::new();
    for (values, m) in rows {
        let key: Vec<Option<String>> = values
            .iter()
            .enumerate()
            .map(|(d, v)| kept[d].contains(v).then(|| v.clone()))
            .collect();
        merged.entry(key).or_default().merge(&m);
    }
    let mut out: Vec<(bool, i64, pb::BreakdownRow)> = merged
        .into_iter()
        .map(|(key, m)| {
            (
                key.iter().any(Option::is_none),
                m.conversations,
                pb::BreakdownRow {
                    other: key.iter().map(Option::is_none).collect(),
                    values: key.into_iter().map(Option::unwrap_or_default).collect(),
                    measures: Some(measures(m)),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(a.2.values.cmp(&b.2.values))
    });
    out.into_iter().map(|(_, _, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(conversations: i64, resolved: i64, first_response: i64) -> Measured {
        Measured {
            conversations,
            resolved,
            first_response_total_ms: first_response * conversations,
            with_first_response: conversations,
            first_response_histogram: vec![(first_response, conversations)],
            ..Default::default()
        }
    }

    #[test]
    fn values_beyond_the_top_fold_into_other() {
        let rows = BTreeMap::from([
            (vec!["billing".to_owned()], measured(50, 10, 2000)),
            (vec!["login".to_owned()], measured(30, 30, 1000)),
            (vec!["refunds".to_owned()], measured(5, 0, 4000)),
            (vec!["shipping".to_owned()], measured(3, 3, 8000)),
        ]);
        let out = top_and_other(rows, 1, 2);
        let shown: Vec<_> = out
            .iter()
            .map(|r| {
                let m = r.measures.unwrap();
                (
                    r.values[0].as_str(),
                    r.other[0],
                    m.conversations,
                    m.resolution_rate,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("billing", false, 50, 0.2),
                ("login", false, 30, 1.0),
                ("", true, 8, 3.0 / 8.0)
            ]
        );
        let billing = out[0].measures.unwrap();
        assert_eq!(billing.first_response_median_seconds, Some(2.0));
        // Other: 5 at 4 s and 3 at 8 s: mean 5.5 s, median 4 s.
        let other = out[2].measures.unwrap();
        assert_eq!(other.first_response_mean_seconds, Some(5.5));
        assert_eq!(other.first_response_median_seconds, Some(4.0));
    }
}
