//! Hostile clients against a real node: what one client can make a node hold is
//! bounded, closed in time, and counted. Floods here are bounded in count and time and
//! stay on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{TestNode, metric};

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `stream` within `wait` (end of stream or a reset),
/// reading and discarding whatever it sent first.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// One whole keep-alive request on `stream`; returns the status line.
async fn request(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: edgeroom\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Slowloris: request heads that never finish and kept-alive connections that never
/// send another request are closed once `http_header_timeout_ms` passes (they were
/// held for as long as the client liked), and counted; a request sent in time is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_request_heads_and_idle_keep_alives_are_closed_in_time() {
    let node = TestNode::start_with(|c| c.limits.http_header_timeout_ms = 700).await;
    let mut partial = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edgeroom\r\nX-Slow: ")
            .await
            .unwrap();
        partial.push(s);
    }
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        assert_eq!(request(&mut s, "/healthz").await, "HTTP/1.1 200 OK");
        idle.push(s);
    }
    // A second request on a kept-alive connection, within the timeout, is served.
    let mut busy = TcpStream::connect(node.addr).await.unwrap();
    for _ in 0..3 {
        assert_eq!(request(&mut busy, "/healthz").await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t0 = Instant::now();
    for s in partial.iter_mut().chain(idle.iter_mut()) {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a silent socket was still open {:?} later",
            t0.elapsed()
        );
    }
    let m = node.metrics().await;
    assert!(
        metric(&m, "edgeroom_http_timeouts_total") >= 60.0,
        "timeouts counted: {}",
        metric(&m, "edgeroom_http_timeouts_total")
    );
    node.stop().await;
}

