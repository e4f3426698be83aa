//! edgeroom-gateway: the HTTP front door — the native WebSocket endpoint, Engine.IO
//! and Socket.IO, the admin API, health, metrics, and requests forwarded to the node
//! that owns their session.
//!
//! Invariant: the gateway's only state is the table of Engine.IO sessions, each owned
//! by one task; everything else it is handed (`Gateway`). Handlers parse and check
//! requests and hand off to rooms and sessions; a connection's frames become room
//! commands in order, and what rooms queue for it becomes frames.

mod admin;
mod auth;
pub mod engineio;
pub mod forward;
pub mod front;
pub mod native;
mod rate;
pub mod socketio;
mod state;

pub use state::{Gateway, gone};

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use edgeroom_host::room::Interest;
use edgeroom_proto::ids::AppName;
use edgeroom_proto::native::Format;

/// An HTTP error as JSON: `{"error": {"code", "message"}}`.
pub fn http_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message.to_string()}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The Engine.IO routes: what clients reach on any node, and all that requests
/// forwarded from another node reach.
fn engineio_routes(node: &Gateway) -> Router<Arc<Gateway>> {
    let mut router = Router::new();
    if let Some(path) = &node.config.socketio.engineio_echo_path {
        router = router.route(path, any(engineio_echo));
    }
    router
        .route("/socket.io", any(socketio_default))
        .route("/socket.io/", any(socketio_default))
        .route("/apps/{app}/socket.io", any(socketio_app))
        .route("/apps/{app}/socket.io/", any(socketio_app))
}

/// What a `Forward` stream from another node is served with: the Engine.IO routes of
/// sessions this node owns, and the room view one node asks another for. Nothing
/// else of the admin API, and no forwarding onwards.
pub fn forwarded_router(node: Arc<Gateway>) -> Router {
    engineio_routes(&node)
        .merge(admin::room_view(node.clone()))
        .with_state(node)
}

pub fn router(node: Arc<Gateway>) -> Router {
    let admin = admin::routes(node.clone());
    engineio_routes(&node)
        .route("/", get(index))
        .route("/v1/ws", get(native_ws))
        .route("/healthz", get(healthz))
        .route("/v1/route", get(route))
        .route("/metrics", get(metrics))
        .merge(admin)
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            forward::foreign_sessions,
        ))
        .with_state(node)
}

#[derive(Debug, serde::Deserialize)]
struct RouteQuery {
    lat: Option<String>,
    lon: Option<String>,
}

/// `GET /v1/route?lat=&lon=`: the healthy regions for a client there, nearest first,
/// each with its client URLs. A node that is sending its clients away (cut off from
/// its cluster, or stopping) answers 503 like `/healthz`: what it knows of the others
/// is stale, and it would send clients to itself.
async fn route(State(node): State<Arc<Gateway>>, Query(q): Query<RouteQuery>) -> Response {
    if let Some(why) = node.refusing() {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    }
    let coordinate = |v: Option<&String>, max: f64| {
        v.and_then(|v| v.parse::<f64>().ok())
            .filter(|x| x.is_finite() && x.abs() <= max)
    };
    let (Some(lat), Some(lon)) = (
        coordinate(q.lat.as_ref(), 90.0),
        coordinate(q.lon.as_ref(), 180.0),
    ) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_location",
            "lat and lon are required: degrees, lat within ±90 and lon within ±180",
        );
    };
    let regions = match &node.cluster {
        Some(cluster) => cluster.regions(),
        None => vec![edgeroom_cluster::route::RegionView {
            region: node.config.region.clone(),
            location: (lat, lon),
            urls: vec![format!("http://{}", node.addr)],
            measured: None,
        }],
    };
    let ranked = edgeroom_cluster::route::rank((lat, lon), &regions);
    let body = serde_json::json!({ "lat": lat, "lon": lon, "regions": ranked });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn index(State(node): State<Arc<Gateway>>) -> impl IntoResponse {
    let c = &node.config;
    format!(
        "Edgeroom node {} ({}).\nNative protocol: ws://{}/v1/ws?app=APP  (see docs/protocol.md)\nAdmin API: /v1/apps/{{app}}  Metrics: /metrics  Health: /healthz\n",
        c.node_id, c.region, c.listen
    )
}

