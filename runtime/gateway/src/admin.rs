//! The admin API: deploy handlers, look at apps and rooms, manage admin keys. Bearer
//! key (see `edgeroom_host::admin_keys`), scoped to the cluster or one app; open in dev
//! mode without a key.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};

use super::http_error;
use crate::Gateway;
use edgeroom_cluster::control::state::KeyScope;
use edgeroom_host::admin_keys::KeyError;
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
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", delete(revoke_key))
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

/// The app a request's path is about (`/v1/apps/{app}/...`), if any.
fn app_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/apps/")?.split('/').next()
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
    let Some(given) = given else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <admin key>`",
        );
    };
    // Admin keys are few and the check is a hash: on the blocking pool, not the
    // reactor (a local store is read from disk).
    let keys = node.admin_keys.clone();
    let presented = given.to_owned();
    let scope = tokio::task::spawn_blocking(move || keys.check(&presented))
        .await
        .ok()
        .flatten();
    match scope {
        Some(KeyScope::Cluster) => next.run(req).await,
        Some(KeyScope::App(app)) if app_of(req.uri().path()) == Some(app.as_str()) => {
            next.run(req).await
        }
        Some(KeyScope::App(app)) => http_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key is for app {app} only"),
        ),
        None => http_error(StatusCode::UNAUTHORIZED, "unauthorized", "wrong admin key"),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    /// The one app the key may manage; none: the whole cluster.
    app: Option<String>,
}

fn key_error(e: KeyError) -> Response {
    match e {
        KeyError::Unknown(_) => http_error(StatusCode::NOT_FOUND, "unknown_key", e),
        KeyError::TooMany => http_error(StatusCode::CONFLICT, "too_many_keys", e),
        KeyError::Unavailable(_) => http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// `GET /v1/keys`: every admin key (id, name, scope, when made), never a secret.
async fn list_keys(State(node): State<Arc<Gateway>>) -> Response {
    match node.admin_keys.list() {
        Ok(keys) => json(StatusCode::OK, serde_json::json!({ "keys": keys })),
        Err(e) => key_error(e),
    }
}

/// `POST /v1/keys {"name", "app"?}`: a new key, shown this once.
async fn create_key(
    State(node): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let new = match body
        .map_err(|e| e.body_text())
        .and_then(|b| serde_json::from_slice::<NewKey>(&b).map_err(|e| e.to_string()))
    {
        Ok(n) => n,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, "bad_key", e),
    };
    if new.name.is_empty() || new.name.len() > 128 {
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_key",
            "a key's name is 1 to 128 bytes",
        );
    }
    let scope = match new.app.as_deref().map(AppName::new).transpose() {
        Ok(Some(app)) => KeyScope::App(app),
        Ok(None) => KeyScope::Cluster,
        Err(e) => return bad_name(e),
    };
    match node
        .admin_keys
        .create(new.name, scope, node.clock.wall_ms())
        .await
    {
        Ok(made) => json(StatusCode::CREATED, made),
        Err(e) => key_error(e),
    }
}

/// `DELETE /v1/keys/{id}`: the key stops working on every node.
async fn revoke_key(State(node): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    match node.admin_keys.revoke(&id).await {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "revoked": id })),
        Err(e) => key_error(e),
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
