//! The peer transport with real parts: real QUIC endpoints on loopback, real mutual TLS
//! with certificates from `ClusterCa`, and the WAN shim under them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::{
    ClusterCa, Endpoint, FrameError, LinkRule, NodeTls, Peer, Purpose, Timing, Wan, close,
};
use futures_util::{SinkExt, StreamExt};

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn tls(ca: &ClusterCa, name: &str) -> NodeTls {
    let (cert, key) = ca.issue(&node(name)).unwrap();
    NodeTls::from_pem(node(name), ca.cert_pem(), &cert, &key).unwrap()
}

fn bind(tls: &NodeTls, wan: Option<&Wan>) -> Endpoint {
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), tls, wan, Timing::default()).unwrap()
}

/// The next arriving peer after its handshake, one at a time (enough for these tests).
async fn accept(e: &Endpoint) -> Option<anyhow::Result<Peer>> {
    Some(e.arrival().await?.handshake().await)
}

fn addr(e: &Endpoint) -> SocketAddr {
    e.local_addr().unwrap()
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Msg {
    Ping(u64),
    Pong(u64),
    Blob(Vec<u8>),
}

/// Serve `Ping(n)` → `Pong(n)` on every stream of every peer `e` accepts.
fn spawn_echo(e: Endpoint) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(peer)) = accept(&e).await {
            tokio::spawn(async move {
                while let Ok(incoming) = peer.accept().await {
                    let (mut tx, mut rx) = incoming.framed::<Msg, Msg>();
                    tokio::spawn(async move {
                        while let Some(Ok(msg)) = rx.next().await {
                            let reply = match msg {
                                Msg::Ping(n) => Msg::Pong(n),
                                other => other,
                            };
                            if tx.send(&reply).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    })
}

#[tokio::test]
async fn nodes_of_one_cluster_talk_over_mutual_tls() {
    let ca = ClusterCa::generate("t").unwrap();
    let (a, b) = (bind(&tls(&ca, "a"), None), bind(&tls(&ca, "b"), None));
    let b_addr = addr(&b);

    let server = tokio::spawn(async move {
        let peer = accept(&b).await.unwrap().unwrap();
        // The acceptor learns who called from the certificate.
        assert_eq!(peer.node(), &node("a"));
        let incoming = peer.accept().await.unwrap();
        assert_eq!(incoming.purpose, Purpose::Rooms);
        let (mut tx, mut rx) = incoming.framed::<Msg, Msg>();
        let Some(Ok(Msg::Ping(n))) = rx.next().await else {
            panic!("expected a ping")
        };
        tx.send(&Msg::Pong(n + 1)).await.unwrap();
        // Keep the endpoint alive until the client has its answer.
        peer.closed().await;
    });

    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    assert_eq!(peer.node(), &node("b"));
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    tx.send(&Msg::Ping(41)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap(), Msg::Pong(42));
    peer.close(close::NORMAL, "done");
    server.await.unwrap();
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let ca = ClusterCa::generate("ours").unwrap();
    let other = ClusterCa::generate("theirs").unwrap();
    let ours = bind(&tls(&ca, "a"), None);
    let ours_addr = addr(&ours);
    // Same node name, other CA: the name is not enough.
    let intruder = bind(&tls(&other, "b"), None);

    let accepting = tokio::spawn(async move {
        let outcome = accept(&ours).await.unwrap();
        (outcome.is_err(), ours)
    });
    let dialled = intruder.connect(&node("a"), ours_addr).await;
    assert!(dialled.is_err(), "the intruder's dial must fail");
    let (refused, ours) = accepting.await.unwrap();
    assert!(refused, "our side must refuse the intruder");

    // And we refuse to talk to a server the cluster CA did not sign.
    let intruder_addr = addr(&intruder);
    tokio::spawn(async move { while accept(&intruder).await.is_some() {} });
    let err = ours
        .connect(&node("b"), intruder_addr)
        .await
        .err()
        .expect("dialling a foreign server must fail");
    assert!(format!("{err:#}").contains("connecting to b"), "{err:#}");
}

#[tokio::test]
async fn dialling_the_wrong_node_is_refused() {
    let ca = ClusterCa::generate("t").unwrap();
    let a = bind(&tls(&ca, "a"), None);
    let c = bind(&tls(&ca, "c"), None);
    let c_addr = addr(&c);
    tokio::spawn(async move { while accept(&c).await.is_some() {} });
    // We meant b; the node at that address is c.
    assert!(a.connect(&node("b"), c_addr).await.is_err());
}

/// A plain quinn connection to `to` with a valid certificate for "a": what a buggy or
/// incompatible peer looks like, free to write any bytes.
async fn raw_conn(ca: &ClusterCa, to: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let mut raw = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    raw.set_default_client_config(tls(ca, "a").client_config().unwrap());
    let conn = raw.connect(to, "b.node.edgeroom").unwrap().await.unwrap();
    (raw, conn)
}

async fn assert_closed_for_protocol(conn: &quinn::Connection) {
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close::PROTOCOL.into())
        }
        other => panic!("unexpected close {other}"),
    }
}

#[tokio::test]
async fn oversized_frames_and_unknown_purposes_drop_the_peer() {
    let ca = ClusterCa::generate("t").unwrap();
    let b = bind(&tls(&ca, "b"), None);
    let b_addr = addr(&b);
    let server = tokio::spawn(async move {
        // An oversized frame: refused from its length prefix, before the body is read.
        let peer = accept(&b).await.unwrap().unwrap();
        let incoming = peer.accept().await.unwrap();
        assert_eq!(incoming.purpose, Purpose::Health);
        let (_tx, mut rx) = incoming.framed::<Msg, Msg>();
        let err = rx.next().await.unwrap().unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
        peer.refuse(&err.to_string());
        // A stream whose first byte names no purpose.
        let peer = accept(&b).await.unwrap().unwrap();
        assert!(peer.accept().await.is_err());
        // Kept until the client has seen its close: a dropped endpoint sends no more.
        b
    });

    let (_ep, conn) = raw_conn(&ca, b_addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // Health frames are limited to 4 KiB; announce 10 KB.
    let mut bytes = vec![Purpose::Health as u8];
    bytes.extend_from_slice(&10_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 100]);
    send.write_all(&bytes).await.unwrap();
    assert_closed_for_protocol(&conn).await;

    let (_ep, conn) = raw_conn(&ca, b_addr).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[99]).await.unwrap();
    let b = server.await.unwrap();
    assert_closed_for_protocol(&conn).await;
    drop(b);
}

