//! Hands what peers send to the loaded rooms without letting one slow room hold up the
//! rest: each room gets its peer messages in arrival order; while its inbox is full
//! they wait in that room's backlog, handed over as the room frees room, while every
//! other room goes on being served.
//!
//! A backlog is bounded (`limits.peer_backlog` messages per room). Past the bound a
//! room's new events from peers are shed — the per-origin order asks their origin to
//! repair the gap — and past twice the bound anything is; both are counted
//! (`edgeroom_peer_messages_shed`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::replica::RoomMsg;
use super::{RoomCmd, RoomHandle, RoomKey};
use crate::metrics::Metrics;

type Permit = Result<mpsc::OwnedPermit<RoomCmd>, mpsc::error::SendError<()>>;
type Ready = Pin<Box<dyn Future<Output = (RoomKey, Permit)> + Send>>;

/// The per-room backlogs and the rooms that will take the next of theirs.
pub struct Post {
    bound: usize,
    waiting: HashMap<RoomKey, VecDeque<RoomCmd>>,
    ready: FuturesUnordered<Ready>,
}

impl Post {
    pub fn new(bound: usize) -> Self {
        debug_assert!(bound > 0);
        Self {
            bound,
            waiting: HashMap::new(),
            ready: FuturesUnordered::new(),
        }
    }

    /// Queue `cmd` for the room behind `to`, at once if its inbox has room and nothing
    /// of it is waiting, else behind what is.
    pub fn post(&mut self, key: &RoomKey, to: &RoomHandle, cmd: RoomCmd, metrics: &Metrics) {
        if let Some(queue) = self.waiting.get_mut(key) {
            let event = matches!(
                cmd,
                RoomCmd::Peer {
                    msg: RoomMsg::Event(_),
                    ..
                }
            );
            if queue.len() >= self.bound * 2 || (event && queue.len() >= self.bound) {
                metrics.peer_shed(if event { "event" } else { "other" });
                return;
            }
            queue.push_back(cmd);
            metrics.peer_backlog.inc();
            return;
        }
        match to.tx.try_send(cmd) {
            Ok(()) => {}
            // The room stopped: what it was sent goes with it, as before it stopped.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                self.waiting.insert(key.clone(), VecDeque::from([cmd]));
                metrics.peer_backlog.inc();
                self.wait_for(key.clone(), to.tx.clone());
            }
        }
    }

    fn wait_for(&mut self, key: RoomKey, tx: mpsc::Sender<RoomCmd>) {
        self.ready
            .push(Box::pin(async move { (key, tx.reserve_owned().await) }));
    }

    /// Resolves when a room with a backlog took its next message; never while none
    /// has one.
    pub async fn drain_one(&mut self, metrics: &Metrics) {
        let Some((key, permit)) = self.ready.next().await else {
            return std::future::pending().await;
        };
        let Some(queue) = self.waiting.get_mut(&key) else {
            return;
        };
        match permit {
            Ok(permit) => {
                if let Some(cmd) = queue.pop_front() {
                    metrics.peer_backlog.dec();
                    let tx = permit.send(cmd);
                    if !queue.is_empty() {
                        self.wait_for(key, tx);
                        return;
                    }
                }
                self.waiting.remove(&key);
            }
            Err(_) => {
                // The room stopped with a backlog: it goes with it.
                let gone = self.waiting.remove(&key).map_or(0, |q| q.len());
                metrics.peer_backlog.dec_by(gone as i64);
            }
        }
    }

    /// Messages waiting, over every room.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroom_proto::ids::{AppName, NodeId, RoomId};

    fn room(name: &str, inbox: usize) -> (RoomKey, RoomHandle, mpsc::Receiver<RoomCmd>) {
        let key = RoomKey {
            app: AppName::new("a").unwrap(),
            room: RoomId::new(name).unwrap(),
        };
        let (tx, rx) = mpsc::channel(inbox);
        (key, RoomHandle { tx }, rx)
    }

    fn up(n: &str) -> RoomCmd {
        RoomCmd::PeerUp(NodeId::new(n).unwrap())
    }

    fn node_of(cmd: RoomCmd) -> String {
        match cmd {
            RoomCmd::PeerUp(n) => n.to_string(),
            _ => panic!("not a PeerUp"),
        }
    }

    #[tokio::test]
    async fn a_full_room_holds_up_no_other_and_keeps_its_order() {
        let metrics = Metrics::new();
        let mut post = Post::new(16);
        let (a, ha, mut ra) = room("a", 1);
        let (b, hb, mut rb) = room("b", 4);
        post.post(&a, &ha, up("n0"), &metrics);
        for n in ["n1", "n2", "n3"] {
            post.post(&a, &ha, up(n), &metrics);
        }
        post.post(&b, &hb, up("m1"), &metrics);
        assert_eq!(node_of(rb.try_recv().unwrap()), "m1", "b is served at once");
        assert_eq!(post.waiting(), 3);
        assert_eq!(metrics.peer_backlog.get(), 3);

        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.push(node_of(ra.recv().await.unwrap()));
            if post.waiting() > 0 {
                post.drain_one(&metrics).await;
            }
        }
        assert_eq!(seen, ["n0", "n1", "n2", "n3"]);
        assert_eq!(post.waiting(), 0);
        assert_eq!(metrics.peer_backlog.get(), 0);
        // Drained, a room takes the next message directly again.
        post.post(&a, &ha, up("n4"), &metrics);
        assert_eq!(node_of(ra.try_recv().unwrap()), "n4");
    }

    #[tokio::test]
    async fn a_backlog_past_twice_its_bound_sheds_and_counts() {
        let metrics = Metrics::new();
        let mut post = Post::new(2);
        let (a, ha, _ra) = room("a", 1);
        post.post(&a, &ha, up("n0"), &metrics);
        for i in 1..=6 {
            post.post(&a, &ha, up(&format!("n{i}")), &metrics);
        }
        assert_eq!(post.waiting(), 4);
        let shed = metrics
            .peer_messages_shed
            .get_or_create(&crate::metrics::KindLabel {
                kind: "other".into(),
            })
            .get();
        assert_eq!(shed, 2);
    }

    #[tokio::test]
    async fn a_room_that_stops_takes_its_backlog_with_it() {
        let metrics = Metrics::new();
        let mut post = Post::new(8);
        let (a, ha, ra) = room("a", 1);
        post.post(&a, &ha, up("n0"), &metrics);
        post.post(&a, &ha, up("n1"), &metrics);
        assert_eq!(metrics.peer_backlog.get(), 1);
        drop(ra);
        post.drain_one(&metrics).await;
        assert_eq!(post.waiting(), 0);
        assert_eq!(metrics.peer_backlog.get(), 0);
    }
}
