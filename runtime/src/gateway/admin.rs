//! The admin API: deploy handlers, look at apps and rooms. Bearer key, or open in dev mode.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::http_error;
use crate::apps::DeployError;
use crate::ids::{AppName, RoomId};
use crate::node::Node;
use crate::room::RoomKey;
use crate::store::AppConfig;

pub fn routes(node: Arc<Node>) -> Router<Arc<Node>> {
    let limit = node.config.limits.max_handler_bytes;
    Router::new()
        .route(
            "/v1/apps/{app}/handler",
            put(deploy).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/apps/{app}", get(app))
        .route("/v1/apps/{app}/config", put(configure))
        .route("/v1/apps/{app}/rooms/{room}", get(room))
        .layer(middleware::from_fn_with_state(node, require_key))
}

fn json(status: StatusCode, v: impl serde::Serialize) -> Response {
    let body = serde_json::to_string(&v).unwrap_or_else(|_| "{}".into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_key(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if node.config.dev {
        return next.run(req).await;
    }
    let Some(key) = node.config.admin_key.as_deref() else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this node has no admin key configured",
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => http_error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin key"),
        None => http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <admin key>`",
        ),
    }
}

fn bad_name(e: crate::ids::InvalidName) -> Response {
    http_error(StatusCode::BAD_REQUEST, "invalid_name", e)
}

async fn deploy(
    State(node): State<Arc<Node>>,
    Path(app): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app = match AppName::new(&app) {
        Ok(a) => a,
        Err(e) => return bad_name(e),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "handler is over the limit of {} bytes",
                    node.config.limits.max_handler_bytes
                ),
            );
        }
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "bad_body", e.body_text()),
    };
    match node.apps.deploy(&app, body.to_vec()).await {
        Ok(d) => json(StatusCode::OK, d),
        Err(DeployError::Invalid(reason)) => {
            http_error(StatusCode::BAD_REQUEST, "invalid_handler", reason)
        }
        Err(e @ DeployError::TooLarge { .. }) => {
            http_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e)
        }
        Err(e @ DeployError::Storage(_)) => {
            http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)
        }
    }
}

async fn app(State(node): State<Arc<Node>>, Path(app): Path<String>) -> Response {
    let app = match AppName::new(&app) {
        Ok(a) => a,
        Err(e) => return bad_name(e),
    };
    let Some(record) = node.apps.record(&app) else {
        return http_error(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("app {app} does not exist"),
        );
    };
    let live = record.versions.last();
    json(
        StatusCode::OK,
        serde_json::json!({
            "app": app.as_str(),
            "version": live.map(|v| v.version),
            "sha256": live.map(|v| v.sha256.clone()),
            "versions": record.versions,
            "config": record.config,
        }),
    )
}

async fn configure(
    State(node): State<Arc<Node>>,
    Path(app): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app = match AppName::new(&app) {
        Ok(a) => a,
        Err(e) => return bad_name(e),
    };
    let config = match body
        .map_err(|e| e.body_text())
        .and_then(|b| serde_json::from_slice::<AppConfig>(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "bad_config", e),
    };
    match node.apps.configure(&app, config.clone()).await {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({"app": app.as_str(), "config": config}),
        ),
        Err(DeployError::Invalid(reason)) => {
            http_error(StatusCode::BAD_REQUEST, "bad_config", reason)
        }
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn room(
    State(node): State<Arc<Node>>,
    Path((app, room)): Path<(String, String)>,
) -> Response {
    let app = match AppName::new(&app) {
        Ok(a) => a,
        Err(e) => return bad_name(e),
    };
    let room = match RoomId::new(&room) {
        Ok(r) => r,
        Err(e) => return bad_name(e),
    };
    if !node.apps.exists(&app) {
        return http_error(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("app {app} does not exist"),
        );
    }
    match node.rooms.inspect(&RoomKey { app, room }).await {
        Some(view) => json(StatusCode::OK, view),
        None => http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "room did not answer",
        ),
    }
}
