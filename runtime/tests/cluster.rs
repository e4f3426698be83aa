//! Whole nodes in a cluster, in one process: each with its HTTP gateway, QUIC endpoint
//! (mutual TLS from a cluster CA), Raft on redb in its own directory, and the example
//! handlers compiled for real.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgeroom::config::ClusterConfig;
use edgeroom::ids::NodeId;
use edgeroom::session::token::Claims;
use edgeroom::transport::ClusterCa;
use edgeroom::{NodeConfig, RunningNode, examples};
use serde_json::{Value, json};

const NAMES: [&str; 3] = ["us-east-1", "eu-west-1", "ap-south-1"];
/// Virginia, Amsterdam, Pune (the geo data's coordinates).
const PLACES: [(f64, f64); 3] = [(37.37, -79.82), (52.37, 4.90), (18.52, 73.86)];

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Fleet {
    dirs: tempfile::TempDir,
    peers: Vec<SocketAddr>,
}

impl Fleet {
    fn new() -> Self {
        let dirs = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("test").unwrap();
        ca.save(&dirs.path().join("certs")).unwrap();
        for name in NAMES {
            ca.issue_into(&dirs.path().join("certs"), &NodeId::new(name).unwrap())
                .unwrap();
        }
        let peers = NAMES
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        Self { dirs, peers }
    }

    fn config(&self, i: usize) -> NodeConfig {
        let name = NAMES[i];
        let mut c = common::config(&self.dirs.path().join(name));
        c.node_id = NodeId::new(name).unwrap();
        c.region = name.trim_end_matches("-1").into();
        let mut cluster = ClusterConfig::new(self.peers[i], self.dirs.path().join("certs"));
        cluster.voters = NAMES
            .iter()
            .zip(&self.peers)
            .map(|(n, a)| format!("{n}@{a}"))
            .collect();
        (cluster.lat, cluster.lon) = PLACES[i];
        cluster.raft_heartbeat_ms = 100;
        cluster.raft_election_ms = 500;
        c.cluster = Some(cluster);
        c
    }

    /// Starts every node and waits until each has heard from all the others, so tests
    /// start from a cluster whose health view is complete.
    async fn start_all(&self) -> Vec<RunningNode> {
        let starting = (0..NAMES.len()).map(|i| edgeroom::start(self.config(i)));
        let nodes = futures_util::future::try_join_all(starting).await.unwrap();
        for n in &nodes {
            wait_all_alive(n).await;
        }
        nodes
    }
}

async fn wait_all_alive(node: &RunningNode) {
    let me = node.node.config.node_id.as_str();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, cluster) = get(node, "/v1/cluster").await;
        // Every node is in the control state, and every other one has answered a ping.
        let heard = cluster["nodes"].as_array().map_or(0, |nodes| {
            nodes
                .iter()
                .filter(|n| n["node"] == me || (n["alive"] == true && n["rtt_ms"].is_number()))
                .count()
        });
        if heard == NAMES.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{me} never heard from every peer: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn url(node: &RunningNode, path: &str) -> String {
    format!("http://{}{path}", node.addr)
}

async fn get(node: &RunningNode, path: &str) -> (u16, Value) {
    let r = reqwest::get(url(node, path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn deploy(node: &RunningNode, app: &str, wasm: &[u8], base: Option<u64>) -> (u16, Value) {
    let query = base.map(|b| format!("?base={b}")).unwrap_or_default();
    let r = reqwest::Client::new()
        .put(url(node, &format!("/v1/apps/{app}/handler{query}")))
        .body(wasm.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn example(name: &str) -> &'static [u8] {
    examples::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .unwrap()
}

async fn wait_version(node: &RunningNode, app: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(node, &format!("/v1/apps/{app}")).await;
        if status == 200 && body["version"] == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served {app} v{version}: {body}",
            node.node.config.node_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
        s: "c-1".into(),
        a: "echo".into(),
        n: "us-east-1".into(),
    };
    let token = nodes[0].node.tokens.sign(&claims);
    assert_eq!(nodes[2].node.tokens.verify(&token).unwrap(), claims);

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
async fn an_admin_key_configured_on_one_node_works_on_every_node() {
    let fleet = Fleet::new();
    let starting = (0..NAMES.len()).map(|i| {
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
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}