/// One address cannot take every socket: past `sockets_per_ip` its new sockets are
/// closed at once while other addresses are served; past `max_sockets` every new
/// socket is. Places come back when sockets close. Each refusal is counted by cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_capped_per_address_and_per_node() {
    let node = TestNode::start_with(|c| {
        c.limits.sockets_per_ip = 10;
        c.limits.max_sockets = 15;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from([127, 0, 0, 1], node.addr).await);
    }
    let mut over = connect_from([127, 0, 0, 1], node.addr).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the 11th socket from one address was kept"
    );
    // Another address is still served.
    let mut other = connect_from([127, 0, 0, 2], node.addr).await;
    assert_eq!(request(&mut other, "/healthz").await, "HTTP/1.1 200 OK");
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 3], node.addr).await);
    }
    // 10 + 1 + 4 = 15: the node is full, whatever the address.
    let mut full = connect_from([127, 0, 0, 4], node.addr).await;
    assert!(
        closed_within(&mut full, Duration::from_secs(2)).await,
        "a socket past the node's cap was kept"
    );
    for s in held.iter_mut().take(3) {
        assert!(
            !closed_within(s, Duration::from_millis(100)).await,
            "a socket within the caps was closed"
        );
    }
    held.clear();
    drop(other);
    // Places come back: the metrics request itself needs one.
    // (The node may not have seen the closes yet: a refused try is counted too.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tries_refused = 0.0;
    let m = loop {
        match reqwest::get(node.url("/metrics")).await {
            Ok(r) => break r.text().await.unwrap(),
            Err(_) if Instant::now() < deadline => {
                tries_refused += 1.0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no place came back: {e}"),
        }
    };
    let refused = |kind: &str| {
        metric(
            &m,
            &format!("edgeroom_sockets_refused_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(refused("ip"), 1.0);
    assert_eq!(refused("node"), 1.0 + tries_refused);
    assert!(metric(&m, "edgeroom_sockets") <= 2.0, "sockets open: {m}");
    node.stop().await;
}

/// A handshake flood from one address (sessions that never connect a namespace, on one
/// kept-alive connection) once filled every connection slot of the node. Now an address
/// holds at most `engineio_sessions_per_ip` sessions (429 past it, counted), other
/// clients go on connecting, and sessions that never connect a namespace give their
/// places back after `connect_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_holds_only_its_share() {
    let node = TestNode::start_with(|c| {
        c.limits.engineio_sessions_per_ip = 20;
        c.socketio.connect_timeout_ms = 1_000;
    })
    .await;
    let url = node.url("/apps/chat/socket.io/?EIO=4&transport=polling");
    let http = reqwest::Client::new();
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..200 {
        let res = http.get(&url).send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        match status {
            200 => {
                assert!(body.starts_with("0{"), "{body}");
                opened += 1;
            }
            429 => {
                let err: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(err["code"], 4, "{body}");
                refused += 1;
            }
            other => panic!("handshake answered {other}: {body}"),
        }
    }
    assert_eq!((opened, refused), (20, 180));
    // Another address, and a native client, are still served.
    let mut other = connect_from([127, 0, 0, 2], node.addr).await;
    let handshake = "/apps/chat/socket.io/?EIO=4&transport=polling";
    assert_eq!(request(&mut other, handshake).await, "HTTP/1.1 200 OK");
    let mut native = node.client("echo").await;
    let joined = native.join("r", serde_json::json!(null)).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_sessions_refused_total{kind=\"ip\"}"),
        180.0
    );
    // Sessions that never connected a namespace are closed, and their places return.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    node.stop().await;
}

/// `max_connections` holds however many clients arrive at once: each takes a slot
/// before it is accepted (the check and the count used to be two steps), the rest get
/// 503, counted; a slot comes back when its connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_against_clients_arriving_at_once() {
    let node = TestNode::start_with(|c| c.limits.max_connections = 5).await;
    let url = format!("ws://{}/v1/ws?app=echo", node.addr);
    let tries = (0..40).map(|_| tokio_tungstenite::connect_async(url.clone()));
    let results = futures_util::future::join_all(tries).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok((ws, _)) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status().as_u16(), 503);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held.len(), refused), (5, 35));
    // A Socket.IO handshake meets the same cap.
    let res = reqwest::get(node.url("/apps/chat/socket.io/?EIO=4&transport=polling"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_sessions_refused_total{kind=\"node\"}"),
        36.0
    );
    // A slot comes back when its connection ends.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio_tungstenite::connect_async(url.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

/// A value nested 30,000 levels deep fits in 60 KB: it was acknowledged `ok` and
/// reached members as no arguments at all. It is refused with `bad_frame` (and its
/// ref), and nothing is broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_nested_too_deeply_is_refused_not_delivered_empty() {
    let node = TestNode::start().await;
    let mut a = node.client("echo").await;
    let joined = a.join("r", serde_json::json!(null)).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let deep = "[".repeat(30_000) + &"]".repeat(30_000);
    let frame =
        format!(r#"{{"type":"emit","room":"r","event":"echo","data":{deep},"ref":"deep"}}"#);
    a.send_raw(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
        .await;
    let answer = a.next_of("reply").await;
    assert_eq!(answer["ref"], "deep", "{answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_frame", "{answer}");
    // The connection goes on.
    let r = a.emit("r", "echo", serde_json::json!([[["fine"]]])).await;
    assert_eq!(r["data"], serde_json::json!([[["fine"]]]));
    node.stop().await;
}

/// One connection joining and leaving room after room held the node's whole pool of
/// handler instances: every new room of every app failed for 30 s. Now a connection
/// creates at most `room_creations_per_sec` rooms a second (`rate_limited` beyond),
/// one app holds at most `max_instances_per_app` instances (`overloaded` beyond, while
/// other apps still get theirs), and rooms left empty give their instances back at the
/// next housekeeping once their app runs short, not after `instance_idle_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_opening_rooms_cannot_starve_other_apps_of_handler_instances() {
    let node = TestNode::start_with(|c| {
        c.sandbox.max_instances = 20;
        c.sandbox.max_instances_per_app = 15;
        c.limits.room_creations_per_sec = 10;
    })
    .await;
    let joined = |r: &serde_json::Value| r["ok"] == true;

    // One connection, rooms as fast as it can: the bucket's 10, then a refusal each.
    let mut flood = node.client("echo").await;
    let started = Instant::now();
    let (mut created, mut limited) = (0u32, 0u32);
    for i in 0..40 {
        let r = flood
            .join(&format!("flood-{i}"), serde_json::json!(null))
            .await;
        if joined(&r) {
            created += 1;
            let left = flood
                .request(serde_json::json!({"type": "leave", "room": format!("flood-{i}")}))
                .await;
            assert_eq!(left["ok"], true, "{left}");
        } else {
            assert_eq!(r["error"]["code"], "rate_limited", "{r}");
            limited += 1;
        }
    }
    // Refilled at 10 a second while it ran.
    let refilled = (started.elapsed().as_secs_f64() * 10.0).ceil() as u32;
    assert!(
        created <= 10 + refilled,
        "{created} rooms created in {:?}",
        started.elapsed()
    );
    assert!(limited >= 40 - 10 - refilled, "{limited} refused");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_room_creations_refused_total"),
        f64::from(limited)
    );

    // Many connections (one room each, so no bucket runs dry) holding echo rooms: the
    // app's 15 instances, then `overloaded`.
    let mut holders = Vec::new();
    let mut overloaded = 0;
    for i in 0..18 {
        let mut c = node.client("echo").await;
        let r = c.join(&format!("held-{i}"), serde_json::json!(null)).await;
        if joined(&r) {
            holders.push((c, format!("held-{i}")));
        } else {
            assert_eq!(r["error"]["code"], "overloaded", "{r}");
            overloaded += 1;
        }
    }
    // The flood's empty rooms gave their instances back when the app ran short, so the
    // holders got all 15.
    assert_eq!((holders.len(), overloaded), (15, 3));
    // Another app still gets the rest of the node's pool...
    let mut other = node.client("counter").await;
    for i in 0..5 {
        let r = other.join(&format!("c-{i}"), serde_json::json!(null)).await;
        assert!(joined(&r), "counter room {i}: {r}");
    }
    // ...and past the node's 20, any app is refused.
    let r = other.join("c-5", serde_json::json!(null)).await;
    assert_eq!(r["error"]["code"], "overloaded", "{r}");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, r#"edgeroom_instances_refused_total{kind="app"}"#),
        3.0
    );
    assert_eq!(
        metric(&m, r#"edgeroom_instances_refused_total{kind="node"}"#),
        1.0
    );

    // The holders leave: their rooms are empty but keep their instances warm
    // (instance_idle_ms is 30 s), until new rooms need them.
    for (mut c, room) in holders {
        let left = c
            .request(serde_json::json!({"type": "leave", "room": room}))
            .await;
        assert_eq!(left["ok"], true, "{left}");
    }
    let m = node.metrics().await;
    assert_eq!(metric(&m, "edgeroom_handler_instances"), 20.0);
    for i in 0..15 {
        let mut c = node.client("echo").await;
        let r = c.join(&format!("after-{i}"), serde_json::json!(null)).await;
        assert!(joined(&r), "echo room after the holders left {i}: {r}");
    }
    node.stop().await;
}

