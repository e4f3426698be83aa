//! Resume on the same node: every missed event, in order, once.

use crate::common;

use common::{Client, TestNode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_resumes_with_everything_it_missed() {
    let node = TestNode::start().await;
    let mut talker = node.client("echo").await;
    let mut a = node.client("echo").await;
    talker.join("r", json!(null)).await;
    a.join("r", json!(null)).await;

    for i in 0..5 {
        talker.emit("r", "broadcast", json!(i)).await;
    }
    let mut cursor = String::new();
    for i in 0..5 {
        let e = a.next_of("event").await;
        assert_eq!(e["data"], i);
        cursor = e["cursor"].as_str().unwrap().to_owned();
    }
    let (session, token) = (a.session(), a.token());
    a.abort();

    // Events while it is away, including one sent to it alone.
    for i in 5..25 {
        talker.emit("r", "broadcast", json!(i)).await;
    }
    let mut b = Client::connect(node.addr, "echo", "json").await;
    let r = b
        .request(json!({"type": "resume", "token": token, "cursors": {"r": cursor}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let w = b
        .backlog
        .iter()
        .find(|f| f["type"] == "welcome")
        .cloned()
        .expect("a welcome for the resumed session");
    assert_eq!(w["resumed"], true);
    assert_eq!(w["session"], session);
    let mut got = Vec::new();
    while got.len() < 20 {
        let e = b.next_of("event").await;
        got.push(e["data"].as_i64().unwrap());
    }
    assert_eq!(got, (5..25).collect::<Vec<_>>());
    // Then live traffic, with nothing repeated.
    talker.emit("r", "broadcast", json!("live")).await;
    let e = b.next_of("event").await;
    assert_eq!(e["data"], "live");
    // Same session id: the handler sees the same connection.
    let who = b.emit("r", "whoami", json!(null)).await;
    assert_eq!(who["data"]["conn"], session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_connection_that_has_not_noticed_it_is_dead() {
    let node = TestNode::start().await;
    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;
    let token = a.token();
    let mut b = Client::connect(node.addr, "echo", "json").await;
    let r = b.request(json!({"type": "resume", "token": token})).await;
    assert_eq!(r["ok"], true, "{r}");
    let closed = a.next_of("closed").await;
    assert!(
        closed["reason"].as_str().unwrap().contains("resumed"),
        "{closed}"
    );
    let r = b.emit("r", "echo", json!(1)).await;
    assert_eq!(r["data"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_stale_tokens_are_refused() {
    let node = TestNode::start_with(|c| {
        c.limits.resume_window_ms = 300;
        c.limits.presence_grace_ms = 100;
    })
    .await;
    let mut a = node.client("echo").await;
    a.join("r", json!(null)).await;
    let token = a.token();
    a.abort();
    // Past the window the session is gone; the client carries on as a new session.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut b = node.client("echo").await;
    let r = b.request(json!({"type": "resume", "token": token})).await;
    assert_eq!(r["error"]["code"], "resume_failed", "{r}");
    let r = b
        .request(json!({"type": "resume", "token": format!("{token}x")}))
        .await;
    assert_eq!(r["error"]["code"], "bad_token", "{r}");
    // A token for another app.
    let mut c = node.client("chat").await;
    let r = c
        .request(json!({"type": "resume", "token": b.token()}))
        .await;
    assert_eq!(r["error"]["code"], "bad_token", "{r}");
    // And a resume after joining is out of order.
    b.join("r", json!(null)).await;
    let r = b
        .request(json!({"type": "resume", "token": b.token()}))
        .await;
    assert_eq!(r["error"]["code"], "bad_state", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_waits_out_the_grace_then_the_member_leaves() {
    let node = TestNode::start_with(|c| c.limits.presence_grace_ms = 500).await;
    let mut a = node.client("chat").await;
    a.join("lobby", json!({"user": "ann"})).await;
    let mut b = node.client("chat").await;
    b.join("lobby", json!({"user": "bob"})).await;
    let bob = b.session();
    b.abort();
    let view = node.room("chat", "lobby").await;
    assert_eq!(view["members"].as_array().unwrap().len(), 2, "{view}");
    let left = loop {
        let p = a.next_of("presence").await;
        if !p["left"].as_array().unwrap().is_empty() {
            break p;
        }
    };
    assert_eq!(left["left"], json!([bob]));
    let view = node.room("chat", "lobby").await;
    assert_eq!(view["members"].as_array().unwrap().len(), 1, "{view}");
}

/// A captured resume token (of an anonymous session) can neither close the live
/// session — the server probes the holding connection, and a client that answers keeps
/// its session — nor outlive the owner's next resume, which issues the next token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_token_neither_closes_a_live_session_nor_outlives_a_resume() {
    let node = TestNode::start().await;
    let mut victim = node.client("echo").await;
    assert_eq!(victim.join("r", json!(null)).await["ok"], true);
    let stolen = victim.token();

    // The victim's client keeps reading (so it answers pings) while the thief tries.
    let mut thief = node.client("echo").await;
    let resume = json!({"type": "resume", "token": stolen});
    let reading = async {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if victim.try_recv(left).await.is_none() {
                break;
            }
        }
    };
    let (r, ()) = tokio::join!(thief.request(resume.clone()), reading);
    assert_eq!(r["error"]["code"], "resume_failed", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("live"),
        "{r}"
    );
    assert_eq!(victim.request(json!({"type": "ping"})).await["ok"], true);

    // The victim's connection drops; it resumes, and gets the session's next token.
    victim.abort();
    let mut back = node.client("echo").await;
    let r = back.request(resume.clone()).await;
    assert_eq!(r["ok"], true, "{r}");
    let welcome = back
        .backlog
        .iter()
        .find(|f| f["type"] == "welcome" && f["resumed"] == true)
        .cloned()
        .expect("a welcome after the resume");
    let next = welcome["resume_token"].as_str().unwrap().to_owned();
    assert_ne!(next, stolen, "the token rotates on resume");

    // The spent token resumes nothing; the new one does.
    back.abort();
    let mut again = node.client("echo").await;
    let r = again.request(resume).await;
    assert_eq!(r["error"]["code"], "resume_failed", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("replaced"),
        "{r}"
    );
    let r = again
        .request(json!({"type": "resume", "token": next}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}
