//! Every error code a Switchboard caller can see, in one registry: the id, the gRPC status
//! it goes out with, what it means and what the caller should do about it. Services build
//! their error messages from these constants (`CONV_NOT_FOUND.status("conversation not
//! found")`), and `docs/errors.md` is [`render_markdown`]'s output, checked by
//! `libs/runtime/tests/codes.rs`.
//!
//! One numbering scheme, `SB-<AREA>-<NNNN>` (see [`SCHEME`]): the area is the service or
//! library that decides the error ([`AREAS`]); a few numbers mean the same thing in every
//! area (0400 invalid request, 0404 not found, 0409 stale version, 0500 store unavailable,
//! 0501 store refused the change, 0005 contention, 0007 idempotency key still running);
//! 0001–0399 are an area's own refusals in the order they were added; the rest of 04xx
//! are other refusals of the request, 05xx failures on our side. An id is never given a
//! second meaning: renamed ids are listed in [`RENAMED`].
//!
//! `libs/outbound` and `libs/secrets` do not depend on this crate, so their messages keep
//! the literal id; the registry test checks that every `SB-` literal in the source tree is
//! registered here.

use std::fmt::{Display, Write as _};

use tonic::Code as StatusCode;

/// One registered error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The stable id, `SB-<AREA>-<NNNN>`; the message of every error with this code starts
    /// with it, followed by `: `.
    pub id: &'static str,
    /// The gRPC status it goes out with; `None` when it has no status of its own: it is
    /// written into a result's error text (an action invocation's failure), into another
    /// code's message, or stops the process at start-up.
    pub status: Option<StatusCode>,
    /// What happened, in a sentence or two.
    pub meaning: &'static str,
    /// What the caller (or the operator) should do about it.
    pub action: &'static str,
}

impl Code {
    /// The message of an error with this code: `"<id>: <text>"`.
    pub fn message(&self, text: impl Display) -> String {
        format!("{}: {text}", self.id)
    }

    /// The gRPC status for this code with `"<id>: <text>"` as its message. A code without a
    /// status of its own (`status: None`) is not meant for this and goes out as `UNKNOWN`.
    pub fn status(&self, text: impl Display) -> tonic::Status {
        tonic::Status::new(
            self.status.unwrap_or(StatusCode::Unknown),
            self.message(text),
        )
    }

    /// The area part of the id (`CONV` for `SB-CONV-0404`).
    pub fn area(&self) -> &'static str {
        let rest = self.id.strip_prefix("SB-").unwrap_or(self.id);
        rest.split_once('-').map_or(rest, |(area, _)| area)
    }
}

/// A part of the system that owns a block of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// The area in the id: `CONV` in `SB-CONV-0404`.
    pub id: &'static str,
    /// The service or library that decides these errors.
    pub name: &'static str,
}

/// Errors whose id changed when the numbering became one scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    /// The id clients may have matched before.
    pub old: &'static str,
    /// The id these errors carry now.
    pub new: &'static str,
    /// Which errors moved: all of them (the old id is retired and never given another
    /// meaning), or the one case that had shared an id with another meaning.
    pub cases: &'static str,
}

/// The numbering scheme, as it appears at the top of `docs/errors.md`.
pub const SCHEME: &str = "\
Every error a caller can see carries a stable code at the start of its message, \
`SB-<AREA>-<NNNN>: <what happened>`, so it can be matched and looked up here. \
The area is the service or library that decided the error; the number is four digits:

- Some numbers mean the same in every area that has them: `0400` invalid request \
(`INVALID_ARGUMENT`, every bad field in the standard `BadRequest` details), `0404` not \
found, `0409` changed since the version the caller expected, `0500` the store is \
unavailable (retry), `0501` the store refused the change, `0005` changing too fast \
(retry), `0007` the same idempotency key is still running (retry later).
- `0001`–`0399`: the area's own refusals, numbered in the order they were added.
- Other `04xx`: other refusals of the request, near the HTTP status they resemble \
(`0412` a precondition, `0429` a limit).
- Other `05xx`: failures on our side or of a service we depend on.
- An id is never given a second meaning; an id retired by a rename stays retired (see \
`Renamed codes` at the end).";

/// Every area, in the order of `docs/errors.md`.
pub const AREAS: &[Area] = &[
    Area {
        id: "CONV",
        name: "conversations service",
    },
    Area {
        id: "ACT",
        name: "actions service",
    },
    Area {
        id: "CX",
        name: "Connexease service",
    },
    Area {
        id: "WH",
        name: "webhooks service",
    },
    Area {
        id: "FLOW",
        name: "flows service",
    },
    Area {
        id: "INS",
        name: "insights service",
    },
    Area {
        id: "API",
        name: "REST gateway (`/v1`; the HTTP status is in each code's meaning)",
    },
    Area {
        id: "RPC",
        name: "gRPC server (`libs/runtime`): what every service refuses the same way",
    },
    Area {
        id: "NET",
        name: "outbound HTTP guard (`libs/outbound`)",
    },
    Area {
        id: "SEC",
        name: "secrets at rest (`libs/secrets`)",
    },
];

