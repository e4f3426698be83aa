//! A cluster of in-process nodes on loopback (by default three: Virginia, Amsterdam,
//! Pune): real QUIC with mutual TLS, real Raft on redb, the example handlers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgeroom::fleet::{Member, wait_formed};
use edgeroom::{NodeConfig, RunningNode, examples};
use serde_json::Value;

/// A node of a fleet: its name, region and place.
pub type Spec = (&'static str, &'static str, (f64, f64));

/// Virginia, Amsterdam, Pune (the geo data's coordinates).
pub const THREE: [Spec; 3] = [
    ("us-east-1", "us-east", (37.37, -79.82)),
    ("eu-west-1", "eu-west", (52.37, 4.90)),
    ("ap-south-1", "ap-south", (18.52, 73.86)),
];

/// The library's fleet (`edgeroom::fleet`) in a temporary directory, with the tests'
/// compile cache; nodes started on the test's own runtime as `RunningNode`s.
pub struct Fleet {
    pub specs: Vec<Spec>,
    pub dirs: tempfile::TempDir,
    pub peers: Vec<SocketAddr>,
    /// The emulated network between the nodes' peer ports.
    pub wan: edgeroom_transport::Wan,
    pub inner: edgeroom::fleet::Fleet,
}

impl Fleet {
    pub fn new() -> Self {
        Self::of(&THREE)
    }

    pub fn of(specs: &[Spec]) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        let members = specs
            .iter()
            .map(|(name, region, place)| Member::new(name, region, *place).unwrap())
            .collect();
        let inner = edgeroom::fleet::Fleet::new(dirs.path(), members)
            .unwrap()
            .with_config(|c| {
                c.compile_cache_dir = Some(super::compile_cache());
                c.sandbox.max_instances = 64;
            });
        Self {
            specs: specs.to_vec(),
            peers: inner.peers().to_vec(),
            wan: inner.wan().clone(),
            dirs,
            inner,
        }
    }

    pub fn config(&self, i: usize) -> NodeConfig {
        self.inner.config(i)
    }

    /// Starts every node and waits until each has heard from all the others, so tests
    /// start from a cluster whose health view is complete.
    pub async fn start_all(&self) -> Vec<RunningNode> {
        let starting = (0..self.specs.len()).map(|i| edgeroom::start(self.config(i)));
        let nodes = futures_util::future::try_join_all(starting).await.unwrap();
        let all: Vec<&edgeroom_gateway::Gateway> = nodes.iter().map(|n| &*n.node.gateway).collect();
        wait_formed(&all, Duration::from_secs(20)).await.unwrap();
        nodes
    }
}

pub async fn wait_all_alive(node: &RunningNode, count: usize) {
    let me = node.node.gateway.config.node_id.as_str();
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
        if heard == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{me} never heard from every peer: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn url(node: &RunningNode, path: &str) -> String {
    format!("http://{}{path}", node.addr)
}

pub async fn get(node: &RunningNode, path: &str) -> (u16, Value) {
    let r = reqwest::get(url(node, path)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

pub async fn deploy(node: &RunningNode, app: &str, wasm: &[u8], base: Option<u64>) -> (u16, Value) {
    let query = base.map(|b| format!("?base={b}")).unwrap_or_default();
    let r = reqwest::Client::new()
        .put(url(node, &format!("/v1/apps/{app}/handler{query}")))
        .body(wasm.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub fn example(name: &str) -> &'static [u8] {
    examples::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .unwrap()
}

/// Wait until `GET /v1/apps/{app}` on `node` satisfies `check`.
pub async fn wait_app(node: &RunningNode, app: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(node, &format!("/v1/apps/{app}")).await;
        if check(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_version(node: &RunningNode, app: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(node, &format!("/v1/apps/{app}")).await;
        if status == 200 && body["version"] == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never served {app} v{version}: {body}",
            node.node.gateway.config.node_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
