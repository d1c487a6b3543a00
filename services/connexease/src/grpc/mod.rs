//! The `switchboard.connexease.v1.Connexease` gRPC service.

mod error;

use switchboard_proto::connexease::v1::connexease_server::{self, ConnexeaseServer};
use switchboard_proto::connexease::v1::*;
use switchboard_runtime::requests::valid_prefixed_id;
use tonic::{Request, Response, Status};

use crate::domain::FieldViolation;
use crate::service::{ConnexeaseService, check_operation, public_view};

#[derive(Clone)]
pub struct ConnexeaseApi {
    service: ConnexeaseService,
}

impl ConnexeaseApi {
    pub fn new(service: ConnexeaseService) -> Self {
        Self { service }
    }

    pub fn into_server(self) -> ConnexeaseServer<Self> {
        ConnexeaseServer::new(self).max_decoding_message_size(256 * 1024)
    }
}

fn violation(field: &str, description: &str) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// Checks the workspace (and request id) every request names, pushing into `v` so the
/// request's own fields are named in the same answer.
fn check_envelope(v: &mut Vec<FieldViolation>, workspace_id: &str, request_id: &str) {
    if !valid_prefixed_id(workspace_id, "ws_") {
        v.push(violation(
            "workspace_id",
            "required: `ws_` followed by 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    if request_id.len() > 128 {
        v.push(violation("request_id", "at most 128 bytes"));
    }
}

/// `INVALID_ARGUMENT` naming every violation, if any.
fn finish(v: Vec<FieldViolation>) -> Result<(), Status> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(error::invalid(v))
    }
}

/// The workspace (and request id) of a request that carries nothing else to check.
fn check(workspace_id: &str, request_id: &str) -> Result<(), Status> {
    let mut v = Vec::new();
    check_envelope(&mut v, workspace_id, request_id);
    finish(v)
}

/// Checks what an operation's request carries besides the operation: its workspace, key
/// and conversation. A mistake there stops the request here, with what is wrong with the
/// operation and its arguments that needs no directory, so every mistake is named in one
/// answer. Otherwise the service checks the operation, naming those mistakes beside the
/// directory's (a group that does not exist).
fn check_run(r: &RunOperationRequest) -> Result<(), Status> {
    let mut v = Vec::new();
    check_envelope(&mut v, &r.workspace_id, "");
    if r.idempotency_key.is_empty() || r.idempotency_key.len() > 128 {
        v.push(violation("idempotency_key", "required: 1 to 128 bytes"));
    }
    if !valid_prefixed_id(&r.conversation_id, "conv_") {
        v.push(violation(
            "conversation_id",
            "required: our conversation (`conv_…`)",
        ));
    }
    if !v.is_empty() {
        check_operation(r, &mut v);
    }
    finish(v)
}

#[tonic::async_trait]
impl connexease_server::Connexease for ConnexeaseApi {
    async fn connect_workspace(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<ConnectionResponse>, Status> {
        let r = request.into_inner();
        let mut v = Vec::new();
        check_envelope(&mut v, &r.workspace_id, &r.request_id);
        let Some(connection) = r.connection else {
            v.push(violation("connection", "required"));
            return Err(error::invalid(v));
        };
        if !v.is_empty() {
            // Stopped here: the connection's mistakes are named too (the service checks
            // the connection of a request it goes on with).
            self.service
                .check_connection(&r.workspace_id, &connection, &mut v)
                .await?;
            return Err(error::invalid(v));
        }
        let (connection, _) = self
            .service
            .connect(&r.workspace_id, &r.request_id, connection)
            .await?;
        Ok(Response::new(ConnectionResponse {
            connection: Some(public_view(connection)),
        }))
    }

    async fn test_connection(
        &self,
        request: Request<TestConnectionRequest>,
    ) -> Result<Response<TestConnectionResponse>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        Ok(Response::new(
            self.service.test_connection(&r.workspace_id).await?,
        ))
    }

    async fn disconnect_workspace(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<ConnectionResponse>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, &r.request_id)?;
        let connection = self
            .service
            .disconnect(&r.workspace_id, &r.request_id)
            .await?;
        Ok(Response::new(ConnectionResponse {
            connection: Some(public_view(connection)),
        }))
    }

    async fn get_connection(
        &self,
        request: Request<GetConnectionRequest>,
    ) -> Result<Response<ConnectionResponse>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        let state = self.service.load(&r.workspace_id).await?;
        let connection = state.connection.ok_or_else(|| {
            switchboard_runtime::codes::CX_NEVER_CONNECTED
                .status("the workspace was never connected")
        })?;
        Ok(Response::new(ConnectionResponse {
            connection: Some(public_view(connection)),
        }))
    }

    async fn sync_directory(
        &self,
        request: Request<SyncDirectoryRequest>,
    ) -> Result<Response<DirectoryResponse>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        let directory = self.service.sync_directory(&r.workspace_id).await?;
        Ok(Response::new(DirectoryResponse {
            directory: Some(directory),
        }))
    }

    async fn get_directory(
        &self,
        request: Request<GetDirectoryRequest>,
    ) -> Result<Response<DirectoryResponse>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        let state = self.service.load(&r.workspace_id).await?;
        if state.connected().is_none() {
            return Err(crate::service::ServiceError::NotConnected.into());
        }
        Ok(Response::new(DirectoryResponse {
            directory: state.directory,
        }))
    }

    async fn run_operation(
        &self,
        request: Request<RunOperationRequest>,
    ) -> Result<Response<OperationResult>, Status> {
        let r = request.into_inner();
        check_run(&r)?;
        let workspace_id = r.workspace_id.clone();
        Ok(Response::new(
            self.service.run_operation(&workspace_id, r).await?,
        ))
    }

    async fn get_link(&self, request: Request<GetLinkRequest>) -> Result<Response<Link>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        let link = self
            .service
            .link(&r.workspace_id, &r.conversation_id)
            .await?
            .ok_or_else(|| {
                switchboard_runtime::codes::CX_NOT_LINKED.status("the conversation is not linked")
            })?;
        Ok(Response::new(link))
    }

    async fn read_stats(
        &self,
        request: Request<ReadStatsRequest>,
    ) -> Result<Response<StatsRead>, Status> {
        let r = request.into_inner();
        check(&r.workspace_id, "")?;
        Ok(Response::new(
            self.service.read_stats(&r.workspace_id).await?,
        ))
    }
}