/// Rooms a node has loaded are capped: past `max_rooms` a join that would load one
/// more is refused with `overloaded` and counted, while rooms already loaded can still
/// be joined. (Left empty, a room stays loaded while it keeps history, so without a
/// cap one client spread over many connections loaded thousands a second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_loaded_on_a_node_are_capped() {
    let node = TestNode::start_with(|c| c.limits.max_rooms = 5).await;
    let mut a = node.client("echo").await;
    for i in 0..5 {
        let r = a.join(&format!("r-{i}"), serde_json::json!(null)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = a.join("r-5", serde_json::json!(null)).await;
    assert_eq!(r["error"]["code"], "overloaded", "{r}");
    let mut b = node.client("counter").await;
    let r = b.join("elsewhere", serde_json::json!(null)).await;
    assert_eq!(r["error"]["code"], "overloaded", "{r}");
    let mut c = node.client("echo").await;
    let r = c.join("r-0", serde_json::json!(null)).await;
    assert_eq!(r["ok"], true, "a loaded room is joined: {r}");
    let m = node.metrics().await;
    assert_eq!(metric(&m, "edgeroom_rooms_refused_total"), 2.0);
    node.stop().await;
}

/// History was bounded by count and age only: 90 MB of 60 KB broadcasts stayed in
/// memory for the history window. Now a room keeps at most `history_max_bytes` of
/// events (the oldest go first), and `edgeroom_history_bytes` says what rooms hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_history_is_bounded_in_bytes() {
    const BUDGET: usize = 1 << 20;
    let node = TestNode::start_with(|c| c.limits.history_max_bytes = BUDGET).await;
    let mut a = node.client("echo").await;
    let joined = a.join("big", serde_json::json!(null)).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let blob = "x".repeat(50_000);
    for i in 0..60 {
        let r = a
            .emit("big", "broadcast", serde_json::json!([i, blob]))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let held = metric(&node.metrics().await, "edgeroom_history_bytes");
    // 60 events of ~100 KB each as counted: 6 MB by count; at most the budget now,
    // and not far below it (an event is ~100 KB).
    assert!(held <= BUDGET as f64, "{held} bytes of history");
    assert!(held >= (BUDGET - 110_000) as f64, "{held} bytes of history");
    node.stop().await;
}

/// The idempotency table was bounded by age only (500 answers of 60 KB held for the
/// history window). Now a room remembers at most `idempotency_max_ids` ids (and
/// `idempotency_max_bytes`), the oldest going first: a retry of a remembered id gets its
/// first answer without running again; a retry of one that went runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_ids_are_bounded_oldest_first() {
    let node = TestNode::start_with(|c| c.limits.idempotency_max_ids = 5).await;
    let mut a = node.client("counter").await;
    let joined = a.join("ids", serde_json::json!(null)).await;
    assert_eq!(joined["ok"], true, "{joined}");
    let incr = |id: u32| {
        serde_json::json!({"type": "emit", "room": "ids", "event": "incr",
            "data": {"by": 1}, "id": format!("k{id}")})
    };
    for id in 1..=7 {
        let r = a.request(incr(id)).await;
        assert_eq!(r["data"]["count"], id, "{r}");
    }
    // k7 is remembered: the same answer, the count unchanged.
    let again = a.request(incr(7)).await;
    assert_eq!(again["data"]["count"], 7, "{again}");
    // k1 went (only five are kept): it runs again.
    let again = a.request(incr(1)).await;
    assert_eq!(again["data"]["count"], 8, "{again}");
    // k1 and k2 made room for k6 and k7, and k3 for k1 again.
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_idempotency_ids_dropped_total"),
        3.0,
        "{m}"
    );
    node.stop().await;
}

