//! Socket.IO without sticky sessions: an Engine.IO request for a session another node
//! owns is carried to that node over the mesh, and answered by it.
//!
//! An Engine.IO session lives in one task on one node (its owner). In a cluster its id
//! names the owner (`<random>.<node>`), so any node can tell where a polling GET, a
//! POST or a WebSocket upgrade belongs. A request for another node's session is sent
//! as HTTP/1.1 on a `Forward` stream to the owner, which serves that stream with its
//! own router, exactly as if the client had connected to it; an upgrade then becomes a
//! byte tunnel between the client's connection and the stream. The HTTP is hyper's on
//! both ends; this module only picks the node and joins the pipes.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use crate::Gateway;
use edgeroom_proto::ids::NodeId;
use edgeroom_transport::Incoming;

/// The session id of a new Engine.IO session on `node`.
pub fn new_sid(node: &Gateway) -> String {
    let random = edgeroom_proto::ids::ConnId::random();
    match node.cluster {
        Some(_) => format!("{random}.{}", node.config.node_id),
        None => random.to_string(),
    }
}

/// The node a session id names, if it names one.
fn owner(sid: &str) -> Option<NodeId> {
    let (_, node) = sid.rsplit_once('.')?;
    NodeId::new(node).ok()
}

/// The `sid` of an Engine.IO request, if it has one.
fn sid_of(req: &Request) -> Option<&str> {
    if !req
        .uri()
        .path()
        .trim_end_matches('/')
        .ends_with("socket.io")
    {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("sid="))
}

/// Middleware: a request for a session another node owns goes to that node.
pub async fn foreign_sessions(
    State(node): State<Arc<Gateway>>,
    req: Request,
    next: Next,
) -> Response {
    let foreign = sid_of(&req)
        .and_then(owner)
        .filter(|o| *o != node.config.node_id);
    match (foreign, &node.cluster) {
        (Some(owner), Some(_)) => match forward(&node, &owner, req).await {
            Ok(res) => res,
            Err(e) => {
                tracing::debug!(%owner, "forwarding an Engine.IO request failed: {e:#}");
                // What a client sees when its session's node is gone: it starts over.
                let body = r#"{"code":1,"message":"Session ID unknown"}"#;
                (StatusCode::BAD_REQUEST, body).into_response()
            }
        },
        _ => next.run(req).await,
    }
}

/// Carry `req` to `owner` over the mesh and return its answer (an upgrade becomes a
/// tunnel). Each forwarded request, and the tunnel it may become, holds one of the
/// node's `limits.forwarded_streams` places while it lasts.
pub async fn forward(node: &Gateway, owner: &NodeId, mut req: Request) -> anyhow::Result<Response> {
    let cluster = node
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("not in a cluster"))?;
    let Ok(place) = node.forward_slots.clone().try_acquire_owned() else {
        node.metrics.forwards_refused.inc();
        return Ok(too_many_forwarded());
    };
    let (send, recv, lease) = cluster.forward_stream(owner).await?;
    // The connection's place and the node's are given back when both the HTTP
    // exchange and the tunnel it may have become are over.
    let held = Arc::new((place, lease));
    let io = TokioIo::new(tokio::io::join(recv, send));
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(io).await?;
    let conn_held = held.clone();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
        drop(conn_held);
    });
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let mut onward = Request::from_parts(parts, body);
    // HTTP/1.1 on the stream wants an origin-form target.
    if let Some(pq) = onward.uri().path_and_query().cloned() {
        *onward.uri_mut() = pq.as_str().parse()?;
    }
    let mut res = sender.send_request(onward).await?;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let tunnel = hyper::upgrade::on(&mut res);
        tokio::spawn(async move {
            let _held = held;
            let (Ok(client), Ok(tunnel)) = tokio::join!(client_upgrade, tunnel) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut tunnel = TokioIo::new(tunnel);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
        });
    }
    Ok(res.map(Body::new))
}

/// What a client gets when this node forwards as many requests as it may: Engine.IO's
/// error shape, so a client backs off and tries again.
fn too_many_forwarded() -> Response {
    let body = r#"{"code":4,"message":"too many forwarded requests"}"#;
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Serve the `Forward` streams peers open (handed over by the cluster's mesh) with
/// `router` — the node's Engine.IO routes and the room view, nothing else — each as if
/// its client had connected here, until the node stops; the streams being served then
/// finish (the node aborts what is left once it has drained). At most `max` are served
/// at once; a stream beyond it is dropped and counted (its node answers its client).
pub async fn serve_streams(
    router: Router,
    mut streams: tokio::sync::mpsc::Receiver<(NodeId, Incoming)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    max: usize,
    metrics: Arc<edgeroom_host::metrics::Metrics>,
) {
    let mut served = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            next = streams.recv() => match next {
                Some((_, incoming)) => incoming,
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        while served.try_join_next().is_some() {}
        if served.len() >= max {
            metrics.peer_streams_dropped.inc();
            continue;
        }
        served.spawn(serve(router.clone(), incoming));
    }
    drop(streams);
    while served.join_next().await.is_some() {}
}

/// Serve one forwarded request (and its upgrade, if it asks for one).
async fn serve(router: Router, incoming: Incoming) {
    let (send, recv) = incoming.into_raw();
    let io = TokioIo::new(tokio::io::join(recv, send));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("forwarded request: {e}");
    }
}
