//! The insights service: questions over a workspace's conversations, segments, findings.

use switchboard_proto::insights::v1::insights_client::InsightsClient as Stub;
use switchboard_proto::insights::v1::{
    BreakdownRequest, BreakdownResponse, ConnexeaseStatsRequest, ConnexeaseStatsResponse,
    CreateSegmentRequest, DeleteSegmentRequest, DetectFindingsRequest, DetectFindingsResponse,
    DismissFindingRequest, Finding, ListConversationIdsRequest, ListConversationIdsResponse,
    ListDimensionsRequest, ListDimensionsResponse, ListFindingsRequest, ListFindingsResponse,
    ListSegmentsRequest, ListSegmentsResponse, Segment, SegmentRef, SummaryRequest,
    SummaryResponse, TrendsRequest, TrendsResponse,
};

typed_client! {
    /// The insights service (`switchboard.insights.v1.Insights`).
    InsightsClient for "insights" via Stub {
        /// The dimensions and their known values.
        fn list_dimensions(ListDimensionsRequest) -> ListDimensionsResponse;
        /// Every measure over a filter, and over the window before.
        fn get_summary(SummaryRequest) -> SummaryResponse;
        /// The measures grouped by one or two dimensions.
        fn get_breakdown(BreakdownRequest) -> BreakdownResponse;
        /// The measures per bucket of time.
        fn get_trends(TrendsRequest) -> TrendsResponse;
        /// Saves a segment.
        fn create_segment(CreateSegmentRequest) -> Segment;
        /// One segment.
        fn get_segment(SegmentRef) -> Segment;
        /// One page of segments.
        fn list_segments(ListSegmentsRequest) -> ListSegmentsResponse;
        /// Deletes a segment.
        fn delete_segment(DeleteSegmentRequest) -> Segment;
        /// One page of the ids of the conversations a filter selects.
        fn list_conversation_ids(ListConversationIdsRequest) -> ListConversationIdsResponse;
        /// One page of findings.
        fn list_findings(ListFindingsRequest) -> ListFindingsResponse;
        /// Dismisses a finding.
        fn dismiss_finding(DismissFindingRequest) -> Finding;
        /// Runs the detection of findings now.
        fn detect_findings(DetectFindingsRequest) -> DetectFindingsResponse;
        /// Connexease's response times by agent or channel.
        fn get_connexease_stats(ConnexeaseStatsRequest) -> ConnexeaseStatsResponse;
    }
}