/// Nodes "a" and "b" of one cluster, both on one emulated WAN.
fn pair_over_wan() -> (Wan, Endpoint, Endpoint) {
    let wan = Wan::new();
    let ca = ClusterCa::generate("t").unwrap();
    let a = bind(&tls(&ca, "a"), Some(&wan));
    let b = bind(&tls(&ca, "b"), Some(&wan));
    (wan, a, b)
}

#[tokio::test]
async fn wan_delay_shows_in_round_trips() {
    let (wan, a, b) = pair_over_wan();
    let (a_addr, b_addr) = (addr(&a), addr(&b));
    wan.set_both(a_addr, b_addr, LinkRule::delay(Duration::from_millis(20)));
    spawn_echo(b);

    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    let mut best = Duration::MAX;
    for n in 0..5 {
        let t = Instant::now();
        tx.send(&Msg::Ping(n)).await.unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap(), Msg::Pong(n));
        best = best.min(t.elapsed());
    }
    assert!(
        best >= Duration::from_millis(40) && best < Duration::from_millis(200),
        "round trip {best:?} with 20 ms each way"
    );
    assert!(
        peer.rtt() >= Duration::from_millis(35),
        "quinn sees {:?}",
        peer.rtt()
    );
    assert!(wan.delayed() > 0);
}