async fn socketio_default(State(node): State<Arc<Gateway>>, req: engineio::Request) -> Response {
    let Some(app) = node.config.default_app.clone() else {
        return http_error(
            StatusCode::NOT_FOUND,
            "unknown_app",
            "this node has no default app; use /apps/{app}/socket.io/",
        );
    };
    engineio::handle(node, engineio::Service::SocketIo(app), req).await
}

async fn socketio_app(
    State(node): State<Arc<Gateway>>,
    Path(app): Path<String>,
    req: engineio::Request,
) -> Response {
    match AppName::new(&app) {
        Ok(app) => engineio::handle(node, engineio::Service::SocketIo(app), req).await,
        Err(e) => http_error(StatusCode::BAD_REQUEST, "invalid_name", e),
    }
}

async fn engineio_echo(State(node): State<Arc<Gateway>>, req: engineio::Request) -> Response {
    engineio::handle(node, engineio::Service::Echo, req).await
}

/// 200 while the node takes clients; 503 while it sends them away (stopping, or cut
/// off from most of its cluster), so a load balancer stops sending it new ones.
async fn healthz(State(node): State<Arc<Gateway>>) -> impl IntoResponse {
    let (code, status) = match node.refusing() {
        None => (StatusCode::OK, "ok"),
        Some(going) => (StatusCode::SERVICE_UNAVAILABLE, going.status()),
    };
    let body = serde_json::json!({
        "status": status,
        "node": node.config.node_id.as_str(),
        "region": node.config.region,
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics(State(node): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(),
    )
}

#[derive(serde::Deserialize)]
struct WsQuery {
    app: Option<String>,
    format: Option<String>,
    /// `0` or `false`: no presence frames on this connection.
    presence: Option<String>,
    /// `0` or `false`: no state frames on this connection.
    state: Option<String>,
    /// The client's credential, a JWT of the app (or sent later in an `authenticate`).
    token: Option<String>,
}

/// A yes/no query parameter: absent is yes.
fn wanted(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1") | Some("true") => Ok(true),
        Some("0") | Some("false") => Ok(false),
        Some(other) => Err(format!("{other:?} is not 0, 1, true or false")),
    }
}

async fn native_ws(
    State(node): State<Arc<Gateway>>,
    Query(q): Query<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(why) = node.refusing() {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "not_websocket",
                format!("this endpoint takes a WebSocket upgrade: {e}"),
            );
        }
    };
    let app = match (q.app.as_deref(), &node.config.default_app) {
        (Some(name), _) => match AppName::new(name) {
            Ok(a) => a,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, "invalid_name", e),
        },
        (None, Some(default)) => default.clone(),
        (None, None) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "query parameter `app` is required",
            );
        }
    };
    if !node.apps.exists(&app) {
        return http_error(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("app {app} does not exist"),
        );
    }
    // A bad token is refused before the upgrade; none at all may still come in the
    // first frame where the app needs one.
    let credential = match q.token.as_deref() {
        Some(token) => match auth::check(&node, &app, Some(token)) {
            Ok(c) => Some(c),
            Err(e) => return http_error(StatusCode::UNAUTHORIZED, e.code.as_str(), e.message),
        },
        None => node
            .apps
            .settings(&app)
            .and_then(|s| s.credentials.anonymous().ok()),
    };
    let format = match q.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("msgpack") => Format::MsgPack,
        Some(other) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                "bad_format",
                format!("format {other:?} is not json or msgpack"),
            );
        }
    };
    let interest = match (wanted(q.presence.as_deref()), wanted(q.state.as_deref())) {
        (Ok(presence), Ok(state)) => Interest { presence, state },
        (Err(e), _) | (_, Err(e)) => {
            return http_error(StatusCode::BAD_REQUEST, "bad_format", e);
        }
    };
    let Some(slot) = node.connection_slot() else {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this node is at its connection limit; try another",
        );
    };
    let hard = node.config.limits.max_frame_hard_bytes;
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .on_upgrade(move |socket| async move {
            native::serve(socket, node, app, format, interest, credential).await;
            drop(slot);
        })
}
