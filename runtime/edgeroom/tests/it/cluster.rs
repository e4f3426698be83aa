//! Whole nodes in a cluster, in one process: each with its HTTP gateway, QUIC endpoint
//! (mutual TLS from a cluster CA), Raft on redb in its own directory, and the example
//! handlers compiled for real.

use crate::common;

use common::fleet::*;

use std::time::{Duration, Instant};

use edgeroom::RunningNode;
use edgeroom_host::session::token::Claims;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_any_node_is_served_by_every_node() {
    let fleet = Fleet::new();
    let nodes = fleet.start_all().await;

    // Deployed through the third node; the first and second serve it too.
    let (status, body) = deploy(&nodes[2], "echo", example("echo"), Some(0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["unchanged"], false);
    for n in &nodes {
        wait_version(n, "echo", 1).await;
    }
    let mut client = common::Client::connect(nodes[1].addr, "echo", "json").await;
    assert_eq!(client.join("r", json!({})).await["ok"], true);
    let reply = client.emit("r", "echo", json!({"hi": 1})).await;
    assert_eq!(reply["data"], json!({"hi": 1}), "{reply}");

    // Same bytes again: no new version. A stale base: 409 with the live version.
    let (status, body) = deploy(&nodes[0], "echo", example("echo"), None).await;
    assert_eq!((status, body["unchanged"].clone()), (200, json!(true)));
    let (status, body) = deploy(&nodes[1], "echo", example("chat"), Some(0)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    // Bad wasm is refused by the node that received it, before anything is committed.
    let (status, body) = deploy(&nodes[1], "echo", b"not wasm", None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = deploy(&nodes[1], "echo", example("chat"), Some(1)).await;
    assert_eq!((status, body["version"].clone()), (200, json!(2)), "{body}");
    for n in &nodes {
        wait_version(n, "echo", 2).await;
    }

    // Every node sees the same leader, three voters and three nodes with their places.
    let mut leaders = Vec::new();
    for n in &nodes {
        let (_, c) = get(n, "/v1/cluster").await;
        assert_eq!(c["cluster"]["voters"].as_array().unwrap().len(), 3, "{c}");
        assert_eq!(c["nodes"].as_array().unwrap().len(), 3, "{c}");
        leaders.push(c["cluster"]["leader"].clone());
    }
    assert!(
        leaders.iter().all(|l| l == &leaders[0] && l.is_string()),
        "{leaders:?}"
    );

    // One cluster secret: a resume token one node signs verifies on another.
    let claims = Claims {
        session: edgeroom_proto::ids::ConnId::from_trusted("c-1".into()),
        app: edgeroom_proto::ids::AppName::new("echo").unwrap(),
        node: Some(edgeroom_proto::ids::NodeId::new("us-east-1").unwrap()),
        generation: 0,
    };
    let token = nodes[0].node.gateway.tokens.sign(&claims);
    assert_eq!(nodes[2].node.gateway.tokens.verify(&token).unwrap(), claims);

    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_serves_what_was_deployed_meanwhile() {
    let fleet = Fleet::new();
    let mut nodes = fleet.start_all().await;
    let (status, _) = deploy(&nodes[0], "counter", example("counter"), None).await;
    assert_eq!(status, 200);
    for n in &nodes {
        wait_version(n, "counter", 1).await;
    }
    let down = nodes.pop().unwrap();
    down.shutdown(Duration::from_secs(2)).await;

    // Two of three voters: still a quorum.
    let started = Instant::now();
    let (status, body) = deploy(&nodes[1], "counter", example("echo"), Some(1)).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // In one process the stopped node's UDP socket closes once its last task has let go
    // of it; a restarted process would not wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        match edgeroom::start(fleet.config(2)).await {
            Ok(node) => break node,
            Err(e) if Instant::now() < deadline && format!("{e:#}").contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("restart: {e:#}"),
        }
    };
    wait_version(&restarted, "counter", 2).await;
    nodes.push(restarted);
    for n in nodes {
        n.shutdown(Duration::from_secs(2)).await;
    }
}

fn regions(route: &Value) -> Vec<String> {
    route["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_ranks_live_regions_and_drops_a_dead_one_within_the_timeout() {
    let fleet = Fleet::new();
    let mut nodes = fleet.start_all().await;
    // London: Amsterdam, then Virginia, then Pune.
    let (status, route) = get(&nodes[0], "/v1/route?lat=51.5&lon=-0.12").await;
    assert_eq!(status, 200, "{route}");
    assert_eq!(regions(&route), ["eu-west", "us-east", "ap-south"]);
    let first = &route["regions"][0];
    assert_eq!(first["urls"][0], format!("http://{}", nodes[1].addr));
    // 360 km from London to Amsterdam: a few ms over fibre.
    let rtt = first["estimated_rtt_ms"].as_f64().unwrap();
    assert!((2.0..20.0).contains(&rtt), "{first}");
    // Mumbai asks a node on the other side of the world: Pune first all the same.
    let (_, route) = get(&nodes[0], "/v1/route?lat=19.07&lon=72.88").await;
    assert_eq!(regions(&route)[0], "ap-south");

    for bad in [
        "",
        "?lat=91&lon=0",
        "?lat=abc&lon=1",
        "?lat=10",
        "?lat=NaN&lon=0",
    ] {
        let (status, body) = get(&nodes[0], &format!("/v1/route{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_location");
    }

    // The nodes have been pinging each other: round trips are known.
    let (_, cluster) = get(&nodes[0], "/v1/cluster").await;
    let peers: Vec<&Value> = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node"] != "us-east-1")
        .collect();
    assert!(peers.iter().all(|n| n["alive"] == true), "{cluster}");

    // Amsterdam's only node dies: it leaves the ranking within the detection timeout.
    let dead = nodes.remove(1);
    dead.shutdown(Duration::from_secs(1)).await;
    let died = Instant::now();
    loop {
        let (_, route) = get(&nodes[0], "/v1/route?lat=51.5&lon=-0.12").await;
        if regions(&route) == ["us-east", "ap-south"] {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(5),
            "eu-west still routed to {:?} after it died: {route}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        died.elapsed() >= Duration::from_secs(2),
        "declared dead too early"
    );
    let (_, cluster) = get(&nodes[0], "/v1/cluster").await;
    let eu = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "eu-west-1")
        .unwrap()
        .clone();
    assert_eq!(eu["alive"], false, "{cluster}");
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_work_on_every_node_within_their_scope_until_revoked() {
    let fleet = Fleet::new();
    let starting = (0..THREE.len()).map(|i| {
        let mut c = fleet.config(i);
        c.dev = false;
        c.admin_key = Some(format!("key-of-{i}"));
        edgeroom::start(c)
    });
    let nodes = futures_util::future::try_join_all(starting).await.unwrap();
    let put = |node: &RunningNode, key: &str| {
        reqwest::Client::new()
            .put(url(node, "/v1/apps/echo/handler"))
            .bearer_auth(key)
            .body(example("echo"))
            .send()
    };
    // Node 0's key, used on node 2, once the control plane has shared it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = put(&nodes[2], "key-of-0").await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 401);
        assert!(Instant::now() < deadline, "key-of-0 never worked on node 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(put(&nodes[1], "nobody's key").await.unwrap().status(), 401);

    // A key made on one node works on every node, within its scope; revoked on
    // another, it stops working everywhere.
    let http = reqwest::Client::new();
    let made: Value = http
        .post(url(&nodes[0], "/v1/keys"))
        .bearer_auth("key-of-0")
        .header("content-type", "application/json")
        .body(json!({"name": "echo deployer", "app": "echo"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, key) = (made["id"].as_str().unwrap(), made["key"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match put(&nodes[2], key).await.unwrap().status().as_u16() {
            200 => break,
            401 => assert!(
                Instant::now() < deadline,
                "the new key never worked on node 2"
            ),
            other => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = http
        .put(url(&nodes[2], "/v1/apps/counter/handler"))
        .bearer_auth(key)
        .body(example("counter"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403, "an echo key deployed counter");
    // A fresh client each time: the refused deploy above was answered before its body
    // was read, and a connection the server then closed must not be reused.
    let list = || async {
        let listed: Value = reqwest::Client::new()
            .get(url(&nodes[2], "/v1/keys"))
            .bearer_auth("key-of-2")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let listed = list().await;
        let ids: Vec<&str> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["id"].as_str())
            .collect();
        let want = [id, "node:us-east-1", "node:eu-west-1", "node:ap-south-1"];
        if want.iter().all(|w| ids.contains(w)) {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "not every key is listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !listed.to_string().contains(key),
        "a listing showed a secret"
    );
    let revoked = reqwest::Client::new()
        .delete(url(&nodes[1], &format!("/v1/keys/{id}")))
        .bearer_auth("key-of-1")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    for n in [&nodes[0], &nodes[2]] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while put(n, key).await.unwrap().status() != 401 {
            assert!(Instant::now() < deadline, "a revoked key still works");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}

/// A peer — a node with a certificate from the cluster's CA — whose rooms stream
/// starts with bytes that do not parse has its stream dropped, and the node counts it
/// (`edgeroom_peer_frames_refused{kind="rooms"}`); it goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_frame_that_does_not_parse_is_refused_and_counted() {
    let fleet = Fleet::new();
    let nodes = fleet.start_all().await;
    let certs = fleet.dirs.path().join("certs");
    let ca = edgeroom_transport::ClusterCa::load(&certs).unwrap();
    let intruder = edgeroom_proto::ids::NodeId::new("odd-1").unwrap();
    ca.issue_into(&certs, &intruder).unwrap();
    let tls = edgeroom_transport::NodeTls::load(&certs, intruder).unwrap();
    let endpoint = edgeroom_transport::Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &tls,
        None,
        edgeroom_transport::Timing::default(),
    )
    .unwrap();
    let target = nodes[0].node.gateway.config.node_id.clone();
    let peer = endpoint.connect(&target, fleet.peers[0]).await.unwrap();
    let (mut send, _recv) = peer
        .open_raw(edgeroom_transport::Purpose::Rooms)
        .await
        .unwrap();
    // A length prefix, then a body that is no `PeerMsg`.
    let mut frame = 8u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xff; 8]);
    send.write_all(&frame).await.unwrap();
    let refused = r#"edgeroom_peer_frames_refused_total{kind="rooms"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(url(&nodes[0], "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if common::metric(&text, refused) == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "never counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = get(&nodes[0], "/healthz").await;
    assert_eq!(status, 200);
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}

/// A cluster node whose handle is dropped without a drain lets go of everything: its
/// peers find it silent (no task keeps answering for it) and its port stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropped_without_a_drain_goes_silent_and_stops_serving() {
    let fleet = Fleet::new();
    let mut nodes = fleet.start_all().await;
    let dropped = nodes.remove(1);
    let (addr, id) = (dropped.addr, dropped.node.gateway.config.node_id.clone());
    drop(dropped);
    let health = nodes[0]
        .node
        .gateway
        .cluster
        .as_ref()
        .unwrap()
        .health
        .clone();
    let gone = Instant::now();
    while health.is_alive(&id) {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "{id} still answers heartbeats {:?} after its handle was dropped",
            gone.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "{addr} still accepts connections");
}

/// The secret that signs resume tokens, and an app's shared token key, are kept sealed
/// with the fleet's secrets key: no node's data directory (its Raft log and snapshots,
/// its store) holds either in the clear, and both still work on every node (before: in
/// the clear in `raft.redb` and the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_is_sealed_at_rest() {
    let fleet = Fleet::new();
    let nodes = fleet.start_all().await;
    let (status, body) = deploy(&nodes[0], "echo", example("echo"), None).await;
    assert_eq!(status, 200, "{body}");
    common::add_test_key(nodes[0].addr, "echo").await;
    // Another node checks a client's token with the key (opened from the log).
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = format!(
        "ws://{}/v1/ws?app=echo&token={}",
        nodes[2].addr,
        common::user_token("ann")
    );
    loop {
        // A token that does not verify is refused before the upgrade (401).
        if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the key never worked on node 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secret = nodes[0]
        .node
        .gateway
        .cluster
        .as_ref()
        .unwrap()
        .secret()
        .unwrap()
        .unwrap();
    // A token one node signed verifies on another.
    let claims = Claims {
        session: edgeroom_proto::ids::ConnId::random(),
        app: edgeroom_proto::ids::AppName::new("echo").unwrap(),
        node: None,
        generation: 0,
    };
    let token = nodes[0].node.gateway.tokens.sign(&claims);
    assert!(nodes[2].node.gateway.tokens.verify(&token).is_ok());
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
    let mut files = vec![fleet.dirs.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if !path.ends_with("secrets.key") {
            let bytes = std::fs::read(&path).unwrap();
            for (what, secret) in [
                ("the cluster secret", secret.as_str()),
                ("an app's key", common::TEST_KEY),
            ] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds {what} in the clear",
                    path.display()
                );
            }
            scanned += 1;
        }
    }
    assert!(scanned > 3, "{scanned} files scanned");
}
