//! The accepting side of the mesh with real parts: a node's own `mesh::serve` over real
//! QUIC behind the WAN shim.

use std::time::Duration;

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{ClusterCa, Endpoint, NodeTls, Timing, Wan};

use crate::control::cluster_behind;

fn endpoint(ca: &ClusterCa, name: &str) -> Endpoint {
    let node = NodeId::new(name).unwrap();
    let (cert, key) = ca.issue(&node).unwrap();
    let tls = NodeTls::from_pem(node, ca.cert_pem(), &cert, &key).unwrap();
    Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &tls,
        None,
        Timing::default(),
    )
    .unwrap()
}

/// A peer whose handshake stalls (here: the node's answers never reach it) holds its
/// handshake until the idle timeout, 10 s. Another peer arriving meanwhile is served at
/// once. Taken one at a time, it waited out the stalled one, and on a loaded fleet the
/// redials of peers that missed a heartbeat queued up behind each other like this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalled_in_its_handshake_holds_up_no_other() {
    let ca = ClusterCa::generate("t").unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let wan = Wan::new();
    let nodes = cluster_behind(&ca, &dirs, &["a"], Some(&wan)).await;
    let a = NodeId::new("a").unwrap();
    let a_addr = nodes[0].addr;

    let mute = endpoint(&ca, "m");
    wan.cut_one_way(&[a_addr], &[mute.local_addr().unwrap()], true);
    let stalled = {
        let a = a.clone();
        tokio::spawn(async move { mute.connect(&a, a_addr).await.map(|_| ()) })
    };
    // Its first datagram is in, so its handshake is the one under way.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let honest = endpoint(&ca, "h");
    let dialled = tokio::time::timeout(Duration::from_secs(3), honest.connect(&a, a_addr)).await;
    assert!(
        matches!(dialled, Ok(Ok(_))),
        "the honest peer must get through while the other stalls: {:?}",
        dialled.map(|r| r.err())
    );
    assert!(
        !stalled.is_finished(),
        "the stalled handshake is still under way"
    );
    stalled.abort();
}
