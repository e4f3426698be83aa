//! The admin API: deploy handlers, look at apps and rooms. Bearer key, or open in dev mode.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use super::http_error;
use crate::Gateway;
use edgeroom_host::apps::DeployError;
use edgeroom_host::room::RoomKey;
use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::{AppName, RoomId};

pub fn routes(node: Arc<Gateway>) -> Router<Arc<Gateway>> {
    let limit = node.config.limits.max_handler_bytes;
    Router::new()
        .route(
            "/v1/apps/{app}/handler",
            put(deploy).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/v1/apps/{app}", get(app))
        .route("/v1/apps/{app}/config", put(configure))
        .route("/v1/apps/{app}/rooms/{room}", get(room))
        .route("/v1/cluster", get(cluster))
        .layer(middleware::from_fn_with_state(node, require_key))
}

/// The one admin route another node may forward: a room's view, asked of the node
/// that holds the room (the admin key is checked here as on any node).
pub fn room_view(node: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
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

async fn require_key(State(node): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    // Dev mode is open unless it was given a key.
    if node.config.dev && node.config.admin_key.is_none() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mine = node.config.admin_key.as_deref();
    // In a cluster, a key configured on any node works on every node: the control
    // plane holds their hashes (compared as hashes, so timing reveals nothing useful).
    let clusters = |g: &str| {
        node.cluster.as_ref().is_some_and(|c| {
            c.control
                .state()
                .admin_keys
                .contains(&edgeroom_cluster::control::state::sha256_hex(g.as_bytes()))
        })
    };
    match given {
        Some(g) if mine.is_some_and(|k| same(g.as_bytes(), k.as_bytes())) || clusters(g) => {
            next.run(req).await
        }
        Some(_) => http_error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin key"),
        None => http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <admin key>`",
        ),
    }
}

fn bad_name(e: edgeroom_proto::ids::InvalidName) -> Response {
    http_error(StatusCode::BAD_REQUEST, "invalid_name", e)
}

/// `?base=N`: deploy only if version N is still live (0: the app has none yet).
#[derive(Debug, serde::Deserialize)]
struct DeployQuery {
    base: Option<u64>,
}

async fn deploy(
    State(node): State<Arc<Gateway>>,
    Path(app): Path<String>,
    Query(query): Query<DeployQuery>,
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
    let deployed = match &node.cluster {
        Some(cluster) => {
            edgeroom_host::registry::deploy(cluster, &node.apps, &app, body.to_vec(), query.base)
                .await
        }
        None => {
            let live = node
                .apps
                .record(&app)
                .and_then(|r| r.versions.last().map(|v| v.version))
                .unwrap_or(0);
            match query.base {
                Some(base) if base != live => Err(DeployError::Conflict { current: live }),
                _ => node.apps.deploy(&app, body.to_vec()).await,
            }
        }
    };
    match deployed {
        Ok(d) => json(StatusCode::OK, d),
        Err(e @ DeployError::Conflict { .. }) => http_error(StatusCode::CONFLICT, "conflict", e),
        Err(e @ DeployError::Unavailable(_)) => {
            http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)
        }
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

async fn app(State(node): State<Arc<Gateway>>, Path(app): Path<String>) -> Response {
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
            "config": record.config.redacted(),
        }),
    )
}

async fn configure(
    State(node): State<Arc<Gateway>>,
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
    let configured = match &node.cluster {
        Some(cluster) => {
            edgeroom_host::registry::configure(cluster, &node.apps, &app, config.clone()).await
        }
        None => node.apps.configure(&app, config.clone()).await,
    };
    match configured {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({"app": app.as_str(), "config": config.redacted()}),
        ),
        Err(DeployError::Invalid(reason)) => {
            http_error(StatusCode::BAD_REQUEST, "bad_config", reason)
        }
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// Set on a room view request one node hands to another, so it is not handed on again.
const FORWARDED: &str = "x-edgeroom-forwarded";

/// `GET /v1/apps/{app}/rooms/{room}` options.
#[derive(Debug, Default, serde::Deserialize)]
struct RoomQuery {
    /// `1`/`true`: this node's replica only — never asked of another node, never
    /// loaded for the asking (404 `not_loaded` if it is not loaded here).
    local: Option<String>,
    /// Comma-separated change hashes: the view's `missing` lists those the replica's
    /// document does not hold yet (has it caught up with another replica's heads?).
    has: Option<String>,
}

/// Most change hashes one `has` may name.
const MAX_HAS: usize = 256;

/// A room: its members on every node, its state and history. A node with no members
/// there asks one that has some (its replica knows every node's members).
async fn room(
    State(node): State<Arc<Gateway>>,
    Path((app, room)): Path<(String, String)>,
    Query(query): Query<RoomQuery>,
    mut req: Request,
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
    let has: Option<Vec<String>> = query.has.as_deref().map(|h| {
        h.split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    });
    if has.as_ref().is_some_and(|h| h.len() > MAX_HAS) {
        return http_error(
            StatusCode::BAD_REQUEST,
            "too_large",
            format!("has may name at most {MAX_HAS} changes"),
        );
    }
    let key = RoomKey { app, room };
    if matches!(query.local.as_deref(), Some("1" | "true")) {
        return match node.rooms.inspect_loaded(&key, has).await {
            Some(view) => json(StatusCode::OK, view),
            None => http_error(
                StatusCode::NOT_FOUND,
                "not_loaded",
                format!("{} is not loaded on this node", key.room),
            ),
        };
    }
    if let (Some(cluster), Some(replicator)) = (&node.cluster, &node.replicator)
        && !req.headers().contains_key(FORWARDED)
    {
        let room_ref = (key.app.clone(), key.room.clone());
        let holder = match replicator.is_local(&room_ref) {
            true => None,
            false => replicator
                .interested(&room_ref)
                .into_iter()
                .find(|n| cluster.health.is_alive(n)),
        };
        if let Some(holder) = holder {
            req.headers_mut()
                .insert(FORWARDED, header::HeaderValue::from_static("1"));
            match super::forward::forward(&node, &holder, req).await {
                Ok(res) => return res,
                Err(e) => tracing::debug!(%holder, "asking for a room view failed: {e:#}"),
            }
        }
    }
    match node.rooms.inspect(&key, has).await {
        Some(view) => json(StatusCode::OK, view),
        None => http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "room did not answer",
        ),
    }
}

/// The cluster as this node sees it: the control plane's status and the known nodes.
async fn cluster(State(node): State<Arc<Gateway>>) -> Response {
    let Some(cluster) = &node.cluster else {
        return json(
            StatusCode::OK,
            serde_json::json!({
                "node": node.config.node_id.as_str(),
                "region": node.config.region,
                "cluster": null,
            }),
        );
    };
    let status = cluster.control.status();
    let nodes: Vec<_> = cluster
        .control
        .state()
        .nodes
        .iter()
        .map(|(id, info)| {
            serde_json::json!({
                "node": id.as_str(),
                "alive": cluster.health.is_alive(id),
                "rtt_ms": cluster.health.rtt(id).map(|d| d.as_secs_f64() * 1000.0),
                "region": info.region,
                "peer_addr": info.peer_addr.to_string(),
                "client_urls": info.client_urls,
                "lat": info.lat,
                "lon": info.lon,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "node": node.config.node_id.as_str(),
            "region": node.config.region,
            "cluster": status,
            "nodes": nodes,
        }),
    )
}