// Conversations.

/// The conversation exists already (a start with an id in use).
pub const CONV_ALREADY_EXISTS: Code = Code {
    id: "SB-CONV-0002",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "A conversation with this id already exists in the workspace.",
    action: "Use the existing conversation, or start one with another id.",
};
/// A message was added to an ended conversation.
pub const CONV_ENDED: Code = Code {
    id: "SB-CONV-0003",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The conversation has ended; no message can be added to it.",
    action: "Start a new conversation for the customer.",
};
/// An ended conversation was ended again.
pub const CONV_ALREADY_ENDED: Code = Code {
    id: "SB-CONV-0004",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The conversation has already ended.",
    action: "Nothing: the conversation is in the state you asked for.",
};
/// Writers kept racing on the conversation.
pub const CONV_CONTENDED: Code = Code {
    id: "SB-CONV-0005",
    status: Some(StatusCode::Aborted),
    meaning: "Other writers kept changing the conversation while this change was applied.",
    action: "Retry with backoff; send the same request id so the retry is not applied twice.",
};
/// A request id came back with another request.
pub const CONV_REQUEST_ID_REUSED: Code = Code {
    id: "SB-CONV-0006",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "This request id was already used for a different request in the workspace.",
    action: "Use a new request id for each distinct request; reuse one only to retry the same request.",
};
/// Invalid input, every bad field in the `BadRequest` details.
pub const CONV_INVALID_REQUEST: Code = Code {
    id: "SB-CONV-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request has invalid fields; each one is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// No such conversation in the workspace.
pub const CONV_NOT_FOUND: Code = Code {
    id: "SB-CONV-0404",
    status: Some(StatusCode::NotFound),
    meaning: "No such conversation in the workspace (a conversation of another workspace is not found either).",
    action: "Check the workspace and conversation ids.",
};
/// Secure metadata without the service's encryption key.
/// The conversation changed since the version the caller expected.
pub const CONV_STALE_VERSION: Code = Code {
    id: "SB-CONV-0409",
    status: Some(StatusCode::Aborted),
    meaning: "The conversation is at another version than the one the request expected: someone changed it since you read it.",
    action: "Read the conversation again, reapply your change and send it with the new version.",
};
pub const CONV_NO_ENCRYPTION_KEY: Code = Code {
    id: "SB-CONV-0412",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "Secure metadata was written or read, but the service runs without an encryption key.",
    action: "Operator: set SWITCHBOARD_ENCRYPTION_KEY on the conversations service.",
};
/// The conversation store is out of reach.
pub const CONV_STORE_UNAVAILABLE: Code = Code {
    id: "SB-CONV-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The conversation store (database or NATS) could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The conversation store refused the change.
pub const CONV_STORE_REFUSED: Code = Code {
    id: "SB-CONV-0501",
    status: Some(StatusCode::Internal),
    meaning: "The conversation store holds something the service cannot use, or refused the change; retrying will not help.",
    action: "Report it: the server log has the cause.",
};
/// Stored secure metadata is not a map.
pub const CONV_SECURE_METADATA_NOT_A_MAP: Code = Code {
    id: "SB-CONV-0502",
    status: Some(StatusCode::Internal),
    meaning: "The conversation's secure metadata opened, but is not a map of strings.",
    action: "Report it: the stored value is damaged.",
};
/// Stored secure metadata does not open with the service's keys.
pub const CONV_SECURE_METADATA_UNREADABLE: Code = Code {
    id: "SB-CONV-0503",
    status: Some(StatusCode::Internal),
    meaning: "The conversation's secure metadata does not open with the service's keys (the key that sealed it was removed, or the value is damaged).",
    action: "Operator: keep the key that sealed it in the keyring; the server log has the cause.",
};

// Actions.

/// An action with this id exists already.
pub const ACT_ALREADY_EXISTS: Code = Code {
    id: "SB-ACT-0002",
    status: Some(StatusCode::AlreadyExists),
    meaning: "An action with this id already exists in the workspace.",
    action: "Update the existing action, or create one with another id.",
};
/// Writers kept racing on the action.
pub const ACT_CONTENDED: Code = Code {
    id: "SB-ACT-0005",
    status: Some(StatusCode::Aborted),
    meaning: "Other writers kept changing the action while this change was applied.",
    action: "Retry with backoff; send the same request id so the retry is not applied twice.",
};
/// A request id came back with another request.
pub const ACT_REQUEST_ID_REUSED: Code = Code {
    id: "SB-ACT-0006",
    status: Some(StatusCode::InvalidArgument),
    meaning: "This request id was already used for a different request; it is reported as the `request_id` field violation of an `SB-ACT-0400`.",
    action: "Use a new request id for each distinct request; reuse one only to retry the same request.",
};
/// An execution with the same idempotency key is still running.
pub const ACT_IN_PROGRESS: Code = Code {
    id: "SB-ACT-0007",
    status: Some(StatusCode::Aborted),
    meaning: "An execution with this idempotency key is still running.",
    action: "Retry later with the same key: you will get that execution's outcome.",
};
/// A Connexease action where no Connexease service is configured.
pub const ACT_CONNEXEASE_NOT_CONNECTED: Code = Code {
    id: "SB-ACT-0020",
    status: None,
    meaning: "A Connexease action ran, but the connexease service is not deployed or not configured; the invocation fails with reason `not_connected` and this code in its `error`.",
    action: "Operator: run the connexease service and point the actions service at it.",
};
/// An action workflow where no flows service is configured.
pub const ACT_WORKFLOWS_NOT_CONNECTED: Code = Code {
    id: "SB-ACT-0021",
    status: None,
    meaning: "An action workflow ran, but the flows service is not deployed or not configured; the invocation fails with reason `not_connected` and this code in its `error`.",
    action: "Operator: run the flows service and point the actions service at it.",
};
/// A conversation action where no conversations service is configured.
pub const ACT_CONVERSATIONS_NOT_CONNECTED: Code = Code {
    id: "SB-ACT-0022",
    status: None,
    meaning: "A conversation action ran, but no conversations service address is configured; the invocation fails with reason `not_connected` and this code in its `error`.",
    action: "Operator: set SWITCHBOARD_CONVERSATIONS_URL on the actions service.",
};
/// A query action names a database that is not configured.
pub const ACT_QUERY_DATABASE_UNKNOWN: Code = Code {
    id: "SB-ACT-0023",
    status: None,
    meaning: "A query action names a database connection the actions service does not have; the invocation fails with reason `not_connected` and this code in its `error`.",
    action: "Fix the action's connection name, or have the operator configure that query database.",
};
/// Invalid input, every bad field in the `BadRequest` details.
pub const ACT_INVALID_REQUEST: Code = Code {
    id: "SB-ACT-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request or the action definition has invalid fields; each one is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// No such action in the workspace.
pub const ACT_NOT_FOUND: Code = Code {
    id: "SB-ACT-0404",
    status: Some(StatusCode::NotFound),
    meaning: "No such action in the workspace; a flow asking to invoke it gets its invocation rejected with this code.",
    action: "Check the workspace and action ids.",
};
/// The action changed since the version the caller expected.
pub const ACT_STALE_VERSION: Code = Code {
    id: "SB-ACT-0409",
    status: Some(StatusCode::Aborted),
    meaning: "The action is at another version than the one the request expected: someone changed it since you read it.",
    action: "Read the action again, reapply your change and send it with the new version.",
};
/// No such integration in the workspace.
pub const ACT_INTEGRATION_NOT_FOUND: Code = Code {
    id: "SB-ACT-0405",
    status: Some(StatusCode::NotFound),
    meaning: "No such integration in the workspace; an action naming it is refused with an `integration_id` field violation.",
    action: "Check the workspace and integration ids, or create the integration first.",
};
/// An integration still used by actions cannot be deleted.
pub const ACT_INTEGRATION_IN_USE: Code = Code {
    id: "SB-ACT-0412",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The integration is still used by the actions the message names; deleting it would leave them with nowhere to send their requests.",
    action: "Point those actions at another integration, or delete them, then delete the integration.",
};
/// The action store is out of reach.
pub const ACT_STORE_UNAVAILABLE: Code = Code {
    id: "SB-ACT-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The action store (database or NATS) could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The action store refused the change.
pub const ACT_STORE_REFUSED: Code = Code {
    id: "SB-ACT-0501",
    status: Some(StatusCode::Internal),
    meaning: "The action store holds something the service cannot use, or refused the change; retrying will not help.",
    action: "Report it: the server log has the cause.",
};

// Connexease.

/// The workspace has no Connexease connection.
pub const CX_NOT_CONNECTED: Code = Code {
    id: "SB-CX-0001",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The workspace has no Connexease connection, so no Connexease operation can run for it.",
    action: "Connect the workspace first (ConnectWorkspace with its Connexease credentials).",
};
/// Connexease failed or could not be reached.
pub const CX_UPSTREAM_FAILED: Code = Code {
    id: "SB-CX-0002",
    status: Some(StatusCode::Unavailable),
    meaning: "Connexease answered with an error, kept rate-limiting, or could not be reached; the message says which and after how many attempts.",
    action: "Retry later; if Connexease refused a value, fix it.",
};
/// Connexease refused the stored credentials.
pub const CX_UNAUTHORIZED: Code = Code {
    id: "SB-CX-0004",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "Connexease refused the workspace's credentials: its access token, or the username and password of the JWT flow (401, or a refused `POST /jwt/`).",
    action: "Reconnect the workspace with valid credentials.",
};
/// Writers kept racing on the connection.
pub const CX_CONTENDED: Code = Code {
    id: "SB-CX-0005",
    status: Some(StatusCode::Aborted),
    meaning: "Other writers kept changing the connection while this change was applied.",
    action: "Retry with backoff; send the same request id so the retry is not applied twice.",
};
/// The connection's address is refused by the outbound guard.
pub const CX_DESTINATION_BLOCKED: Code = Code {
    id: "SB-CX-0006",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The connection's Connexease address resolves to an address outbound requests may not reach (the `SB-NET-0001` that follows says which).",
    action: "Reconnect with a public Connexease address, or have the operator allow the range.",
};
/// An operation with the same idempotency key is still running.
pub const CX_IN_PROGRESS: Code = Code {
    id: "SB-CX-0007",
    status: Some(StatusCode::Aborted),
    meaning: "An operation with this idempotency key is still running.",
    action: "Retry later with the same key: you will get that operation's outcome.",
};
/// Invalid input, every bad field in the `BadRequest` details.
pub const CX_INVALID_REQUEST: Code = Code {
    id: "SB-CX-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request has invalid fields (a token Connexease refused and a blocked address included); each one is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// The workspace was never connected.
pub const CX_NEVER_CONNECTED: Code = Code {
    id: "SB-CX-0404",
    status: Some(StatusCode::NotFound),
    meaning: "The workspace was never connected to Connexease, so it has no connection to show.",
    action: "Connect the workspace first.",
};
/// The conversation is not linked to a Connexease conversation.
pub const CX_NOT_LINKED: Code = Code {
    id: "SB-CX-0405",
    status: Some(StatusCode::NotFound),
    meaning: "The conversation is not linked to a Connexease conversation.",
    action: "Check the conversation id; only conversations that came from or went to Connexease are linked.",
};
/// The Connexease store is out of reach.
pub const CX_STORE_UNAVAILABLE: Code = Code {
    id: "SB-CX-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The Connexease service's store could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The Connexease store refused the change.
pub const CX_STORE_REFUSED: Code = Code {
    id: "SB-CX-0501",
    status: Some(StatusCode::Internal),
    meaning: "The Connexease service's store holds something it cannot use (a stored token that does not open included), or refused the change.",
    action: "Report it: the server log has the cause.",
};

// Webhooks.

/// Invalid input, every bad field in the `BadRequest` details.
pub const WH_INVALID_REQUEST: Code = Code {
    id: "SB-WH-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request or the endpoint has invalid fields; each one is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// No such endpoint or message in the workspace.
pub const WH_NOT_FOUND: Code = Code {
    id: "SB-WH-0404",
    status: Some(StatusCode::NotFound),
    meaning: "No such endpoint or message in the workspace (the message says which).",
    action: "Check the workspace, endpoint and message ids.",
};
/// The endpoint changed since the version the caller expected.
pub const WH_STALE_VERSION: Code = Code {
    id: "SB-WH-0409",
    status: Some(StatusCode::Aborted),
    meaning: "The endpoint is at another version than the one the request expected: someone changed it since you read it.",
    action: "Read the endpoint again, reapply your change and send it with the new version.",
};
/// The workspace has as many endpoints as it may.
pub const WH_TOO_MANY_ENDPOINTS: Code = Code {
    id: "SB-WH-0429",
    status: Some(StatusCode::ResourceExhausted),
    meaning: "The workspace has as many webhook endpoints as it may (the message says how many).",
    action: "Delete an endpoint you no longer use, or ask the operator for a higher limit.",
};
/// The webhooks store is out of reach.
pub const WH_STORE_UNAVAILABLE: Code = Code {
    id: "SB-WH-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The webhooks store could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The webhooks store refused the change.
pub const WH_STORE_REFUSED: Code = Code {
    id: "SB-WH-0501",
    status: Some(StatusCode::Internal),
    meaning: "The webhooks store holds something the service cannot use, or refused the change.",
    action: "Report it: the server log has the cause.",
};
/// A stored signing secret does not open.
pub const WH_SECRET_UNREADABLE: Code = Code {
    id: "SB-WH-0502",
    status: Some(StatusCode::Internal),
    meaning: "An endpoint's stored signing secret does not open with the service's keys.",
    action: "Operator: check SWITCHBOARD_ENCRYPTION_KEY (keep the key that sealed the secret in the keyring); or rotate the endpoint's secret.",
};

// Flows.

/// Invalid input, every bad field in the `BadRequest` details.
pub const FLOW_INVALID_REQUEST: Code = Code {
    id: "SB-FLOW-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request or the flow has invalid fields or an invalid graph; each problem is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// No such flow, version, run, document, assistant or knowledge collection.
pub const FLOW_NOT_FOUND: Code = Code {
    id: "SB-FLOW-0404",
    status: Some(StatusCode::NotFound),
    meaning: "No such flow, version, run, assistant, knowledge collection or document in the workspace (the message says which).",
    action: "Check the ids in the request.",
};
/// The flow changed since the version the caller expected.
pub const FLOW_STALE_VERSION: Code = Code {
    id: "SB-FLOW-0409",
    status: Some(StatusCode::Aborted),
    meaning: "The flow is at another version than the one the request expected: someone changed it since you read it.",
    action: "Read the flow again, reapply your change and send it with the new version.",
};
/// Another flow has this name.
pub const FLOW_NAME_TAKEN: Code = Code {
    id: "SB-FLOW-0410",
    status: Some(StatusCode::AlreadyExists),
    meaning: "Another flow in the workspace has this name.",
    action: "Choose another name, or change the existing flow.",
};
/// The flow, run or collection is not in a state that allows the request.
pub const FLOW_FAILED_PRECONDITION: Code = Code {
    id: "SB-FLOW-0412",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "The flow, run or collection is not in a state that allows the request (nothing published to run, no draft to publish or replay, the version is published already, ...); the message says what is missing.",
    action: "Do what the message asks first (publish, save a draft, ...); when it says `changing too fast`, retry.",
};
/// The flows store is out of reach.
pub const FLOW_STORE_UNAVAILABLE: Code = Code {
    id: "SB-FLOW-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The flows store could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The flows store refused the change.
pub const FLOW_STORE_REFUSED: Code = Code {
    id: "SB-FLOW-0501",
    status: Some(StatusCode::Internal),
    meaning: "The flows store holds something the service cannot use, or refused the change.",
    action: "Report it: the server log has the cause.",
};
/// The actions a flow refers to cannot be checked.
pub const FLOW_ACTIONS_UNAVAILABLE: Code = Code {
    id: "SB-FLOW-0503",
    status: Some(StatusCode::Unavailable),
    meaning: "The flow or assistant refers to actions, and the actions service that would confirm them is not configured or not reachable.",
    action: "Retry later; operator: set SWITCHBOARD_ACTIONS_URL on the flows service.",
};

// Outbound HTTP (the literal lives in libs/outbound, which does not depend on this crate).

/// HTTP 409 or 422.
pub const API_IDEMPOTENCY_KEY_REUSED: Code = Code {
    id: "SB-API-0006",
    status: Some(StatusCode::InvalidArgument),
    meaning: "HTTP 409 or 422: the `Idempotency-Key` was already used with a different request (422), or it created an API key whose secret was shown once, to that request (409).",
    action: "Use a new key for a new request; resend the same body to replay the first answer.",
};
/// HTTP 409.
pub const API_IDEMPOTENCY_KEY_IN_FLIGHT: Code = Code {
    id: "SB-API-0007",
    status: Some(StatusCode::Aborted),
    meaning: "HTTP 409: a request with this `Idempotency-Key` is still being answered.",
    action: "Wait a moment and send it again: you will get the first answer.",
};
/// HTTP 400 or 422.
pub const API_INVALID_REQUEST: Code = Code {
    id: "SB-API-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "HTTP 400 or 422: the request is malformed (400: not JSON, a bad query or path) or has invalid fields (422); each one is in `errors`.",
    action: "Fix the named fields and send the request again.",
};
/// HTTP 401.
pub const API_UNAUTHENTICATED: Code = Code {
    id: "SB-API-0401",
    status: Some(StatusCode::Unauthenticated),
    meaning: "HTTP 401: no API key, or one that is not live (unknown, revoked or expired: they look the same).",
    action: "Send `Authorization: Bearer sbk_live_...` with a live key of the workspace.",
};
/// HTTP 403.
pub const API_FORBIDDEN: Code = Code {
    id: "SB-API-0403",
    status: Some(StatusCode::PermissionDenied),
    meaning: "HTTP 403: the key is live but its scopes do not allow this (the detail names the scope needed).",
    action: "Use a key with that scope, or create one (`switchboard api-keys create --scope ...`).",
};
/// HTTP 404.
pub const API_NOT_FOUND: Code = Code {
    id: "SB-API-0404",
    status: Some(StatusCode::NotFound),
    meaning: "HTTP 404: no such resource in the workspace of the key (resources of other workspaces answer the same).",
    action: "Check the id; list the resource to find it.",
};
/// HTTP 409.
pub const API_CONFLICT: Code = Code {
    id: "SB-API-0409",
    status: Some(StatusCode::Aborted),
    meaning: "HTTP 409: the request conflicts with the state of the resource (already exists, ended, revoked, changing too fast).",
    action: "Read the resource again; retry if it was changing, otherwise change the request.",
};
/// HTTP 412.
pub const API_PRECONDITION_FAILED: Code = Code {
    id: "SB-API-0412",
    status: Some(StatusCode::FailedPrecondition),
    meaning: "HTTP 412: `If-Match` names another version than the current one of the resource.",
    action: "Read the resource again (its `ETag`), reapply your change and send it with the new `If-Match`.",
};
/// HTTP 413.
pub const API_TOO_LARGE: Code = Code {
    id: "SB-API-0413",
    status: Some(StatusCode::InvalidArgument),
    meaning: "HTTP 413: the request body is larger than the API takes (1 MiB; 16 MiB for a bulk request).",
    action: "Send less per request (split a bulk request).",
};
/// HTTP 429.
pub const API_RATE_LIMITED: Code = Code {
    id: "SB-API-0429",
    status: Some(StatusCode::ResourceExhausted),
    meaning: "HTTP 429: the key sent more requests than its rate allows.",
    action: "Wait `Retry-After` seconds and send again.",
};
/// HTTP 503 or 504.
pub const API_UNAVAILABLE: Code = Code {
    id: "SB-API-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "HTTP 503 or 504: a service behind the gateway (or the store of the gateway) is out of reach or did not answer in time.",
    action: "Retry with backoff (`Retry-After`); send the same `Idempotency-Key` so nothing happens twice.",
};
/// HTTP 500.
pub const API_INTERNAL: Code = Code {
    id: "SB-API-0501",
    status: Some(StatusCode::Internal),
    meaning: "HTTP 500: the gateway failed to answer.",
    action: "Quote the request id to support; the server log has the cause.",
};
/// HTTP 502.
pub const API_UPSTREAM: Code = Code {
    id: "SB-API-0502",
    status: Some(StatusCode::Internal),
    meaning: "HTTP 502: a service behind the gateway refused the gateway itself (its service token).",
    action: "An operator must check `SWITCHBOARD_SERVICE_TOKEN` on the gateway and the services.",
};
/// An outbound request's destination is a private or otherwise forbidden address.
pub const NET_DESTINATION_BLOCKED: Code = Code {
    id: "SB-NET-0001",
    status: None,
    meaning: "An outbound request (an action's HTTP call, a webhook delivery, Connexease) would reach a loopback, private, link-local or otherwise internal address, so it is refused; it appears in the action invocation's error, the delivery attempt's error (`ssrf_blocked`), or inside `SB-CX-0006` and `SB-CX-0400`.",
    action: "Use a public address; or have the operator allow the range if the destination is meant to be reachable.",
};

// Secrets at rest (the literals live in libs/secrets, which does not depend on this crate).

/// The configured encryption key is not a key.
pub const SEC_INVALID_KEY: Code = Code {
    id: "SB-SEC-0001",
    status: None,
    meaning: "The configured encryption key is not base64 of exactly 32 bytes; the service does not start.",
    action: "Operator: set SWITCHBOARD_ENCRYPTION_KEY to base64 of 32 random bytes.",
};
/// A secret was sealed with a key the keyring does not hold.
pub const SEC_UNKNOWN_KEY: Code = Code {
    id: "SB-SEC-0002",
    status: None,
    meaning: "A stored secret was sealed with a key this service's keyring does not hold; it appears in the error of what needed the secret (an action's credential, for one).",
    action: "Operator: add the key that sealed it back to the keyring; or set the secret again.",
};
/// A sealed secret is damaged or belongs to another owner.
pub const SEC_TAMPERED: Code = Code {
    id: "SB-SEC-0003",
    status: None,
    meaning: "A stored secret does not open: it is damaged, or was sealed for another owner.",
    action: "Set the secret again; report it if it happens again.",
};
/// A stored value is not a sealed secret at all.
pub const SEC_MALFORMED: Code = Code {
    id: "SB-SEC-0004",
    status: None,
    meaning: "A stored value that should be a sealed secret is not one.",
    action: "Set the secret again; report it if it happens again.",
};

/// Another writer kept changing a workspace's segments or findings.
pub const INS_CONTENDED: Code = Code {
    id: "SB-INS-0005",
    status: Some(StatusCode::Aborted),
    meaning: "The workspace's segments or findings kept changing while the request was applied.",
    action: "Retry with the same request id.",
};
/// A request id was used before for another request.
pub const INS_REQUEST_ID_REUSED: Code = Code {
    id: "SB-INS-0006",
    status: Some(StatusCode::AlreadyExists),
    meaning: "This request id was already used for another request in the workspace.",
    action: "Send a new request id for a new request.",
};
/// Invalid question or segment.
pub const INS_INVALID_REQUEST: Code = Code {
    id: "SB-INS-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The question or the segment has invalid fields (an unknown dimension or value, a window of more than 400 days, too many trend buckets, ...); each one is named in the message and in the `BadRequest` details.",
    action: "Fix the named fields and send the request again.",
};
/// No such segment or finding in the workspace.
pub const INS_NOT_FOUND: Code = Code {
    id: "SB-INS-0404",
    status: Some(StatusCode::NotFound),
    meaning: "No such segment or finding in the workspace (the message says which).",
    action: "Check the workspace and the id.",
};
/// The workspace keeps as many segments as it may.
pub const INS_TOO_MANY_SEGMENTS: Code = Code {
    id: "SB-INS-0429",
    status: Some(StatusCode::ResourceExhausted),
    meaning: "The workspace keeps as many segments as it may (the message says how many).",
    action: "Delete a segment you no longer use.",
};
/// The insights store is out of reach.
pub const INS_STORE_UNAVAILABLE: Code = Code {
    id: "SB-INS-0500",
    status: Some(StatusCode::Unavailable),
    meaning: "The insights store could not be reached.",
    action: "Retry with backoff, with the same request id.",
};
/// The insights store refused the change.
pub const INS_STORE_REFUSED: Code = Code {
    id: "SB-INS-0501",
    status: Some(StatusCode::Internal),
    meaning: "The insights store holds something the service cannot use, or refused the change.",
    action: "Report it: the server log has the cause.",
};

/// A request that is not a valid message, or holds a NUL character.
pub const RPC_INVALID_INPUT: Code = Code {
    id: "SB-RPC-0400",
    status: Some(StatusCode::InvalidArgument),
    meaning: "The request body is not a valid protobuf message of the method's input type, or a string in it holds a NUL character (U+0000), which no store keeps; the fields are named in the message and in the `BadRequest` details.",
    action: "Send a valid message; remove NUL characters from the named fields. Retrying the same request cannot succeed.",
};

/// Every registered code, grouped by area in [`AREAS`] order and by number within an area.
pub const ALL: &[Code] = &[
    CONV_ALREADY_EXISTS,
    CONV_ENDED,
    CONV_ALREADY_ENDED,
    CONV_CONTENDED,
    CONV_REQUEST_ID_REUSED,
    CONV_INVALID_REQUEST,
    CONV_NOT_FOUND,
    CONV_STALE_VERSION,
    CONV_NO_ENCRYPTION_KEY,
    CONV_STORE_UNAVAILABLE,
    CONV_STORE_REFUSED,
    CONV_SECURE_METADATA_NOT_A_MAP,
    CONV_SECURE_METADATA_UNREADABLE,
    ACT_ALREADY_EXISTS,
    ACT_CONTENDED,
    ACT_REQUEST_ID_REUSED,
    ACT_IN_PROGRESS,
    ACT_CONNEXEASE_NOT_CONNECTED,
    ACT_WORKFLOWS_NOT_CONNECTED,
    ACT_CONVERSATIONS_NOT_CONNECTED,
    ACT_QUERY_DATABASE_UNKNOWN,
    ACT_INVALID_REQUEST,
    ACT_NOT_FOUND,
    ACT_INTEGRATION_NOT_FOUND,
    ACT_STALE_VERSION,
    ACT_INTEGRATION_IN_USE,
    ACT_STORE_UNAVAILABLE,
    ACT_STORE_REFUSED,
    CX_NOT_CONNECTED,
    CX_UPSTREAM_FAILED,
    CX_UNAUTHORIZED,
    CX_CONTENDED,
    CX_DESTINATION_BLOCKED,
    CX_IN_PROGRESS,
    CX_INVALID_REQUEST,
    CX_NEVER_CONNECTED,
    CX_NOT_LINKED,
    CX_STORE_UNAVAILABLE,
    CX_STORE_REFUSED,
    WH_INVALID_REQUEST,
    WH_NOT_FOUND,
    WH_STALE_VERSION,
    WH_TOO_MANY_ENDPOINTS,
    WH_STORE_UNAVAILABLE,
    WH_STORE_REFUSED,
    WH_SECRET_UNREADABLE,
    FLOW_INVALID_REQUEST,
    FLOW_NOT_FOUND,
    FLOW_STALE_VERSION,
    FLOW_NAME_TAKEN,
    FLOW_FAILED_PRECONDITION,
    FLOW_STORE_UNAVAILABLE,
    FLOW_STORE_REFUSED,
    FLOW_ACTIONS_UNAVAILABLE,
    INS_CONTENDED,
    INS_REQUEST_ID_REUSED,
    INS_INVALID_REQUEST,
    INS_NOT_FOUND,
    INS_TOO_MANY_SEGMENTS,
    INS_STORE_UNAVAILABLE,
    INS_STORE_REFUSED,
    API_IDEMPOTENCY_KEY_REUSED,
    API_IDEMPOTENCY_KEY_IN_FLIGHT,
    API_INVALID_REQUEST,
    API_UNAUTHENTICATED,
    API_FORBIDDEN,
    API_NOT_FOUND,
    API_CONFLICT,
    API_PRECONDITION_FAILED,
    API_TOO_LARGE,
    API_RATE_LIMITED,
    API_UNAVAILABLE,
    API_INTERNAL,
    API_UPSTREAM,
    RPC_INVALID_INPUT,
    NET_DESTINATION_BLOCKED,
    SEC_INVALID_KEY,
    SEC_UNKNOWN_KEY,
    SEC_TAMPERED,
    SEC_MALFORMED,
];

/// Ids retired when the numbering became one scheme, with the ids that replace them.
pub const RENAMED: &[Renamed] = &[
    Renamed {
        old: "SB-CONV-0001",
        new: "SB-CONV-0400",
        cases: "all (invalid request); the old id is retired",
    },
    Renamed {
        old: "SB-CONV-0501",
        new: "SB-CONV-0503",
        cases: "secure metadata that does not open; the store's refusals keep SB-CONV-0501",
    },
    Renamed {
        old: "SB-ACT-0001",
        new: "SB-ACT-0400",
        cases: "all (invalid request); the old id is retired",
    },
    Renamed {
        old: "SB-ACT-0003",
        new: "SB-ACT-0409",
        cases: "all (stale version); the old id is retired",
    },
    Renamed {
        old: "SB-CX-0003",
        new: "SB-CX-0400",
        cases: "all (invalid request); the old id is retired",
    },
];

/// The registered code with this id, if any.
pub fn find(id: &str) -> Option<&'static Code> {
    ALL.iter().find(|code| code.id == id)
}

/// The name a gRPC status goes by on the wire and in other languages' libraries.
pub fn status_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::Ok => "OK",
        StatusCode::Cancelled => "CANCELLED",
        StatusCode::Unknown => "UNKNOWN",
        StatusCode::InvalidArgument => "INVALID_ARGUMENT",
        StatusCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
        StatusCode::NotFound => "NOT_FOUND",
        StatusCode::AlreadyExists => "ALREADY_EXISTS",
        StatusCode::PermissionDenied => "PERMISSION_DENIED",
        StatusCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode::FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode::Aborted => "ABORTED",
        StatusCode::OutOfRange => "OUT_OF_RANGE",
        StatusCode::Unimplemented => "UNIMPLEMENTED",
        StatusCode::Internal => "INTERNAL",
        StatusCode::Unavailable => "UNAVAILABLE",
        StatusCode::DataLoss => "DATA_LOSS",
        StatusCode::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `docs/errors.md`: the scheme, then every area's codes, each with its status, meaning and
/// what to do, then the renamed ids.
pub fn render_markdown() -> String {
    let mut page = String::new();
    page.push_str("# Error codes\n\n");
    page.push_str(
        "<!-- Generated from libs/runtime/src/codes.rs; do not edit by hand. Regenerate with\n     \
         UPDATE_DOCS=1 cargo test -p switchboard-runtime --test codes -->\n\n",
    );
    page.push_str(SCHEME);
    page.push_str("\n\n");
    for area in AREAS {
        let _ = write!(page, "## {}: {}\n\n", area.id, area.name);
        for code in ALL.iter().filter(|code| code.area() == area.id) {
            let status = code.status.map_or_else(
                || "none (the code appears inside another message or result; see below)".to_owned(),
                |status| format!("`{}`", status_name(status)),
            );
            let _ = write!(
                page,
                "### {}\n\ngRPC status: {status}\n\n{}\n\nWhat to do: {}\n\n",
                code.id, code.meaning, code.action
            );
        }
    }
    page.push_str("## Renamed codes\n\n");
    page.push_str(
        "These errors changed id when the numbering became one scheme; a retired id is never \
         given another meaning.\n\n",
    );
    page.push_str("| Old id | New id | Which errors |\n| --- | --- | --- |\n");
    for renamed in RENAMED {
        let _ = writeln!(
            page,
            "| `{}` | `{}` | {} |",
            renamed.old, renamed.new, renamed.cases
        );
    }
    page
}
