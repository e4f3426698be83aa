//! The `chat` and `counter` example handlers, end to end.

use crate::common;

use common::{Client, TestNode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_needs_a_user_and_moderates() {
    let node = TestNode::start().await;
    let mut anon = node.client("chat").await;
    let r = anon.join("lobby", json!({})).await;
    assert_eq!(r["error"]["code"], "rejected");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth.user"),
        "{r}"
    );
    // Refused joins leave no trace.
    assert_eq!(node.room("chat", "lobby").await["members"], json!([]));

    let mut ann = node.client("chat").await;
    let mut bob = node.client("chat").await;
    ann.join("lobby", json!({"user": "ann"})).await;
    bob.join("lobby", json!({"user": "bob"})).await;
    let r = ann
        .emit("lobby", "message", json!({"text": "hello bob"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    for c in [&mut ann, &mut bob] {
        let e = c.next_of("event").await;
        assert_eq!(e["event"], "message");
        assert_eq!(
            (e["data"]["user"].as_str(), e["data"]["text"].as_str()),
            (Some("ann"), Some("hello bob"))
        );
        assert!(e["data"]["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let r = ann
        .emit("lobby", "message", json!({"text": "you BADWORD!"}))
        .await;
    assert_eq!(
        (r["error"]["code"].as_str(), r["error"]["message"].as_str()),
        (Some("rejected"), Some("blocked"))
    );
    // Presence is the user.
    let view = node.room("chat", "lobby").await;
    let users: Vec<_> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["presence"]["user"].clone())
        .collect();
    assert!(
        users.contains(&json!("ann")) && users.contains(&json!("bob")),
        "{view}"
    );
}

/// The room's first verified user owns it and may kick; nobody else may. A kicked
/// member is told why, is gone from the room, and others see it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_owner_kicks_and_nobody_else_can() {
    let node = TestNode::start().await;
    common::add_test_key(node.addr, "chat").await;
    let mut ann = common::Client::connect_as(node.addr, "chat", "ann").await;
    let mut bob = common::Client::connect_as(node.addr, "chat", "bob").await;
    ann.join("mod", json!({})).await;
    bob.join("mod", json!({})).await;
    let r = bob.emit("mod", "kick", json!({"user": "ann"})).await;
    assert_eq!(
        r["error"]["message"], "only the room's owner can kick",
        "{r}"
    );
    let r = ann.emit("mod", "kick", json!({"user": "zed"})).await;
    assert_eq!(r["error"]["message"], "zed is not in this room", "{r}");
    let r = ann
        .emit("mod", "kick", json!({"user": "bob", "reason": "spam"}))
        .await;
    assert_eq!(r["data"], json!({"kicked": 1}), "{r}");
    let k = bob.next_of("kicked").await;
    assert_eq!(
        (k["room"].as_str(), k["reason"].as_str()),
        (Some("mod"), Some("spam"))
    );
    loop {
        let p = ann.next_of("presence").await;
        if p["left"] == json!([bob.session()]) {
            break;
        }
    }
    let r = bob
        .emit("mod", "message", json!({"text": "still here?"}))
        .await;
    assert_eq!(r["error"]["code"], "not_joined", "{r}");
    let users: Vec<_> = node.room("chat", "mod").await["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["presence"]["user"].clone())
        .collect();
    assert_eq!(users, [json!("ann")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_rate_limits_and_keeps_the_last_hundred() {
    let node = TestNode::start().await;
    let mut first = node.client("chat").await;
    first.join("busy", json!({"user": "u0"})).await;
    for i in 0..5 {
        assert_eq!(
            first
                .emit("busy", "message", json!({"text": format!("m{i}")}))
                .await["ok"],
            true
        );
    }
    let r = first
        .emit("busy", "message", json!({"text": "sixth"}))
        .await;
    assert_eq!(r["error"]["message"], "rate limited", "{r}");

    // 21 more members send 5 each: 110 stored in all, the last 100 kept.
    let mut others = Vec::new();
    for u in 1..=21 {
        let mut c = Client::connect(node.addr, "chat", "json").await;
        c.join("busy", json!({"user": format!("u{u}")})).await;
        others.push(c);
    }
    for (u, c) in others.iter_mut().enumerate() {
        for i in 0..5 {
            let r = c
                .emit(
                    "busy",
                    "message",
                    json!({"text": format!("u{}-{i}", u + 1)}),
                )
                .await;
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let view = node.room("chat", "busy").await;
    let messages = view["state"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 100);
    assert_eq!(messages[99]["text"], "u21-4");
    assert_eq!(messages[0]["text"], "u2-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_sums_concurrent_increments_and_pushes_state() {
    let node = TestNode::start().await;
    let mut watcher = node.client("counter").await;
    watcher.join("c", json!(null)).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, "counter", "json").await;
            c.join("c", json!(null)).await;
            for _ in 0..25 {
                let r = c.emit("c", "incr", json!({"by": 2})).await;
                assert_eq!(r["ok"], true, "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = watcher.emit("c", "get", json!(null)).await;
    assert_eq!(r["data"], json!({"count": 400}));
    let r = watcher.emit("c", "incr", json!(null)).await;
    assert_eq!(r["data"], json!({"count": 401}));
    // Members get what changed after each change; what they have then is the total.
    let mut last = json!(null);
    while let Some(f) = watcher
        .try_recv(std::time::Duration::from_millis(300))
        .await
    {
        if let Some(state) = watcher.apply_state(&f) {
            last = state;
        }
    }
    assert_eq!(last, json!({"count": 401}));
    let r = watcher.emit("c", "incr", json!({"by": "lots"})).await;
    assert_eq!(r["error"]["code"], "rejected");
}