/// The issue's measure: a passive member of a chat room that keeps the last hundred
/// messages was sent the whole document after every message, O(n²) in what the room
/// keeps (32× what was sent). Now it gets each message once and what changed in the
/// state: a bounded multiple of what was sent, whatever the room keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_member_receives_state_changes_not_the_whole_document() {
    use crate::common::Client;
    use serde_json::json;
    let node = TestNode::start().await;
    let query = "app=chat&presence=0";
    let mut passive = Client::connect_with(node.addr, query).await;
    passive.join("talk", json!({"user": "quiet"})).await;
    let start = passive.bytes_in;
    // The chat handler allows 5 messages a second per member: many senders.
    const SENDERS: usize = 40;
    const EACH: usize = 5;
    let mut sent = 0;
    for s in 0..SENDERS {
        let mut c = Client::connect_with(node.addr, query).await;
        c.join("talk", json!({"user": format!("u{s}")})).await;
        for i in 0..EACH {
            let frame = json!({"type": "emit", "room": "talk", "event": "message",
                "data": {"text": format!("message {i} from sender {s}, a line of chat")}});
            sent += frame.to_string().len();
            let r = c.request(frame).await;
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let mut messages = 0;
    while messages < SENDERS * EACH {
        let f = passive.recv().await;
        if f["type"] == "event" && f["event"] == "message" {
            messages += 1;
        }
        passive.apply_state(&f);
    }
    // The last state change follows the last event.
    while let Some(f) = passive.try_recv(Duration::from_millis(300)).await {
        passive.apply_state(&f);
    }
    let received = passive.bytes_in - start;
    let ratio = received as f64 / sent as f64;
    println!(
        "sent {sent} bytes in {messages} messages; the passive member received {received} bytes ({ratio:.1}x)"
    );
    let kept = passive.states["talk"]["messages"].as_array().unwrap().len();
    assert_eq!(
        kept, 100,
        "the member's state, patch by patch, is the room's"
    );
    assert_eq!(
        passive.states["talk"],
        node.room("chat", "talk").await["state"],
        "the patched state is the room's"
    );
    assert!(
        ratio < 6.0,
        "{received} bytes received for {sent} sent ({ratio:.1}x)"
    );
}

/// A member's presence is kept by every replica and sent to every member: a handler
/// cannot set one over `limits.max_presence_bytes`. The chat example makes the claimed
/// name the presence, so a 5,000-byte name is refused at the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_presence_is_capped_in_bytes() {
    use crate::common::Client;
    use serde_json::json;
    let node = TestNode::start().await;
    let mut c = Client::connect(node.addr, "chat", "json").await;
    let r = c.join("big", json!({"user": "n".repeat(5_000)})).await;
    assert_eq!(r["error"]["code"], "rejected", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the 4096-byte limit"),
        "{r}"
    );
    assert_eq!(
        c.join("big", json!({"user": "n".repeat(4_000)})).await["ok"],
        true
    );
    let metrics = node.metrics().await;
    assert!(
        metric(
            &metrics,
            "edgeroom_handler_errors_total{kind=\"too_large\"}"
        ) >= 1.0
    );
}

