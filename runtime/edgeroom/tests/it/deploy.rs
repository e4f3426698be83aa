//! Deploys: the admin API, hot swaps under traffic, and the registry across restarts.

use crate::common;

use std::time::Duration;

use common::{Client, TestNode, metric};
use edgeroom_proto::ids::AppName;
use serde_json::{Value, json};

async fn deploy(node: &TestNode, app: &str, wasm: &[u8]) -> Value {
    let r = reqwest::Client::new()
        .put(node.url(&format!("/v1/apps/{app}/handler")))
        .body(wasm.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_deploy_under_traffic_keeps_connections_and_state() {
    let node = TestNode::start().await;
    let v1 = deploy(&node, "live", edgeroom::examples::COUNTER).await;
    assert_eq!(v1["version"], 1);
    let mut a = node.client("live").await;
    a.join("room", json!(null)).await;
    for _ in 0..5 {
        a.emit("room", "incr", json!(null)).await;
    }

    // Traffic from another member while versions change under it.
    let addr = node.addr;
    let traffic = tokio::spawn(async move {
        let mut t = Client::connect(addr, "live", "json").await;
        t.join("room", json!(null)).await;
        let mut replies = 0;
        for _ in 0..300 {
            let r = t.emit("room", "get", json!(null)).await;
            assert_eq!(r["type"], "reply", "{r}");
            replies += 1;
        }
        (replies, t)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v2 = deploy(&node, "live", edgeroom::examples::ECHO).await;
    assert_eq!(v2["version"], 2);
    // The next event runs the new version.
    let r = a.emit("room", "echo", json!("v2")).await;
    assert_eq!(r["data"], "v2", "{r}");
    let v3 = deploy(&node, "live", edgeroom::examples::COUNTER).await;
    assert_eq!(v3["version"], 3);
    // The state outlived two swaps.
    let r = a.emit("room", "get", json!(null)).await;
    assert_eq!(r["data"], json!({"count": 5}));
    let (replies, _still_open) = traffic.await.unwrap();
    assert_eq!(replies, 300);
    // Nobody was disconnected.
    let m = node.metrics().await;
    assert_eq!(metric(&m, "edgeroom_connections"), 2.0, "{m}");
    // Deploying the same bytes again changes nothing.
    let again = deploy(&node, "live", edgeroom::examples::COUNTER).await;
    assert_eq!(
        (again["version"].as_u64(), again["unchanged"].as_bool()),
        (Some(3), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_apps_rooms_health_and_metrics() {
    let node = TestNode::start().await;
    let app: Value = reqwest::get(node.url("/v1/apps/chat"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app["version"], 1);
    assert_eq!(
        app["sha256"],
        edgeroom_sandbox::sha256_hex(edgeroom::examples::CHAT)
    );
    let mut c = node.client("chat").await;
    c.join("/lobby", json!({"user": "ann"})).await;
    c.emit("/lobby", "message", json!({"text": "hi"})).await;
    let room = node.room("chat", "/lobby").await;
    assert_eq!(
        room["members"][0]["presence"],
        json!({"user": "ann", "verified": false})
    );
    assert_eq!(room["members"][0]["connected"], true);
    assert_eq!(room["state"]["messages"][0]["text"], "hi");
    let unknown = reqwest::get(node.url("/v1/apps/nosuch/rooms/x"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let health: Value = reqwest::get(node.url("/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let m = node.metrics().await;
    for name in [
        "edgeroom_connections",
        "edgeroom_rooms",
        "edgeroom_events_total",
        "edgeroom_events_per_second",
        "edgeroom_handler_call_seconds_bucket",
        "edgeroom_slow_consumers_dropped_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    assert!(metric(&m, "edgeroom_events_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_key_outside_dev_mode() {
    let node = TestNode::start_with(|c| {
        c.dev = false;
        c.admin_key = Some("s3cret".into());
    })
    .await;
    // A refused upload is answered before its body is read, and the server then closes
    // that connection: do not reuse connections, or a request may race the close.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = node.url("/v1/apps/x/handler");
    let r = http
        .put(&url)
        .body(edgeroom::examples::ECHO.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .put(&url)
        .bearer_auth("wrong")
        .body(edgeroom::examples::ECHO.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .put(&url)
        .bearer_auth("s3cret")
        .body(edgeroom::examples::ECHO.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(node.url("/v1/apps/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        http.get(node.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_and_room_state_survive_a_restart() {
    let node = TestNode::start().await;
    deploy(&node, "kept", edgeroom::examples::COUNTER).await;
    let mut c = node.client("kept").await;
    c.join("r", json!(null)).await;
    c.emit("r", "incr", json!({"by": 41})).await;
    c.close().await;
    let dir = node.stop().await;

    let mut config = common::config(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let running = edgeroom::start(config).await.unwrap();
    assert!(
        running
            .node
            .gateway
            .apps
            .exists(&AppName::new("kept").unwrap())
    );
    assert!(
        running
            .node
            .gateway
            .apps
            .exists(&AppName::new("echo").unwrap())
    );
    let mut c = Client::connect(running.addr, "kept", "json").await;
    c.join("r", json!(null)).await;
    let r = c.emit("r", "incr", json!(null)).await;
    assert_eq!(r["data"], json!({"count": 42}));
    running.shutdown(Duration::from_secs(5)).await;
}
