//! The connexease service: a workspace's help-desk connection, its directory and the
//! operations run there.

use switchboard_proto::connexease::v1::connexease_client::ConnexeaseClient as Stub;
use switchboard_proto::connexease::v1::{
    ConnectRequest, ConnectionResponse, DirectoryResponse, DisconnectRequest, GetConnectionRequest,
    GetDirectoryRequest, GetLinkRequest, Link, OperationResult, RunOperationRequest,
    SyncDirectoryRequest, TestConnectionRequest, TestConnectionResponse,
};

typed_client! {
    /// The connexease service (`switchboard.connexease.v1.Connexease`).
    ///
    /// The service retries Connexease's 429 and 5xx answers itself, so `run_operation` can
    /// take a while: give this client a deadline that covers those retries (the callers
    /// used 30 s from flows and 60 s from actions).
    ConnexeaseClient for "connexease" via Stub {
        /// Connects the workspace (or replaces its connection).
        @once fn connect_workspace(ConnectRequest) -> ConnectionResponse;
        /// Checks the stored connection without changing anything.
        @once fn test_connection(TestConnectionRequest) -> TestConnectionResponse;
        /// Disconnects the workspace.
        @once fn disconnect_workspace(DisconnectRequest) -> ConnectionResponse;
        /// The workspace's connection.
        fn get_connection(GetConnectionRequest) -> ConnectionResponse;
        /// Pulls the directory now.
        @once fn sync_directory(SyncDirectoryRequest) -> DirectoryResponse;
        /// The directory as last pulled.
        fn get_directory(GetDirectoryRequest) -> DirectoryResponse;
        /// Runs one operation; a repeated idempotency key answers with the recorded
        /// result.
        @once fn run_operation(RunOperationRequest) -> OperationResult;
        /// The link between one of our conversations and Connexease's.
        fn get_link(GetLinkRequest) -> Link;
    }
}
