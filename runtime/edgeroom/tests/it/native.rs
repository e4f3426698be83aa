//! The native protocol against a real node with the real `echo` handler.

use crate::common;

use common::{Client, TestNode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_join_emit_reply() {
    let node = TestNode::start().await;
    let mut a = node.client("echo").await;
    assert_eq!(a.welcome["node"], "t1");
    assert_eq!(a.welcome["region"], "test-region");
    assert_eq!(a.welcome["resumed"], false);
    let r = a.join("lobby", json!(null)).await;
    assert_eq!(r["ok"], true, "{r}");
    // A joiner gets a presence snapshot and the state.
    let p = a.next_of("presence").await;
    assert_eq!(p["snapshot"], true);
    assert_eq!(p["joined"][0]["conn"], a.session());
    assert_eq!(a.next_of("state").await["state"], json!({}));

    let r = a.emit("lobby", "echo", json!({"hi": 1})).await;
    assert_eq!(
        r,
        json!({"type": "reply", "ref": 2, "ok": true, "data": {"hi": 1}})
    );

    // Without a reply requested, echo sends the event to the sender only.
    a.send(json!({"type": "emit", "room": "lobby", "event": "echo", "data": "plain"}))
        .await;
    let e = a.next_of("event").await;
    assert_eq!(
        (e["event"].as_str(), &e["data"], e["from"].as_str()),
        (Some("echo"), &json!("plain"), Some(a.session().as_str()))
    );
    assert!(e["cursor"].as_str().unwrap().starts_with("t1:"));

    let who = a.emit("lobby", "whoami", json!(null)).await;
    assert_eq!(
        who["data"],
        json!({"conn": a.session(), "room": "lobby", "node": "t1", "region": "test-region"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_every_json_shape() {
    let node = TestNode::start_with(|c| c.limits.max_frame_bytes = 1 << 20).await;
    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;
    let mut deep = json!("bottom");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let shapes = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1.5),
        json!(9007199254740991u64),
        json!(-9007199254740991i64),
        json!("héllo wörld ✓ 日本語 👋🏽"),
        json!("\u{0000}\u{001f}\"\\/"),
        json!([]),
        json!({}),
        json!({"nested": {"a": [1, {"b": [null, false]}]}}),
        deep,
        json!("x".repeat(200_000)),
    ];
    for v in shapes {
        let r = a.emit("r", "echo", v.clone()).await;
        assert_eq!(r["ok"], true);
        assert_eq!(r["data"], v);
    }
    // Several arguments travel as `args`.
    let r = a
        .request(
            json!({"type": "emit", "room": "r", "event": "echo", "args": [1, "two", {"3": [3]}]}),
        )
        .await;
    assert_eq!(r["args"], json!([1, "two", {"3": [3]}]));
    let r = a
        .request(json!({"type": "emit", "room": "r", "event": "echo", "args": []}))
        .await;
    assert_eq!(r["args"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_binary_in_json_and_msgpack() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let node = TestNode::start_with(|c| c.limits.max_frame_bytes = 1 << 20).await;
    let all: Vec<u8> = (0..=255).collect();
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();

    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;
    for bytes in [vec![], all.clone(), big.clone()] {
        let v =
            json!({"file": {"$binary": b64(&bytes)}, "list": [{"$binary": b64(&bytes)}], "n": 1});
        let r = a.emit("r", "echo", v.clone()).await;
        assert_eq!(r["data"], v);
    }

    let mut m = Client::connect(node.addr, "echo", "msgpack").await;
    m.join("r", json!(null)).await;
    for bytes in [vec![], all, big] {
        let v = json!({"deep": {"file": {"$bin": bytes}}, "top": {"$bin": bytes}, "s": "ok"});
        let r = m.emit("r", "echo", v.clone()).await;
        assert_eq!(r["ok"], true);
        assert_eq!(r["data"], v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_everyone_but_the_sender_before_its_reply() {
    let node = TestNode::start().await;
    let mut a = node.client("echo").await;
    let mut b = node.client("echo").await;
    let mut c = node.client("echo").await;
    let mut other_room = node.client("echo").await;
    for x in [&mut a, &mut b, &mut c] {
        x.join("room1", json!(null)).await;
    }
    other_room.join("room2", json!(null)).await;
    let r = a.emit("room1", "broadcast", json!({"m": 1})).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r.get("data"), None);
    assert_eq!(r["args"], json!([]));
    for x in [&mut b, &mut c] {
        let e = x.next_of("event").await;
        assert_eq!(
            (e["event"].as_str(), &e["data"]),
            (Some("broadcast"), &json!({"m": 1}))
        );
        assert_eq!(e["from"], a.session());
    }
    // The sender and the other room get nothing.
    a.send(json!({"type": "ping", "ref": 99})).await;
    let f = a.next_of("reply").await;
    assert_eq!(f["ref"], 99);
    assert!(
        a.backlog.iter().all(|f| f["type"] != "event"),
        "{:?}",
        a.backlog
    );
    assert!(
        other_room
            .try_recv(std::time::Duration::from_millis(200))
            .await
            .is_none_or(|f| f["type"] != "event")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_tells_others_who_joined_and_left() {
    let node = TestNode::start().await;
    let mut a = node.client("chat").await;
    a.join("lobby", json!({"user": "ann"})).await;
    let mut b = node.client("chat").await;
    b.join("lobby", json!({"user": "bob"})).await;
    let p = a.next_of("presence").await;
    let p = if p["snapshot"] == true {
        a.next_of("presence").await
    } else {
        p
    };
    assert_eq!(
        p["joined"],
        json!([{"conn": b.session(), "presence": {"user": "bob", "verified": false}}])
    );
    let snap = b.next_of("presence").await;
    assert_eq!(snap["snapshot"], true);
    assert_eq!(snap["joined"].as_array().unwrap().len(), 2);
    let r = b.request(json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(r["ok"], true);
    let p = a.next_of("presence").await;
    assert_eq!(p["left"], json!([b.session()]));
}

/// A connection may leave out presence and state frames: it still gets its replies and
/// the room's events. A value that is not a yes or a no is refused before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_leave_out_presence_and_state_frames() {
    let node = TestNode::start().await;
    let mut quiet = Client::connect_with(node.addr, "app=chat&presence=0&state=false").await;
    assert_eq!(
        quiet.join("lobby", json!({"user": "ann"})).await["ok"],
        true
    );
    let mut loud = node.client("chat").await;
    assert_eq!(loud.join("lobby", json!({"user": "bob"})).await["ok"], true);
    let r = loud.emit("lobby", "message", json!({"text": "hi"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let mut got = Vec::new();
    loop {
        let f = quiet.recv().await;
        let event = f["type"] == "event";
        got.push(f);
        if event {
            break;
        }
    }
    assert_eq!(got.last().unwrap()["data"]["text"], "hi");
    while let Some(f) = quiet.try_recv(std::time::Duration::from_millis(300)).await {
        got.push(f);
    }
    let kinds: Vec<&str> = got.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(
        !kinds.iter().any(|k| *k == "presence" || *k == "state"),
        "{kinds:?}"
    );
    // The other connection got both.
    assert_eq!(loud.next_of("presence").await["snapshot"], true);
    loud.next_of("state").await;
    let bad = format!("ws://{}/v1/ws?app=chat&state=maybe", node.addr);
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 400);
            let body: Value = serde_json::from_slice(r.body().as_deref().unwrap_or(b"")).unwrap();
            assert_eq!(body["error"]["code"], "bad_format");
        }
        other => panic!("state=maybe was not refused: {:?}", other.map(|_| ())),
    }
}

async fn expect_error(c: &mut Client, frame: Value, code: &str) {
    let r = c.request(frame.clone()).await;
    assert_eq!(r["ok"], false, "{frame} -> {r}");
    assert_eq!(r["error"]["code"], code, "{frame} -> {r}");
    assert!(!r["error"]["message"].as_str().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_codes_and_the_connection_stays_up() {
    let node = TestNode::start().await;
    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;

    // Frames that are not JSON carry no ref: the answer is an `error` frame.
    a.send_raw(Message::Text("{not json".into())).await;
    let e = a.next_of("error").await;
    assert_eq!(e["code"], "bad_frame");
    a.send_raw(Message::Binary(vec![0xc1, 0x00].into())).await;
    assert_eq!(a.next_of("error").await["code"], "bad_frame");

    expect_error(&mut a, json!({"type": "dance"}), "unknown_type").await;
    expect_error(&mut a, json!({"room": "r"}), "missing_field").await;
    expect_error(&mut a, json!({"type": "join"}), "missing_field").await;
    expect_error(
        &mut a,
        json!({"type": "emit", "room": "r"}),
        "missing_field",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "join", "room": "bad room"}),
        "invalid_name",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "join", "room": "x".repeat(200)}),
        "invalid_name",
    )
    .await;
    expect_error(&mut a, json!({"type": "join", "room": 5}), "bad_frame").await;
    expect_error(
        &mut a,
        json!({"type": "join", "room": "r"}),
        "already_joined",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "emit", "room": "elsewhere", "event": "echo"}),
        "not_joined",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "leave", "room": "elsewhere"}),
        "not_joined",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "emit", "room": "r", "event": "echo", "data": "x".repeat(70_000)}),
        "too_large",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "emit", "room": "r", "event": "nope"}),
        "rejected",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "resume", "token": "forged.token"}),
        "bad_token",
    )
    .await;

    // Still fully working.
    let r = a.emit("r", "echo", json!("still here")).await;
    assert_eq!(r["data"], "still here");
    let m = node.metrics().await;
    assert!(
        common::metric(&m, "edgeroom_bad_frames_total{kind=\"bad_frame\"}") >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_apps_and_non_websocket_requests_are_refused() {
    let node = TestNode::start().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?app=nosuch", node.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?app=Bad!", node.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let r = reqwest::get(node.url("/v1/ws?app=echo")).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_dropped_and_the_room_goes_on() {
    let node = TestNode::start_with(|c| c.limits.outbound_queue = 8).await;
    let mut sender = node.client("echo").await;
    let mut healthy = node.client("echo").await;
    let mut stalled = node.client("echo").await;
    for c in [&mut sender, &mut healthy, &mut stalled] {
        c.join("busy", json!(null)).await;
    }
    // `stalled` never reads again; big broadcasts fill its socket, then its queue.
    let blob = "z".repeat(60_000);
    let started = std::time::Instant::now();
    let mut healthy_got = 0;
    for i in 0..400 {
        let r = sender
            .emit("busy", "broadcast", json!({"i": i, "blob": blob}))
            .await;
        assert_eq!(r["ok"], true);
        // The healthy member keeps up.
        let e = healthy.next_of("event").await;
        assert_eq!(e["data"]["i"], i);
        healthy_got += 1;
    }
    assert_eq!(healthy_got, 400);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let m = node.metrics().await;
    assert_eq!(
        common::metric(&m, "edgeroom_slow_consumers_dropped_total"),
        1.0,
        "{m}"
    );
    // The stalled client, reading again, finds a close with the reason after what it was sent.
    let mut reason = None;
    while let Some(f) = stalled.try_recv(std::time::Duration::from_secs(5)).await {
        if f["type"] == "closed" {
            reason = f["reason"].as_str().map(str::to_owned);
            break;
        }
    }
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("slow consumer")),
        "{reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_limit_closes_with_a_reason() {
    let node = TestNode::start_with(|c| c.limits.max_frame_hard_bytes = 100_000).await;
    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;
    a.send(json!({"type": "emit", "room": "r", "event": "echo", "data": "y".repeat(150_000)}))
        .await;
    let closed = a.next_of("closed").await;
    assert!(
        closed["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("protocol error"),
        "{closed}"
    );
    // Others are unaffected.
    let mut b = node.client("echo").await;
    b.join("r", json!(null)).await;
    assert_eq!(b.emit("r", "echo", json!(1)).await["data"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_on_join_sends_reaches_the_newcomer_after_its_reply() {
    let node = TestNode::start().await;
    let mut old = node.client("fixture").await;
    old.join("g", json!(null)).await;
    let mut new = node.client("fixture").await;
    let r = new.join("g", json!({"greet": true})).await;
    assert_eq!(r["ok"], true);
    let hello = new.next_of("event").await;
    assert_eq!(
        (hello["event"].as_str(), &hello["data"]),
        (Some("hello"), &json!("welcome"))
    );
    let arrived = old.next_of("event").await;
    assert_eq!(arrived["data"], new.session());
}