/// A client that stops reading holds a bounded number of bytes, not only of frames:
/// 300 events of 60 KB fit the 1024-frame bound (18 MB held for one reader); past
/// `outbound_queue_bytes` (1 MiB here) it is dropped as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_a_bounded_number_of_bytes() {
    use crate::common::Client;
    use serde_json::json;
    let node = TestNode::start_with(|c| c.limits.outbound_queue_bytes = 1 << 20).await;
    let mut slow = Client::connect_with(node.addr, "app=echo&state=0&presence=0").await;
    assert_eq!(slow.join("big", json!(null)).await["ok"], true);
    let mut talker = node.client("echo").await;
    assert_eq!(talker.join("big", json!(null)).await["ok"], true);
    let blob = "x".repeat(60_000);
    for _ in 0..300 {
        let r = talker.emit("big", "broadcast", json!(blob)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let m = node.metrics().await;
    assert!(
        metric(&m, "edgeroom_slow_consumers_dropped_total") >= 1.0,
        "{m}"
    );
    // Reading now, the slow client gets what had reached its socket, then the reason.
    loop {
        let f = slow.recv().await;
        if f["type"] == "closed" {
            let reason = f["reason"].as_str().unwrap_or("");
            assert!(reason.contains("bytes waiting"), "{f}");
            break;
        }
    }
}

/// A room's state is bounded in bytes (`limits.state_max_bytes`): a handler write that
/// would take it past is refused — the handler's call gets the error, the client the
/// handler's answer — and counted; deleting makes room again (before: no bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_state_is_bounded_in_bytes() {
    use crate::common::{Client, metric};
    use serde_json::json;
    let node = TestNode::start_with(|c| c.limits.state_max_bytes = 64 * 1024).await;
    let mut c = Client::connect(node.addr, "fixture", "json").await;
    assert_eq!(c.join("h", json!(null)).await["ok"], true);
    let hoard = |key: &str| json!({"key": key, "bytes": 10_000});
    for i in 0..6 {
        let r = c.emit("h", "hoard", hoard(&format!("k{i}"))).await;
        assert_eq!(r["data"], "kept", "{r}");
    }
    let r = c.emit("h", "hoard", hoard("k6")).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("over 65536 bytes"), "{r}");
    let state = node.room("fixture", "h").await["state"].to_string();
    assert!(state.len() <= 64 * 1024, "{} bytes of state", state.len());
    assert!(
        metric(
            &node.metrics().await,
            "edgeroom_handler_errors_total{kind=\"state_full\"}"
        ) >= 1.0
    );
    // A replacement of the same size fits; a delete makes room for another.
    assert_eq!(c.emit("h", "hoard", hoard("k0")).await["data"], "kept");
    assert_eq!(
        c.emit("h", "drop", json!({"key": "k1"})).await["data"],
        "dropped"
    );
    assert_eq!(c.emit("h", "hoard", hoard("k6")).await["data"], "kept");
}

