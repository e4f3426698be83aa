//! Client credentials at the gateway: a token checked against its app's keys, what a
//! refusal tells the client, and when a connection's credential runs out.

use tokio::time::Instant;

use crate::Gateway;
use edgeroom_host::credential::{Capability, Credential, CredentialError};
use edgeroom_proto::ids::{AppName, RoomId};
use edgeroom_proto::{ErrorCode, ProtoError};

/// A client's token (or its absence), checked now against its app's keys.
pub fn check(node: &Gateway, app: &AppName, token: Option<&str>) -> Result<Credential, ProtoError> {
    let Some(settings) = node.apps.settings(app) else {
        return Err(ProtoError::new(
            ErrorCode::UnknownApp,
            format!("app {app} does not exist"),
        ));
    };
    settings
        .credentials
        .check(token, node.clock.wall_ms())
        .map_err(|e| refused(node, e))
}

/// The error a client is told, counted by its code.
fn refused(node: &Gateway, e: CredentialError) -> ProtoError {
    let code = match e {
        CredentialError::Required => ErrorCode::Unauthorized,
        CredentialError::Expired => ErrorCode::TokenExpired,
        _ => ErrorCode::BadToken,
    };
    count(node, code);
    ProtoError::new(code, e.to_string())
}

fn count(node: &Gateway, code: ErrorCode) {
    node.metrics
        .auth_refused
        .get_or_create(&edgeroom_host::metrics::KindLabel {
            kind: code.as_str().into(),
        })
        .inc();
}

/// The error for a request that needs a credential the connection has not presented.
pub fn required(node: &Gateway) -> ProtoError {
    count(node, ErrorCode::Unauthorized);
    ProtoError::new(
        ErrorCode::Unauthorized,
        "this app needs a token: send `authenticate` first",
    )
}

/// Whether `credential` may do `cap` in `room`; the error to answer with if not.
pub fn may(
    node: &Gateway,
    credential: &Credential,
    room: &RoomId,
    cap: Capability,
) -> Result<(), ProtoError> {
    if credential.allows(room, cap) {
        return Ok(());
    }
    count(node, ErrorCode::Forbidden);
    Err(ProtoError::new(
        ErrorCode::Forbidden,
        format!("your token does not allow {} in {room}", cap.as_str()),
    ))
}

/// When a credential stops counting, on the node's clock.
pub fn expiry(node: &Gateway, credential: &Credential) -> Option<Instant> {
    let at = credential.expires_at_ms?;
    let left = at.saturating_sub(node.clock.wall_ms());
    Some(node.clock.now() + std::time::Duration::from_millis(left))
}
