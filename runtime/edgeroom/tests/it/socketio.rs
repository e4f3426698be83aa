//! The Socket.IO gateway against third-party clients: the `socket.io-client@4` suite in
//! `tests/socketio-js/` (Node) and a `python-socketio` client in `tests/socketio-py/`,
//! each run against a real node started here. `./test.sh` installs both clients.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{TestNode, run_client, tests_dir};
use edgeroom_proto::ids::AppName;

/// A node whose default app is `echo`, with `scoped` (echo, namespaces limited to
/// `/allowed-<digits>`) besides the usual apps.
async fn node() -> TestNode {
    let node = TestNode::start_with(|c| c.default_app = Some(AppName::new("echo").unwrap())).await;
    let apps = &node.running.as_ref().unwrap().node.gateway.apps;
    let scoped = AppName::new("scoped").unwrap();
    apps.deploy(&scoped, edgeroom::examples::ECHO.to_vec())
        .await
        .unwrap();
    let config = edgeroom_proto::app::AppConfig {
        namespaces: Some(r"/allowed-\d+".into()),
        ..Default::default()
    };
    apps.configure(&scoped, config).await.unwrap();
    // `secured`: the chat handler behind tokens signed with the test key.
    let secured = AppName::new("secured").unwrap();
    apps.deploy(&secured, edgeroom::examples::CHAT.to_vec())
        .await
        .unwrap();
    common::configure_auth(
        node.addr,
        "secured",
        serde_json::json!({"keys": [{"kid": "k1", "alg": "HS256", "key": common::TEST_KEY}]}),
    )
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_suite() {
    let node = node().await;
    let dir = tests_dir("socketio-js");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io-client is not installed: run ./test.sh (it runs npm ci in {})",
        dir.display()
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(&dir)
        // A test that hangs fails alone, naming itself, instead of stalling the suite.
        .args([
            "--test",
            "--test-reporter=spec",
            "--test-timeout=60000",
            "client.test.mjs",
        ])
        .env("EDGEROOM_URL", node.url(""))
        .env("EDGEROOM_TEST_KEY", common::TEST_KEY);
    run_client(cmd, "the socket.io-client suite").await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_client() {
    let node = node().await;
    // ./test.sh installs python-socketio in a virtualenv and names its interpreter.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    let python = std::env::var("EDGEROOM_PYTHON")
        .ok()
        .or_else(|| venv.exists().then(|| venv.display().to_string()))
        .unwrap_or_else(|| "python3".into());
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(tests_dir("socketio-py").join("test_client.py"))
        .env("EDGEROOM_URL", node.url(""));
    run_client(cmd, "the python-socketio client").await;
    node.stop().await;
}

/// Open an Engine.IO polling session on the default app; returns its URL (with sid).
async fn open_polling(node: &TestNode, http: &reqwest::Client) -> String {
    let base = node.url("/socket.io/?EIO=4&transport=polling");
    let open = http.get(&base).send().await.unwrap().text().await.unwrap();
    let handshake: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    format!("{base}&sid={}", handshake["sid"].as_str().unwrap())
}

/// A node that stops tells its Socket.IO clients (a close packet to a parked poll), so
/// they reconnect elsewhere, and it does not wait for them to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_socketio_sessions() {
    let node = node().await;
    let http = reqwest::Client::new();
    let url = open_polling(&node, &http).await;
    let posted = http.post(&url).body("40").send().await.unwrap();
    assert_eq!(posted.text().await.unwrap(), "ok");
    let connected = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(connected.starts_with("40{\"sid\""), "{connected}");
    // Park a poll, then stop the node.
    let parked = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    node.stop().await;
    let body = tokio::time::timeout(Duration::from_secs(5), parked)
        .await
        .expect("the parked poll was not answered")
        .unwrap();
    assert!(body.ends_with('1'), "parked poll got {body:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

/// A client's close can overtake the poll it sent just before: that poll still gets
/// its noop, and the session is gone after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_raced_the_close_gets_its_noop() {
    let node = node().await;
    let http = reqwest::Client::new();
    let url = open_polling(&node, &http).await;
    let closed = http.post(&url).body("1").send().await.unwrap();
    assert_eq!(closed.text().await.unwrap(), "ok");
    let late = http.get(&url).send().await.unwrap();
    assert_eq!(late.status(), 200);
    assert_eq!(late.text().await.unwrap(), "6");
    let after = http.get(&url).send().await.unwrap();
    assert_eq!(after.status(), 400);
    node.stop().await;
}

/// A POST answered without its body being read (an unknown sid, or a body over
/// `max_payload`) still gets its answer: the node reads the body and drops it, as the
/// reference server does. Answering first and closing with bytes unread reset the
/// connection, and the client never saw the 400 (most often with large bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_that_is_refused_gets_its_answer_not_a_reset() {
    let node = node().await;
    let big = vec![b'4'; 2_000_000];
    for _ in 0..10 {
        // A fresh connection each time, as a client whose session died would.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let url = node.url("/socket.io/?EIO=4&transport=polling&sid=nosuchsession");
        let res = http.post(&url).body(big.clone()).send().await;
        let res = res.expect("an answer, not a reset");
        assert_eq!(res.status().as_u16(), 400);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], 1, "{body}");
    }
    // Over max_payload on a live session: 413, and the session goes on.
    let http = reqwest::Client::new();
    let url = open_polling(&node, &http).await;
    let res = http.post(&url).body(big).send().await.expect("an answer");
    assert_eq!(res.status().as_u16(), 413);
    let res = http.post(&url).body("40").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let connected = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(connected.starts_with("40{"), "{connected}");
    node.stop().await;
}
