//! The Raft control plane with real parts: in-process nodes, each with its own QUIC
//! endpoint (mutual TLS), redb storage in its own directory and real openraft.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeroom_cluster::control::network::WriteError;
use edgeroom_cluster::control::state::{Command, NodeInfo, Response};
use edgeroom_cluster::control::{ControlPlane, Member, RaftTiming};
use edgeroom_cluster::mesh;
use edgeroom_proto::ids::{AppName, NodeId};
use edgeroom_transport::{ClusterCa, Endpoint, NodeTls, Timing, Wan};

pub(crate) struct TestNode {
    name: String,
    /// Its identity, kept across a restart as a node's files keep it.
    tls: NodeTls,
    pub(crate) addr: SocketAddr,
    dir: std::path::PathBuf,
    pub(crate) control: Arc<ControlPlane>,
    pub(crate) endpoint: Arc<Endpoint>,
    serving: tokio::task::JoinHandle<()>,
}

fn timing() -> RaftTiming {
    RaftTiming {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(400),
        election_max: Duration::from_millis(800),
        snapshot_every: 20,
    }
}

async fn start(ca: &ClusterCa, name: &str, addr: SocketAddr, dir: &std::path::Path) -> TestNode {
    start_behind(ca, name, addr, dir, None).await
}

/// A node whose peer traffic goes through `wan` when given (cuts, delays).
async fn start_behind(
    ca: &ClusterCa,
    name: &str,
    addr: SocketAddr,
    dir: &std::path::Path,
    wan: Option<&Wan>,
) -> TestNode {
    let node = NodeId::new(name).unwrap();
    let (cert, key) = ca.issue(&node).unwrap();
    let tls = NodeTls::from_pem(node, ca.cert_pem(), &cert, &key).unwrap();
    start_as(tls, addr, dir, wan).await
}