#[tokio::test]
async fn loss_and_jitter_keep_streams_whole_and_in_order() {
    let (wan, a, b) = pair_over_wan();
    let b_addr = addr(&b);
    let rule = LinkRule {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        loss: 0.05,
        ..LinkRule::default()
    };
    wan.set_both(addr(&a), b_addr, rule);
    spawn_echo(b);

    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    // 2,000 blobs of 1 KiB each way: well over a thousand datagrams, so 5% loss bites.
    let blob = |n: u32| Msg::Blob(n.to_be_bytes().repeat(256));
    let sender = tokio::spawn(async move {
        for n in 0..2_000 {
            tx.send(&blob(n)).await.unwrap();
        }
        tx
    });
    for n in 0..2_000 {
        assert_eq!(rx.next().await.unwrap().unwrap(), blob(n));
    }
    sender.await.unwrap();
    assert!(wan.dropped() > 0, "5% loss dropped nothing");
}

#[tokio::test]
async fn a_partition_stalls_traffic_and_healing_delivers_it() {
    let (wan, a, b) = pair_over_wan();
    let (a_addr, b_addr) = (addr(&a), addr(&b));
    spawn_echo(b);
    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    tx.send(&Msg::Ping(1)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap(), Msg::Pong(1));

    wan.partition(&[a_addr], &[b_addr]);
    tx.send(&Msg::Ping(2)).await.unwrap();
    let stalled = tokio::time::timeout(Duration::from_millis(700), rx.next()).await;
    assert!(stalled.is_err(), "a reply crossed the partition");
    assert!(wan.dropped() > 0);

    wan.heal(&[a_addr], &[b_addr]);
    let healed = tokio::time::timeout(Duration::from_secs(5), rx.next()).await;
    assert_eq!(healed.unwrap().unwrap().unwrap(), Msg::Pong(2));
}

#[tokio::test]
async fn a_restarted_node_resets_the_connections_of_its_previous_life() {
    let (wan, ca) = (Wan::new(), ClusterCa::generate("t").unwrap());
    let b_tls = tls(&ca, "b");
    let (a, b) = (bind(&tls(&ca, "a"), Some(&wan)), bind(&b_tls, Some(&wan)));
    let (a_addr, b_addr) = (addr(&a), addr(&b));
    // Its first life owns everything in one task, so aborting it frees the port.
    let serving = tokio::spawn(async move {
        let peer = accept(&b).await.unwrap().unwrap();
        let (mut tx, mut rx) = peer.accept().await.unwrap().framed::<Msg, Msg>();
        while let Some(Ok(Msg::Ping(n))) = rx.next().await {
            tx.send(&Msg::Pong(n)).await.unwrap();
        }
        drop(b);
    });
    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    tx.send(&Msg::Ping(1)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap(), Msg::Pong(1));

    // "b" dies without a word: nothing it sends on the way out reaches "a".
    wan.cut_one_way(&[b_addr], &[a_addr], true);
    serving.abort();
    let _ = serving.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let b = loop {
        match Endpoint::bind(b_addr, &b_tls, Some(&wan), Timing::default()) {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => panic!("rebinding {b_addr}: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // Its port free again, nothing of its first life is left to send.
    wan.cut_one_way(&[b_addr], &[a_addr], false);
    spawn_echo(b);

    // Its new life answers the old connection's next packet (a keep-alive at the
    // latest) with a reset "a" accepts: well before the 10 s idle timeout.
    let started = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(3), peer.closed())
        .await
        .expect("the old connection outlived the restart");
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "closed by {reason:?} after {:?}",
        started.elapsed()
    );
    let peer = a.connect(&node("b"), b_addr).await.unwrap();
    let (mut tx, mut rx) = peer.open::<Msg, Msg>(Purpose::Rooms).await.unwrap();
    tx.send(&Msg::Ping(2)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap(), Msg::Pong(2));
}