/// A standalone room whose history outweighs its content is kept without it: 2,000
/// pushes to a list that keeps 100 are compacted (counted), the content is the same,
/// members patched along the way still hold the room's state, and the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_rooms_history_is_compacted() {
    use crate::common::{Client, metric};
    use serde_json::json;
    let node = TestNode::start().await;
    let mut watcher = Client::connect(node.addr, "fixture", "json").await;
    watcher.join("log", json!(null)).await;
    let mut c = Client::connect(node.addr, "fixture", "json").await;
    assert_eq!(c.join("log", json!(null)).await["ok"], true);
    let compactions =
        || async { metric(&node.metrics().await, "edgeroom_state_compactions_total") };
    // Text that does not compress (a saved document deflates its columns): what grows
    // is the history itself.
    let line = |i: u64| {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 29);
        format!("{i} {x:016x}{:016x}", x.rotate_left(17).wrapping_mul(31))
    };
    for i in 0..2_000 {
        let r = c.emit("log", "keep", json!({"text": line(i)})).await;
        assert!(r["data"].is_number(), "{r}");
        if i % 100 == 0 {
            while let Some(f) = watcher.try_recv(Duration::from_millis(1)).await {
                watcher.apply_state(&f);
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while compactions().await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.emit("log", "keep", json!({"text": "after"})).await;
    while let Some(f) = watcher.try_recv(Duration::from_millis(300)).await {
        watcher.apply_state(&f);
    }
    let room = node.room("fixture", "log").await["state"].clone();
    let log = room["log"].as_array().unwrap();
    assert_eq!(log.len(), 100);
    assert_eq!(log[99]["text"], "after");
    assert_eq!(log[0]["text"], line(1901));
    assert_eq!(
        watcher.states["log"], room,
        "a patched member holds the room's state"
    );
}

/// Resumable sessions are counted and capped (`limits.max_detached_sessions`, and in
/// bytes): past the cap the oldest is dropped — it cannot be resumed and leaves its
/// rooms — and counted; the newest still resume (before: kept uncounted for the whole
/// resume window, however many).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_sessions_are_capped_oldest_first() {
    use crate::common::Client;
    use serde_json::json;
    let node = TestNode::start_with(|c| c.limits.max_detached_sessions = 3).await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(node.addr, "echo", "json").await;
        assert_eq!(c.join("d", json!({"i": i})).await["ok"], true);
        tokens.push(c.token());
        c.abort();
        // One at a time, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = node.metrics().await;
        if metric(&m, "edgeroom_sessions_evicted_total") >= 2.0
            && metric(&m, "edgeroom_sessions_detached") == 3.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "not capped:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dropped ones left the room; the kept ones are still members.
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.room("echo", "d").await["members"]
        .as_array()
        .map_or(0, Vec::len)
        != 3
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            node.room("echo", "d").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = Client::connect(node.addr, "echo", "json").await;
    let r = first
        .request(json!({"type": "resume", "token": tokens[0], "cursors": {"d": ""}}))
        .await;
    assert_eq!(r["error"]["code"], "resume_failed", "{r}");
    let mut last = Client::connect(node.addr, "echo", "json").await;
    let r = last
        .request(json!({"type": "resume", "token": tokens[4], "cursors": {"d": ""}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}
