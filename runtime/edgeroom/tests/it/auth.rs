//! Client credentials through a real node: per-app JWT keys set through the admin API,
//! tokens on the native connection (query or `authenticate` frame), room capabilities,
//! expiry and refresh, key rotation, resume bound to the user, and the chat example's
//! moderation trusting only the verified identity.

use std::time::Duration;

use crate::common;

use common::{
    Client, TEST_KEY as K1, TestNode, WAIT, configure_auth, now_s, sign_token as token,
    user_token as user,
};
use serde_json::{Value, json};

const K2: &str = "the second test secret, 32+ bytes long";

async fn configure(node: &TestNode, app: &str, auth: Value) -> Value {
    configure_auth(node.addr, app, auth).await
}

fn hs(kid: &str, secret: &str) -> Value {
    json!({"kid": kid, "alg": "HS256", "key": secret})
}

async fn connect(node: &TestNode, app: &str, token: &str) -> Client {
    Client::connect_with(node.addr, &format!("app={app}&token={token}")).await
}

/// The HTTP status a WebSocket upgrade got instead of switching protocols.
async fn refused_status(node: &TestNode, query: &str) -> u16 {
    let url = format!("ws://{}/v1/ws?{query}", node.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_with_keys_needs_a_valid_token_and_hides_its_secret() {
    let node = TestNode::start().await;
    let body = configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    assert!(!body.to_string().contains(K1), "{body}");
    let shown: Value = reqwest::get(node.url("/v1/apps/echo"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!shown.to_string().contains(K1), "{shown}");
    assert_eq!(shown["config"]["auth"]["keys"][0]["kid"], "k1", "{shown}");

    // Forged, expired and garbage tokens are refused before the upgrade.
    let forged = token("k1", K2, json!({"sub": "eve"}));
    assert_eq!(
        refused_status(&node, &format!("app=echo&token={forged}")).await,
        401
    );
    let expired = token("k1", K1, json!({"sub": "ann", "exp": now_s() - 5}));
    assert_eq!(
        refused_status(&node, &format!("app=echo&token={expired}")).await,
        401
    );
    assert_eq!(refused_status(&node, "app=echo&token=garbage").await, 401);

    // No token: connected, but nothing works until one is presented.
    let mut c = Client::connect(node.addr, "echo", "json").await;
    let r = c.join("r", json!({})).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let r = c
        .request(json!({"type": "authenticate", "token": forged}))
        .await;
    assert_eq!(r["error"]["code"], "bad_token", "{r}");
    let r = c
        .request(json!({"type": "authenticate", "token": user("ann")}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(c.join("r", json!({})).await["ok"], true);

    // A valid token in the query works at once; so does any app without keys.
    let mut t = connect(&node, "echo", &user("bob")).await;
    assert_eq!(t.join("r", json!({})).await["ok"], true);
    let mut anon = Client::connect(node.addr, "counter", "json").await;
    assert_eq!(anon.join("r", json!({})).await["ok"], true);

    let metrics = node.metrics().await;
    assert!(
        common::metric(&metrics, "edgeroom_auth_refused_total{kind=\"bad_token\"}") >= 3.0,
        "{metrics}"
    );
    for kind in ["token_expired", "unauthorized"] {
        let line = format!("edgeroom_auth_refused_total{{kind=\"{kind}\"}}");
        assert!(common::metric(&metrics, &line) >= 1.0, "{kind}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_bound_join_publish_and_presence_per_room() {
    let node = TestNode::start().await;
    configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    let reader = token(
        "k1",
        K1,
        json!({"sub": "reader", "caps": [{"rooms": ["public:*"], "allow": ["join"]}]}),
    );
    let mut r = connect(&node, "echo", &reader).await;
    let mut w = connect(&node, "echo", &user("writer")).await;
    let e = r.join("private", json!({})).await;
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    assert_eq!(r.join("public:1", json!({})).await["ok"], true);
    let e = r.emit("public:1", "broadcast", json!("hi")).await;
    assert_eq!(e["error"]["code"], "forbidden", "{e}");

    // The reader has no presence capability: the writer's join reaches it only as
    // the writer's event that follows.
    assert_eq!(w.join("public:1", json!({})).await["ok"], true);
    let e = w.emit("public:1", "broadcast", json!("hello")).await;
    assert_eq!(e["ok"], true, "{e}");
    loop {
        let f = r.recv().await;
        assert_ne!(
            f["type"], "presence",
            "presence without the capability: {f}"
        );
        if f["type"] == "event" {
            assert_eq!(f["data"], json!("hello"), "{f}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expires_unless_refreshed_with_the_same_user() {
    let node = TestNode::start().await;
    configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    let short = |sub: &str| token("k1", K1, json!({"sub": sub, "exp": now_s() + 2}));

    let mut lapsing = connect(&node, "echo", &short("ann")).await;
    assert_eq!(lapsing.join("r", json!({})).await["ok"], true);
    let mut refreshed = connect(&node, "echo", &short("bob")).await;
    let r = refreshed
        .request(json!({"type": "authenticate", "token": user("mallory")}))
        .await;
    assert_eq!(r["error"]["code"], "bad_token", "another user: {r}");
    let r = refreshed
        .request(json!({"type": "authenticate", "token": user("bob")}))
        .await;
    assert_eq!(r["ok"], true, "{r}");

    let closed = lapsing.next_of("closed").await;
    assert_eq!(closed["code"], 4001, "{closed}");
    assert_eq!(closed["reason"], "token expired", "{closed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = refreshed.request(json!({"type": "ping"})).await;
    assert_eq!(r["ok"], true, "the refreshed connection is still open: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_with_overlap() {
    let node = TestNode::start().await;
    configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    let old = user("ann");
    let new = token("k2", K2, json!({"sub": "ann"}));
    assert_eq!(
        refused_status(&node, &format!("app=echo&token={new}")).await,
        401
    );
    configure(&node, "echo", json!({"keys": [hs("k1", K1), hs("k2", K2)]})).await;
    for t in [&old, &new] {
        let mut c = connect(&node, "echo", t).await;
        assert_eq!(c.join("r", json!({})).await["ok"], true);
    }
    configure(&node, "echo", json!({"keys": [hs("k2", K2)]})).await;
    assert_eq!(
        refused_status(&node, &format!("app=echo&token={old}")).await,
        401
    );
    let mut c = connect(&node, "echo", &new).await;
    assert_eq!(c.join("r", json!({})).await["ok"], true);
}

/// A captured resume token alone takes over nothing of a verified user's session: the
/// resuming connection must carry a token of the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_session_is_resumed_only_by_its_user() {
    let node = TestNode::start().await;
    configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    let mut ann = connect(&node, "echo", &user("ann")).await;
    assert_eq!(ann.join("r", json!({})).await["ok"], true);
    let stolen = ann.token();

    let mut thief = connect(&node, "echo", &user("mallory")).await;
    let r = thief
        .request(json!({"type": "resume", "token": stolen}))
        .await;
    assert_eq!(r["error"]["code"], "resume_failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another user"),
        "{r}"
    );
    // Ann was not cut off.
    assert_eq!(ann.request(json!({"type": "ping"})).await["ok"], true);

    // Ann herself, on a new connection, takes it over.
    let mut again = connect(&node, "echo", &user("ann")).await;
    let r = again
        .request(json!({"type": "resume", "token": stolen}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let closed = ann.next_of("closed").await;
    assert!(
        closed["reason"].as_str().unwrap().contains("resumed"),
        "{closed}"
    );
}

/// The issue's attack: an anonymous client claiming the owner's name in `auth.user`
/// kicked a member. Now ownership and kicks follow the verified identity only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_moderation_trusts_the_token_not_the_claimed_name() {
    let node = TestNode::start().await;
    configure(
        &node,
        "chat",
        json!({"keys": [hs("k1", K1)], "anonymous": true}),
    )
    .await;
    // The impostor comes first and claims the owner's name: it owns nothing.
    let mut mallory = Client::connect(node.addr, "chat", "json").await;
    assert_eq!(
        mallory.join("mod", json!({"user": "ann"})).await["ok"],
        true
    );
    let mut ann = connect(&node, "chat", &user("ann")).await;
    assert_eq!(
        ann.join("mod", json!({"user": "someone else"})).await["ok"],
        true
    );
    let mut bob = connect(&node, "chat", &user("bob")).await;
    assert_eq!(bob.join("mod", json!({})).await["ok"], true);

    let r = mallory.emit("mod", "kick", json!({"user": "bob"})).await;
    assert_eq!(
        r["error"]["message"], "only the room's owner can kick",
        "{r}"
    );
    let r = bob
        .emit("mod", "message", json!({"text": "still here"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");

    // Ann's name is her token's, whatever her auth said, and she owns the room.
    let view = node.room("chat", "mod").await;
    let verified: Vec<&Value> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["presence"])
        .filter(|p| p["verified"] == true)
        .collect();
    assert!(
        verified.contains(&&json!({"user": "ann", "verified": true})),
        "{view}"
    );
    let r = ann.emit("mod", "kick", json!({"user": "bob"})).await;
    assert_eq!(r["data"], json!({"kicked": 1}), "{r}");
    let k = tokio::time::timeout(WAIT, bob.next_of("kicked"))
        .await
        .unwrap();
    assert_eq!(k["room"], "mod", "{k}");
}

/// A member reads its room's history only where its token allows `history`: the
/// events it may see (not one sent privately to another member), oldest first, in
/// pages that end at `limit`, each with the cursor to read on from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_read_only_with_the_history_capability() {
    let node = TestNode::start().await;
    configure(&node, "echo", json!({"keys": [hs("k1", K1)]})).await;
    let reader = token(
        "k1",
        K1,
        json!({"sub": "reader", "caps": [{"rooms": ["*"], "allow": ["join", "history"]}]}),
    );
    let joiner = token(
        "k1",
        K1,
        json!({"sub": "joiner", "caps": [{"rooms": ["*"], "allow": ["join", "publish"]}]}),
    );
    let mut w = connect(&node, "echo", &joiner).await;
    assert_eq!(w.join("log", json!({})).await["ok"], true);
    for i in 0..5 {
        assert_eq!(
            w.emit("log", "broadcast", json!({"i": i})).await["ok"],
            true
        );
    }
    // An echo sent to the writer alone (no ref: the handler sends it as an event) is
    // in the log, but for the writer only.
    w.send(json!({"type": "emit", "room": "log", "event": "echo", "data": "mine"}))
        .await;
    let mine = w.next_of("event").await;
    assert_eq!(mine["data"], "mine", "{mine}");
    let history = w.request(json!({"type": "history", "room": "log"})).await;
    assert_eq!(
        history["error"]["code"], "forbidden",
        "without the capability: {history}"
    );

    let read = |cursor: Option<&str>, limit: u32| {
        let mut f = json!({"type": "history", "room": "log", "limit": limit});
        if let Some(c) = cursor {
            f["cursor"] = json!(c);
        }
        f
    };
    let mut r = connect(&node, "echo", &reader).await;
    let e = r.request(read(None, 10)).await;
    assert_eq!(e["error"]["code"], "not_joined", "{e}");
    assert_eq!(r.join("log", json!({})).await["ok"], true);
    let page = r.request(read(None, 3)).await;
    assert_eq!(page["ok"], true, "{page}");
    let events = page["data"]["events"].as_array().unwrap().clone();
    let got: Vec<Value> = events.iter().map(|e| e["data"]["i"].clone()).collect();
    assert_eq!(got, vec![json!(0), json!(1), json!(2)], "{page}");
    assert_eq!(page["data"]["more"], true, "{page}");
    assert_eq!(page["data"]["missing"], 0, "{page}");
    let after = events[2]["cursor"].as_str().unwrap();
    let rest = r.request(read(Some(after), 10)).await;
    let events = rest["data"]["events"].as_array().unwrap();
    let got: Vec<Value> = events.iter().map(|e| e["data"]["i"].clone()).collect();
    assert_eq!(
        got,
        vec![json!(3), json!(4)],
        "the private echo is not the reader's: {rest}"
    );
    assert_eq!(rest["data"]["more"], false, "{rest}");
    assert!(
        events
            .iter()
            .all(|e| e["event"] == "broadcast" && e["room"] == "log")
    );
}
