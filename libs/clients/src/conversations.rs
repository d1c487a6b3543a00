//! The conversations service: conversations, their messages, status, metafields and
//! assignment.

use switchboard_proto::conversations::v1::conversations_client::ConversationsClient as Stub;
use switchboard_proto::conversations::v1::{
    AddMessageRequest, AssignRequest, ClickButtonRequest, ConversationResponse,
    EndConversationRequest, GetConversationRequest, ListConversationsRequest,
    ListConversationsResponse, ListMessagesRequest, ListMessagesResponse, MessageResponse,
    RecordAnalysisRequest, RemoveMetafieldsRequest, SecureMetadata, SetMetafieldsRequest,
    SetStatusRequest, StartConversationRequest, SubmitFormRequest,
};

typed_client! {
    /// The conversations service (`switchboard.conversations.v1.Conversations`). Every
    /// change takes a `request_id`: a repeated request changes nothing twice.
    ConversationsClient for "conversations" via Stub {
        /// Starts a conversation.
        fn start_conversation(StartConversationRequest) -> ConversationResponse;
        /// Adds a message (text, buttons or a form) to a conversation.
        fn add_message(AddMessageRequest) -> MessageResponse;
        /// Records a customer's answer to a form.
        fn submit_form(SubmitFormRequest) -> MessageResponse;
        /// Records a customer's click on a button.
        fn click_button(ClickButtonRequest) -> MessageResponse;
        /// Changes a conversation's status.
        fn set_status(SetStatusRequest) -> ConversationResponse;
        /// Sets metafields, keeping the others.
        fn set_metafields(SetMetafieldsRequest) -> ConversationResponse;
        /// Removes metafields by key.
        fn remove_metafields(RemoveMetafieldsRequest) -> ConversationResponse;
        /// Records who the conversation is assigned to.
        fn assign(AssignRequest) -> ConversationResponse;
        /// Records an analysis of the conversation.
        fn record_analysis(RecordAnalysisRequest) -> ConversationResponse;
        /// Ends a conversation.
        fn end_conversation(EndConversationRequest) -> ConversationResponse;
        /// One conversation.
        fn get_conversation(GetConversationRequest) -> ConversationResponse;
        /// One page of a workspace's conversations.
        fn list_conversations(ListConversationsRequest) -> ListConversationsResponse;
        /// One page of a conversation's messages, oldest first.
        fn list_messages(ListMessagesRequest) -> ListMessagesResponse;
        /// The conversation's secure metadata in plain text (service token only), for
        /// rendering an action's inputs; keep it in memory only as long as needed.
        fn get_secure_metadata(GetConversationRequest) -> SecureMetadata;
    }
}
