//! Failure detection with real parts: nodes' pingers over real QUIC behind the WAN
//! shim.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeroom_cluster::health::{self, Health, HealthTiming};
use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{ClusterCa, LinkRule, Wan};

use edgeroom_cluster::control::state::Command;

use tokio::task::JoinHandle;

use crate::control::{TestNode, cluster_behind, joiner_info, wait_for};

/// Every node listed in the control plane, each pinging the others (3 s timeout),
/// once the first two have heard each other.
async fn pinging(nodes: &[TestNode]) -> (Vec<Arc<Health>>, Vec<JoinHandle<()>>) {
    // The pingers ping the nodes the control plane lists; each node writes its own
    // record (the leader takes a node's record only from that node).
    for n in nodes {
        let put = Command::PutNode(
            NodeId::new(&n.control.me().name).unwrap(),
            joiner_info(n.addr),
        );
        let write = || n.control.write(put.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while write().await.is_err() {
            assert!(Instant::now() < deadline, "no leader took the write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let timing = HealthTiming {
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(3),
    };
    let mut pingers = Vec::new();
    let mut healths: Vec<Arc<Health>> = Vec::new();
    for n in nodes {
        let h = Health::new(NodeId::new(&n.control.me().name).unwrap(), timing);
        pingers.push(tokio::spawn(health::run(
            h.clone(),
            n.control.clone(),
            n.endpoint.clone(),
        )));
        healths.push(h);
    }
    let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
    wait_for("everyone heard", Duration::from_secs(10), || {
        (healths[0].rtt(&b).is_some() && healths[1].rtt(&a).is_some()).then_some(())
    })
    .await;
    (healths, pingers)
}

/// Nodes whose workers are all busy for longer than the failure timeout (room work:
/// handler calls, Automerge) stay alive to each other: heartbeats run on each
/// endpoint's own thread. On the workers they waited behind that work, busy nodes
/// declared each other dead, and in full-scale geo-sim the moves and greetings that
/// follow a death took the whole fleet down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_workers_are_busy_past_the_timeout_stay_alive() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let nodes = cluster_behind(&ca, &dirs, &["a", "b"], None).await;
    let (healths, pingers) = pinging(&nodes).await;
    let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());

    // Both workers of the runtime every node's tasks run on hold their thread for
    // twice the timeout; this test's body runs on a thread of its own.
    let busy = Duration::from_secs(6);
    let started = Arc::new(std::sync::Barrier::new(3));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let started = started.clone();
            tokio::spawn(async move {
                started.wait();
                std::thread::sleep(busy);
            })
        })
        .collect();
    started.wait();
    let until = Instant::now() + busy;
    while Instant::now() < until {
        assert!(healths[0].is_alive(&b), "a took busy b for dead");
        assert!(healths[1].is_alive(&a), "b took busy a for dead");
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in hogs {
        h.await.unwrap();
    }
    for p in pingers {
        p.abort();
    }
    for n in nodes {
        n.stop().await;
    }
}

/// A partition longer than the failure timeout: each side declares the other dead,
/// and once it heals each is alive again to the other within a second — the pinger
/// dials afresh rather than waiting out a connection whose retransmissions backed off
/// during the silence (seconds, the longer the partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_is_noticed_within_a_second() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let wan = Wan::new();
    let nodes = cluster_behind(&ca, &dirs, &["a", "b", "c"], Some(&wan)).await;
    let (healths, pingers) = pinging(&nodes).await;
    let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());

    // Nodes a continent apart, as in geo-sim (retransmission timers scale with it).
    for (i, x) in nodes.iter().enumerate() {
        for y in &nodes[i + 1..] {
            wan.set_both(x.addr, y.addr, LinkRule::delay(Duration::from_millis(60)));
        }
    }
    let others = [nodes[1].addr, nodes[2].addr];
    wan.partition(&[nodes[0].addr], &others);
    wait_for("a and b declared dead", Duration::from_secs(6), || {
        (!healths[0].is_alive(&b) && !healths[1].is_alive(&a)).then_some(())
    })
    .await;
    // Long enough for retransmissions to back off well past a second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wan.heal(&[nodes[0].addr], &others);
    let healed = Instant::now();
    wait_for("a and b alive again", Duration::from_secs(10), || {
        (healths[0].is_alive(&b) && healths[1].is_alive(&a)).then_some(())
    })
    .await;
    let took = healed.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "alive again after {took:?}"
    );
    for p in pingers {
        p.abort();
    }
    for n in nodes {
        n.stop().await;
    }
}