/// Start the node `tls` names: afresh, or again on the directory and port it had.
async fn start_as(
    tls: NodeTls,
    addr: SocketAddr,
    dir: &std::path::Path,
    wan: Option<&Wan>,
) -> TestNode {
    let node = tls.node.clone();
    // A restarted node takes its old port back; the old socket may take a moment to go.
    let deadline = Instant::now() + Duration::from_secs(5);
    let endpoint = loop {
        match Endpoint::bind(addr, &tls, wan, Timing::default()) {
            Ok(e) => break Arc::new(e),
            Err(e) if Instant::now() > deadline => panic!("rebinding {addr}: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let addr = endpoint.local_addr().unwrap();
    let control = ControlPlane::start(
        dir,
        endpoint.clone(),
        Member::new(&node, addr),
        timing(),
        Default::default(),
    )
    .await
    .unwrap();
    // Just the control plane: nothing above the cluster takes the handed-over streams.
    let (rooms, _) = tokio::sync::mpsc::channel(1);
    let (forward, _) = tokio::sync::mpsc::channel(1);
    let handoff = mesh::Handoff {
        rooms,
        forward,
        dropped: Default::default(),
    };
    let arrivals = mesh::Arrivals {
        max_handshakes: 16,
        refused: Default::default(),
    };
    let serving = tokio::spawn(mesh::serve(
        endpoint.clone(),
        control.clone(),
        handoff,
        arrivals,
    ));
    TestNode {
        name: node.to_string(),
        tls,
        addr,
        dir: dir.to_owned(),
        control,
        endpoint,
        serving,
    }
}

impl TestNode {
    fn member(&self) -> Member {
        self.control.me().clone()
    }

    /// Stop as a crash would, as far as the others can tell: no goodbye, state on disk.
    pub(crate) async fn stop(self) -> (NodeTls, SocketAddr, std::path::PathBuf) {
        self.control.shutdown().await;
        self.serving.abort();
        self.endpoint.close();
        (self.tls, self.addr, self.dir)
    }
}

async fn cluster(ca: &ClusterCa, dirs: &tempfile::TempDir, names: &[&str]) -> Vec<TestNode> {
    cluster_behind(ca, dirs, names, None).await
}

pub(crate) async fn cluster_behind(
    ca: &ClusterCa,
    dirs: &tempfile::TempDir,
    names: &[&str],
    wan: Option<&Wan>,
) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for name in names {
        let dir = dirs.path().join(name);
        let addr = "127.0.0.1:0".parse().unwrap();
        nodes.push(start_behind(ca, name, addr, &dir, wan).await);
    }
    let voters: Vec<Member> = nodes.iter().map(TestNode::member).collect();
    for n in &nodes {
        n.control.initialize(&voters).await.unwrap();
    }
    nodes
}

pub(crate) async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader_of(nodes: &[TestNode]) -> Option<usize> {
    nodes
        .iter()
        .position(|n| n.control.status().role == "leader")
}

fn deploy(app: &str, wasm: &[u8], base: Option<u64>) -> Command {
    Command::Deploy {
        app: AppName::new(app).unwrap(),
        wasm: wasm.to_vec(),
        base,
    }
}

/// What a node joining in these tests says of itself.
pub(crate) fn joiner_info(peer_addr: SocketAddr) -> NodeInfo {
    NodeInfo {
        region: "sa-east".into(),
        peer_addr,
        client_urls: vec!["http://127.0.0.1:1".into()],
        lat: -23.55,
        lon: -46.63,
    }
}

fn live(node: &TestNode, app: &str) -> Option<(u64, Vec<u8>)> {
    let state = node.control.state();
    let (v, bytes) = state.live_handler(&AppName::new(app).unwrap())?;
    Some((v.version, bytes.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_any_node_is_applied_everywhere() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = cluster(&ca, &dirs, &["us-east", "eu-west", "ap-south"]).await;
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    let follower = (leader + 1) % nodes.len();

    // Written on a follower: forwarded to the leader, applied on the follower on return.
    let r = nodes[follower]
        .control
        .write(deploy("chat", b"v1 bytes", Some(0)))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Response::Deployed {
                version: 1,
                unchanged: false,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(live(&nodes[follower], "chat").unwrap().0, 1);
    for n in &nodes {
        wait_for("the deploy everywhere", Duration::from_secs(5), || {
            live(n, "chat").filter(|(v, b)| *v == 1 && b == b"v1 bytes")
        })
        .await;
    }

    // A racing deploy from a stale base reports the conflict.
    let r = nodes[leader]
        .control
        .write(deploy("chat", b"v2 bytes", Some(0)))
        .await
        .unwrap();
    assert_eq!(r, Response::Conflict { current: 1 });

    // Leadership may move while a loaded machine runs this; once it settles, a
    // follower names the node that says it leads, and the leader tracks every voter.
    let leader = wait_for(
        "a follower and its leader to agree",
        Duration::from_secs(10),
        || {
            let leader = leader_of(&nodes)?;
            let status = nodes[(leader + 1) % nodes.len()].control.status();
            (status.role == "follower"
                && status.voters.len() == 3
                && status.leader.as_deref() == Some(nodes[leader].name.as_str()))
            .then_some(leader)
        },
    )
    .await;
    let status = nodes[leader].control.status();
    assert_eq!(status.lag.len(), 3, "{status:?}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_elects_another_and_writes_go_on() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&ca, &dirs, &["a", "b", "c"]).await;
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    nodes[0]
        .control
        .write(deploy("counter", b"one", None))
        .await
        .unwrap();

    let old = nodes.remove(leader);
    let old_name = old.name.clone();
    old.stop().await;
    let lost = Instant::now();
    let new = wait_for("a new leader", Duration::from_secs(10), || {
        leader_of(&nodes)
    })
    .await;
    assert_ne!(nodes[new].name, old_name);
    assert!(
        lost.elapsed() < Duration::from_secs(5),
        "election took {:?}",
        lost.elapsed()
    );

    let other = (new + 1) % nodes.len();
    let r = nodes[other]
        .control
        .write(deploy("counter", b"two", None))
        .await
        .unwrap();
    assert!(matches!(r, Response::Deployed { version: 2, .. }), "{r:?}");
    for n in nodes {
        n.stop().await;
    }
}

/// A leader that goes silent (cut off, as a killed process is) never answers a write
/// forwarded to it: the follower gives the call up once it sees the election, and the
/// next leader commits the write, well before the call's own timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_leader_that_goes_silent_goes_to_the_next_leader() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let wan = Wan::new();
    let nodes = cluster_behind(&ca, &dirs, &["a", "b", "c"], Some(&wan)).await;
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    let follower = (leader + 1) % nodes.len();
    nodes[follower]
        .control
        .write(deploy("counter", b"one", None))
        .await
        .unwrap();

    let others: Vec<SocketAddr> = (0..nodes.len())
        .filter(|&i| i != leader)
        .map(|i| nodes[i].addr)
        .collect();
    wan.partition(&[nodes[leader].addr], &others);
    let cut = Instant::now();
    let r = nodes[follower]
        .control
        .write(deploy("counter", b"two", None))
        .await
        .unwrap();
    let took = cut.elapsed();
    assert!(matches!(r, Response::Deployed { version: 2, .. }), "{r:?}");
    assert!(took < Duration::from_secs(4), "the write took {took:?}");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_deploys_catches_up_from_its_disk_and_the_leader() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let mut nodes = cluster(&ca, &dirs, &["a", "b", "c"]).await;
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    nodes[leader]
        .control
        .write(deploy("echo", b"before", None))
        .await
        .unwrap();
    let down = (leader + 1) % 3;
    let stopped = nodes.remove(down);
    wait_for(
        "the deploy on the node about to stop",
        Duration::from_secs(5),
        || live(&stopped, "echo"),
    )
    .await;
    let (tls, addr, dir) = stopped.stop().await;

    // More than a snapshot's worth of writes while it is down: the log it missed is
    // partly purged, so it must catch up through a snapshot.
    for i in 0..30 {
        let wasm = format!("version {i}");
        nodes[0]
            .control
            .write(deploy("echo", wasm.as_bytes(), None))
            .await
            .unwrap();
    }
    let restarted = start_as(tls, addr, &dir, None).await;
    // It still has what it applied before going down.
    assert!(live(&restarted, "echo").is_some());
    let (version, bytes) = wait_for("catch-up", Duration::from_secs(10), || {
        live(&restarted, "echo").filter(|(v, _)| *v == 31)
    })
    .await;
    assert_eq!(version, 31);
    assert_eq!(bytes, b"version 29");
    nodes.push(restarted);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_as_a_learner_and_receives_the_state() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = cluster(&ca, &dirs, &["a", "b", "c"]).await;
    wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    for i in 0..25 {
        nodes[1]
            .control
            .write(deploy("chat", format!("v{i}").as_bytes(), None))
            .await
            .unwrap();
    }
    let joiner = start(
        &ca,
        "d",
        "127.0.0.1:0".parse().unwrap(),
        &dirs.path().join("d"),
    )
    .await;
    let info = joiner_info(joiner.addr);
    // Through a node that may not be the leader.
    joiner
        .control
        .join(&nodes[2].member(), info.clone(), false)
        .await
        .unwrap();
    wait_for("the state on the learner", Duration::from_secs(10), || {
        live(&joiner, "chat").filter(|(v, _)| *v == 25)
    })
    .await;
    let status = joiner.control.status();
    assert_eq!(status.role, "learner");
    assert_eq!(status.learners, vec!["d".to_string()]);
    assert_eq!(
        joiner.control.state().nodes.get(&NodeId::new("d").unwrap()),
        Some(&info)
    );
    // Learners accept writes too (forwarded).
    let r = joiner.control.write(deploy("chat", b"from d", None)).await;
    assert!(
        matches!(r, Ok(Response::Deployed { version: 26, .. })),
        "{r:?}"
    );
    for n in nodes {
        n.stop().await;
    }
    // With every voter gone, a write fails with a clear error rather than hanging.
    let started = Instant::now();
    let r = joiner.control.write(deploy("chat", b"nobody", None)).await;
    assert!(
        matches!(r, Err(WriteError::NoLeader) | Err(WriteError::Failed(_))),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    joiner.stop().await;
}

/// A fleet that starts at once joins at once: membership changes go one at a time, so
/// a join that meets another under way waits its turn instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_join_at_once_all_become_voters() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = cluster(&ca, &dirs, &["a", "b", "c"]).await;
    wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    let mut joiners = Vec::new();
    for name in ["d", "e", "f", "g"] {
        let addr = "127.0.0.1:0".parse().unwrap();
        joiners.push(start(&ca, name, addr, &dirs.path().join(name)).await);
    }
    let joins = joiners.iter().enumerate().map(|(i, j)| {
        let info = joiner_info(j.addr);
        let seed = nodes[i % nodes.len()].member();
        async move { j.control.join(&seed, info, true).await }
    });
    for (r, j) in futures_util::future::join_all(joins)
        .await
        .into_iter()
        .zip(&joiners)
    {
        assert!(r.is_ok(), "{} did not join: {r:?}", j.name);
    }
    let voters = wait_for("seven voters", Duration::from_secs(10), || {
        let v = nodes[0].control.status().voters;
        (v.len() == 7).then_some(v)
    })
    .await;
    for name in ["d", "e", "f", "g"] {
        assert!(voters.contains(&name.to_string()), "{voters:?}");
    }
    for n in nodes.into_iter().chain(joiners) {
        n.stop().await;
    }
}

/// A node proves its name with its certificate, not with what it writes in a request:
/// a peer holding a valid certificate of the cluster's CA can join only as itself,
/// cannot write unless it is a member, cannot put another node's record, and cannot
/// ask for votes in another node's name (or its own, as a stranger) to unseat the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_acts_only_as_the_node_its_certificate_names() {
    use edgeroom_cluster::control::network::{Network, RaftReply, RaftRequest};
    use openraft::{Vote, raft::VoteRequest};

    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = cluster(&ca, &dirs, &["a", "b", "c"]).await;
    let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
    let follower = (leader + 1) % nodes.len();
    let other = (leader + 2) % nodes.len();
    let to = nodes[leader].member();

    // Mallory: a certificate the CA issued, for a node the cluster never admitted.
    let mallory = NodeId::new("mallory").unwrap();
    let (cert, key) = ca.issue(&mallory).unwrap();
    let tls = NodeTls::from_pem(mallory.clone(), ca.cert_pem(), &cert, &key).unwrap();
    let endpoint = Arc::new(
        Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            None,
            Timing::default(),
        )
        .unwrap(),
    );
    let as_mallory = Network::new(endpoint.clone());
    let call = |net: &Network, request: RaftRequest| {
        let net = net.clone();
        let to = to.clone();
        async move { net.call(&to, &request, Duration::from_secs(5)).await }
    };
    let refused = |r: anyhow::Result<RaftReply>| {
        matches!(r, Ok(RaftReply::Write(Err(WriteError::Refused(_)))))
    };

    // Joining under another name: refused, nobody added.
    let evil = Member::new(
        &NodeId::new("evil").unwrap(),
        endpoint.local_addr().unwrap(),
    );
    let r = call(
        &as_mallory,
        RaftRequest::Join {
            member: evil,
            info: joiner_info(endpoint.local_addr().unwrap()),
            voter: true,
        },
    )
    .await;
    assert!(refused(r), "a join under another name was not refused");
    // A stranger's write: refused.
    let r = call(
        &as_mallory,
        RaftRequest::Write(deploy("chat", b"evil", None)),
    )
    .await;
    assert!(refused(r), "a write from a non-member was not refused");
    // A member may write, but only its own record.
    let as_follower = Network::new(nodes[follower].endpoint.clone());
    let victim = NodeId::new(&nodes[other].name).unwrap();
    let r = call(
        &as_follower,
        RaftRequest::Write(Command::PutNode(victim, joiner_info(nodes[follower].addr))),
    )
    .await;
    assert!(refused(r), "a member put another node's record");
    let own = NodeId::new(&nodes[follower].name).unwrap();
    let r = call(
        &as_follower,
        RaftRequest::Write(Command::PutNode(own, joiner_info(nodes[follower].addr))),
    )
    .await;
    assert!(matches!(r, Ok(RaftReply::Write(Ok(_)))), "{r:?}");

    // Vote requests far in the future, in a member's name and in the stranger's own:
    // neither reaches Raft, so the leader keeps its term.
    let term = nodes[leader].control.status().term;
    let member_id = nodes[follower].member().raft_id().unwrap();
    let mallory_id = edgeroom_cluster::control::raft_id(&mallory);
    for id in [member_id, mallory_id] {
        let vote = VoteRequest::new(Vote::new(term + 100, id), None);
        let r = call(&as_mallory, RaftRequest::Vote(vote)).await;
        assert!(r.is_err(), "a vote request was answered: {r:?}");
    }
    let status = nodes[leader].control.status();
    assert_eq!((status.role, status.term), ("leader", term));
    assert_eq!(status.voters.len(), 3);
    assert!(status.learners.is_empty(), "{:?}", status.learners);
    assert!(
        nodes[leader]
            .control
            .state()
            .nodes
            .keys()
            .all(|n| n.as_str() != "evil"),
        "a forged record was written"
    );

    // The honest join still works, through any node (a follower redirects it).
    let joiner = start(
        &ca,
        "d",
        "127.0.0.1:0".parse().unwrap(),
        &dirs.path().join("d"),
    )
    .await;
    joiner
        .control
        .join(&nodes[follower].member(), joiner_info(joiner.addr), false)
        .await
        .unwrap();
    wait_for("d as a learner", Duration::from_secs(10), || {
        let l = nodes[leader].control.status().learners;
        (l == vec!["d".to_string()]).then_some(())
    })
    .await;
    endpoint.close();
    for n in nodes.into_iter().chain([joiner]) {
        n.stop().await;
    }
}
