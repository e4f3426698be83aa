//! Misbehaving handlers (the sandbox fixture) and bad uploads.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestNode, metric};
use serde_json::{Value, json};

async fn failing(node: &TestNode, event: &str) -> (Value, Duration) {
    let mut c = node.client("fixture").await;
    c.join(&format!("room-{event}"), json!(null)).await;
    let t = Instant::now();
    let r = c.emit(&format!("room-{event}"), event, json!(null)).await;
    let took = t.elapsed();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "handler_failed", "{r}");
    // The same room serves the next event from a fresh instance.
    let pong = c.emit(&format!("room-{event}"), "ping", json!(null)).await;
    assert_eq!(pong["data"], "pong", "{pong}");
    (r, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_deadline_and_others_keep_going() {
    let node = TestNode::start_with(|c| c.sandbox.call_deadline_ms = 1000).await;
    let mut spinner = node.client("fixture").await;
    spinner.join("spin-room", json!(null)).await;
    let mut other = node.client("echo").await;
    other.join("calm", json!(null)).await;

    spinner
        .send(json!({"type": "emit", "room": "spin-room", "event": "spin", "ref": 1}))
        .await;
    // While it spins, another room answers promptly.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = Instant::now();
    let r = other.emit("calm", "echo", json!("quick")).await;
    assert_eq!(r["data"], "quick");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "other room waited {:?}",
        t.elapsed()
    );

    let r = spinner.next_of("reply").await;
    assert_eq!(r["error"]["code"], "handler_failed");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("deadline"),
        "{r}"
    );

    let (_, took) = failing(&node, "spin").await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "spin took {took:?}"
    );
    let m = node.metrics().await;
    assert!(
        metric(&m, "edgeroom_handler_errors_total{kind=\"timeout\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_cap() {
    let node = TestNode::start_with(|c| c.sandbox.max_memory_bytes = 16 << 20).await;
    let (r, _) = failing(&node, "bloat").await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("memory"),
        "{r}"
    );
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_handler_errors_total{kind=\"memory\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_ends_only_that_call() {
    let node = TestNode::start().await;
    let mut watcher = node.client("fixture").await;
    watcher.join("room-crash", json!(null)).await;
    let (r, _) = failing(&node, "crash").await;
    assert!(
        r["error"]["message"].as_str().unwrap().contains("crashed"),
        "{r}"
    );
    // Members of the room were not disturbed.
    let pong = watcher.emit("room-crash", "ping", json!(null)).await;
    assert_eq!(pong["data"], "pong");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_handler_errors_total{kind=\"trap\"}"),
        1.0,
        "{m}"
    );
}

async fn put(node: &TestNode, app: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(node.url(&format!("/v1/apps/{app}/handler")))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_a_reason() {
    let node = TestNode::start_with(|c| c.limits.max_handler_bytes = 4 << 20).await;
    let (s, b) = put(&node, "x", b"definitely not wasm".to_vec()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_handler")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("magic"),
        "{b}"
    );
    // A core module, not a component.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let (s, b) = put(&node, "x", core_module).await;
    assert_eq!(s, 400, "{b}");
    // A component with a truncated body.
    let cut = edgeroom::examples::ECHO[..edgeroom::examples::ECHO.len() / 2].to_vec();
    let (s, b) = put(&node, "x", cut).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = put(&node, "x", vec![0; 5 << 20]).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{b}"
    );
    let (s, b) = put(&node, "Not_Valid", edgeroom::examples::ECHO.to_vec()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_name")),
        "{b}"
    );
    // None of that created the app.
    let r = reqwest::get(node.url("/v1/apps/x")).await.unwrap();
    assert_eq!(r.status(), 404);
    // A good upload still works.
    let (s, b) = put(&node, "x", edgeroom::examples::ECHO.to_vec()).await;
    assert_eq!((s, b["version"].as_u64()), (200, Some(1)), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_reaching_for_the_filesystem_or_clock_is_refused() {
    let node = TestNode::start().await;
    let (s, b) = put(&node, "sneaky", common::FORBIDDEN.to_vec()).await;
    assert_eq!(s, 400, "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("wasi:filesystem") || msg.contains("wasi:clocks"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_drop_their_instance_then_unload_keeping_state() {
    let node = TestNode::start_with(|c| {
        c.limits.instance_idle_ms = 100;
        c.limits.room_idle_ms = 1500;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let mut c = node.client("counter").await;
    c.join("idle", json!(null)).await;
    c.emit("idle", "incr", json!({"by": 7})).await;
    assert_eq!(
        metric(&node.metrics().await, "edgeroom_handler_instances"),
        1.0
    );
    c.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node.metrics().await, "edgeroom_handler_instances") > 0.0 {
        assert!(Instant::now() < deadline, "instance never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while metric(&node.metrics().await, "edgeroom_rooms") > 0.0 {
        assert!(Instant::now() < deadline, "room never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back again: a fresh actor and instance, the saved state.
    let mut c = node.client("counter").await;
    c.join("idle", json!(null)).await;
    assert_eq!(
        c.emit("idle", "get", json!(null)).await["data"],
        json!({"count": 7})
    );
}

/// A handler cannot exhaust its node through the host: one call's host calls are
/// capped (the call ends, the room goes on), its log lines are rate-limited, and a 0 ms
/// timer that re-arms itself waits `limits.min_timer_ms` each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cannot_exhaust_its_node_through_the_host() {
    let node = TestNode::start().await;
    let (r, _) = failing(&node, "flood").await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host-call budget exceeded"),
        "{r}"
    );

    let mut c = node.client("fixture").await;
    c.join("chatty", json!(null)).await;
    assert_eq!(c.emit("chatty", "chatter", json!(null)).await["ok"], true);

    c.join("timer", json!(null)).await;
    assert_eq!(c.emit("timer", "rearm", json!(null)).await["ok"], true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = node.room("fixture", "timer").await["state"]["ticks"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        (20..=110).contains(&ticks),
        "{ticks} timer runs in a second (at most one per 10 ms)"
    );

    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "edgeroom_handler_errors_total{kind=\"budget\"}"),
        1.0,
        "{m}"
    );
    assert!(
        metric(&m, "edgeroom_handler_errors_total{kind=\"log_rate\"}") >= 450.0,
        "{m}"
    );
}
