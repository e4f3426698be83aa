//! Rooms: one actor per loaded room, which owns its members, log, document and
//! handler instance, and handles one command at a time in arrival order.
//!
//! [`Rooms`] finds or starts the actor for an `(app, room)`. An actor that has been
//! empty for a while saves its document and stops; a command that reaches it while
//! it stops is answered with `Retry`, and the caller starts a fresh one.

mod actor;
mod journal;
pub use journal::restore_sessions;
pub mod outbox;
mod post;
pub mod replica;
pub mod replicate;
pub mod world;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use outbox::{Interest, KillSwitch, Link, Outbound, Outbox, OutboxReader, QueueBound};
pub use world::World;

use crate::apps::Apps;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
use edgeroom_proto::Cursor;
use edgeroom_proto::ids::{AppName, ConnId, NodeId, RoomId, UserId};
use edgeroom_proto::member::JoinAuth;
use edgeroom_proto::native::Ref;
use edgeroom_proto::payload::Payload;
use edgeroom_sandbox::Sandbox;

/// How many times a command chases a stopping room to its successor.
const MAX_RESTARTS: usize = 8;

/// A room of an app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub app: AppName,
    pub room: RoomId,
}

/// What peers name a room by.
impl From<edgeroom_room::interest::RoomRef> for RoomKey {
    fn from((app, room): edgeroom_room::interest::RoomRef) -> Self {
        Self { app, room }
    }
}

/// Commands a room handles, in order.
pub enum RoomCmd {
    /// Join; the room replies to `r#ref` itself and reports the outcome on `done`.
    /// With `resume_from`, the events after that cursor are replayed after the join.
    Join {
        conn: ConnId,
        auth: JoinAuth,
        link: Link,
        r#ref: Option<Ref>,
        resume_from: Option<Cursor>,
        done: oneshot::Sender<JoinOutcome>,
    },
    /// Leave; `done` gets false if it was not a member (the room cannot answer it then).
    Leave {
        conn: ConnId,
        r#ref: Option<Ref>,
        done: oneshot::Sender<bool>,
    },
    /// An event from a member; `outbox` answers a sender that is no longer a member.
    Emit {
        conn: ConnId,
        outbox: Outbox,
        event: String,
        payload: Payload,
        r#ref: Option<Ref>,
        id: Option<String>,
    },
    /// The member's connection dropped; it may come back.
    Detach { conn: ConnId, outbox: Outbox },
    /// The member is back on a new connection: replay what it missed, then go live.
    Reattach {
        conn: ConnId,
        link: Link,
        cursor: Option<Cursor>,
        done: oneshot::Sender<ReattachOutcome>,
    },
    /// A client resumed here as a member that another node held: take it over, with
    /// what it missed since `cursor` (from the other replicas' logs).
    /// `user`: the identity the resuming connection proved; a member that joined as a
    /// verified user is taken over only by that user.
    Adopt {
        conn: ConnId,
        link: Link,
        cursor: Option<Cursor>,
        user: Option<UserId>,
        done: oneshot::Sender<AdoptOutcome>,
    },
    /// The session ended for good.
    End { conn: ConnId },
    /// What the room's log holds for member `conn` after `after` (the events it may
    /// see, oldest first, and how many of those used the log no longer has); `None`
    /// if it is no member.
    History {
        conn: ConnId,
        after: Cursor,
        done: oneshot::Sender<Option<edgeroom_room::catchup::CatchUp>>,
    },
    /// The room's view; `has`: change hashes to report as missing if the document
    /// lacks them.
    Inspect {
        has: Option<Vec<String>>,
        done: oneshot::Sender<RoomView>,
    },
    /// A message from the room's replica on another node.
    Peer { from: NodeId, msg: replica::RoomMsg },
    /// This node's link to a peer came (back) up.
    PeerUp(NodeId),
    /// A peer newly has members in this room, since then (its wall clock).
    PeerJoined(NodeId, edgeroom_room::interest::Since),
    /// A peer was declared dead.
    PeerDown(NodeId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    Refused,
    /// The room was stopping: ask again.
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReattachOutcome {
    Reattached,
    /// No longer a member (it was away past the presence grace): join again.
    NotMember,
    Retry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptOutcome {
    /// A member again, here; with the auth it first joined with.
    Adopted {
        auth: JoinAuth,
    },
    /// No replica knows the member (never was, or it left): join again.
    NotMember,
    /// The member is another user's, or its session has a newer token than the one
    /// presented: not this client's to take.
    Refused,
    Retry,
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomView {
    pub app: String,
    pub room: String,
    /// The node whose replica this is.
    pub node: String,
    pub members: Vec<MemberView>,
    pub state: serde_json::Value,
    /// The document's Automerge heads (hex change hashes): equal heads, equal documents.
    pub heads: Vec<String>,
    /// Of the change hashes the request asked about (`?has=`), those this replica's
    /// document does not hold yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
    pub cursor: String,
    pub history_len: usize,
    pub handler_sha256: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberView {
    pub conn: String,
    pub presence: serde_json::Value,
    pub connected: bool,
    /// The node the member is connected to.
    pub node: String,
}

/// The way to a room actor.
#[derive(Clone)]
pub struct RoomHandle {
    tx: mpsc::Sender<RoomCmd>,
}

impl RoomHandle {
    /// Queue a command; waits while the room's inbox is full. False if the room stopped.
    pub async fn send(&self, cmd: RoomCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

/// What every room actor needs from the node.
pub struct RoomEnv {
    pub node: NodeId,
    pub region: String,
    pub limits: Limits,
    pub sandbox: Arc<Sandbox<World>>,
    pub apps: Arc<Apps<World>>,
    pub store: Arc<Store>,
    /// Writes standalone rooms' journals, many rooms to one synced commit.
    pub journal: crate::store::GroupWriter,
    /// Where rooms take their runs of sequence numbers.
    pub runs: Arc<edgeroom_room::runs::Runs>,
    pub metrics: Arc<Metrics>,
    /// Turns true when the node shuts down: rooms save and stop.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// In a cluster: the links to the rooms' replicas on other nodes.
    pub replicator: Option<Arc<replica::Replicator>>,
    pub clock: crate::clock::Clock,
}

/// The loaded rooms of this node.
pub struct Rooms {
    map: Mutex<HashMap<RoomKey, RoomHandle>>,
    env: Arc<RoomEnv>,
}

impl Rooms {
    pub fn new(env: RoomEnv) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            env: Arc::new(env),
        })
    }

    pub fn env(&self) -> &RoomEnv {
        &self.env
    }

    /// The actor of `key`, started if needed. `None` if the app does not exist.
    pub fn handle(self: &Arc<Self>, key: &RoomKey) -> Option<RoomHandle> {
        let mut map = self.map.lock();
        if let Some(h) = map.get(key)
            && !h.tx.is_closed()
        {
            return Some(h.clone());
        }
        let live = self.env.apps.subscribe(&key.app)?;
        let (tx, rx) = mpsc::channel(self.env.limits.room_inbox);
        let handle = RoomHandle { tx };
        map.insert(key.clone(), handle.clone());
        actor::spawn(self.clone(), key.clone(), live, rx);
        Some(handle)
    }

    /// How many rooms are loaded.
    pub fn count(&self) -> usize {
        self.map.lock().len()
    }

    /// The actor of `key` if it is loaded.
    pub fn loaded(&self, key: &RoomKey) -> Option<RoomHandle> {
        self.map
            .lock()
            .get(key)
            .filter(|h| !h.tx.is_closed())
            .cloned()
    }

    /// Called by a stopping actor: forget it unless a command is already on its way.
    fn retire(&self, key: &RoomKey, rx: &mpsc::Receiver<RoomCmd>) -> bool {
        let mut map = self.map.lock();
        if !rx.is_empty() {
            return false;
        }
        map.remove(key);
        true
    }

    /// Send a command that answers on a oneshot, to a fresh actor if the one found was
    /// stopping (`retry` says whether the answer means that). `None`: the app does not
    /// exist, or the room kept stopping under us.
    async fn ask<T>(
        self: &Arc<Self>,
        key: &RoomKey,
        make: impl Fn(oneshot::Sender<T>) -> RoomCmd,
        retry: impl Fn(&T) -> bool,
    ) -> Option<(T, RoomHandle)> {
        for _ in 0..MAX_RESTARTS {
            let handle = self.handle(key)?;
            let (done, rx) = oneshot::channel();
            if !handle.send(make(done)).await {
                continue;
            }
            match rx.await {
                Ok(answer) if !retry(&answer) => return Some((answer, handle)),
                _ => continue,
            }
        }
        tracing::error!(app = %key.app, room = %key.room, "room kept stopping; giving up");
        None
    }

    /// Join a room. `None`: the app does not exist.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        self: &Arc<Self>,
        key: &RoomKey,
        conn: &ConnId,
        auth: &JoinAuth,
        link: &Link,
        r#ref: Option<Ref>,
        resume_from: Option<Cursor>,
    ) -> Option<(JoinOutcome, RoomHandle)> {
        let make = |done| RoomCmd::Join {
            conn: conn.clone(),
            auth: auth.clone(),
            link: link.clone(),
            r#ref: r#ref.clone(),
            resume_from: resume_from.clone(),
            done,
        };
        self.ask(key, make, |o| *o == JoinOutcome::Retry).await
    }

    /// Put a returning member back on a new connection.
    pub async fn reattach(
        self: &Arc<Self>,
        key: &RoomKey,
        conn: &ConnId,
        link: &Link,
        cursor: Option<Cursor>,
    ) -> Option<(ReattachOutcome, RoomHandle)> {
        let make = |done| RoomCmd::Reattach {
            conn: conn.clone(),
            link: link.clone(),
            cursor: cursor.clone(),
            done,
        };
        self.ask(key, make, |o| *o == ReattachOutcome::Retry).await
    }

    /// Take over a member another node held (its client resumed here).
    pub async fn adopt(
        self: &Arc<Self>,
        key: &RoomKey,
        conn: &ConnId,
        link: &Link,
        cursor: Option<Cursor>,
        user: Option<&UserId>,
    ) -> Option<(AdoptOutcome, RoomHandle)> {
        let make = |done| RoomCmd::Adopt {
            conn: conn.clone(),
            link: link.clone(),
            cursor: cursor.clone(),
            user: user.cloned(),
            done,
        };
        self.ask(key, make, |o| *o == AdoptOutcome::Retry).await
    }

    /// A room's members and state, loading the room if it is not loaded.
    pub async fn inspect(
        self: &Arc<Self>,
        key: &RoomKey,
        has: Option<Vec<String>>,
    ) -> Option<RoomView> {
        let make = |done| RoomCmd::Inspect {
            has: has.clone(),
            done,
        };
        self.ask(key, make, |_| false).await.map(|(v, _)| v)
    }

    /// This node's replica of a room, only if it is loaded here (never loads it).
    pub async fn inspect_loaded(
        &self,
        key: &RoomKey,
        has: Option<Vec<String>>,
    ) -> Option<RoomView> {
        let handle = self.loaded(key)?;
        let (done, rx) = oneshot::channel();
        if !handle.send(RoomCmd::Inspect { has, done }).await {
            return None;
        }
        rx.await.ok()
    }

    /// Every loaded room, with its key.
    fn all_loaded_keyed(&self) -> Vec<(RoomKey, RoomHandle)> {
        self.map
            .lock()
            .iter()
            .filter(|(_, h)| !h.tx.is_closed())
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }

    /// Hand what peers send to the rooms it is for, in arrival order per room, until
    /// the node stops; a room whose inbox is full holds up nobody else (`post`). A
    /// message for a room not loaded here is dropped (this node has no members there
    /// any more), except questions, which are answered with "nothing here" (see
    /// `replica::unloaded`).
    pub async fn serve_peers(
        self: Arc<Self>,
        mut deliveries: mpsc::Receiver<replicate::Delivery<replica::RoomMsg>>,
    ) {
        use replicate::Delivery;
        let metrics = self.env.metrics.clone();
        let mut post = post::Post::new(self.env.limits.peer_backlog);
        // Ends with the node: the rooms hold the replicator, which holds the sender.
        let mut shutdown = self.env.shutdown.clone();
        loop {
            let d = tokio::select! {
                d = deliveries.recv() => match d {
                    Some(d) => d,
                    None => return,
                },
                () = post.drain_one(&metrics) => continue,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match d {
                Delivery::Room { from, room, msg } => {
                    let key = RoomKey::from(room);
                    match self.loaded(&key) {
                        Some(h) => post.post(&key, &h, RoomCmd::Peer { from, msg }, &metrics),
                        None => {
                            if let (Some(rep), Some(reply)) =
                                (&self.env.replicator, replica::unloaded(msg))
                            {
                                let room = (key.app, key.room);
                                let msg = replicate::PeerMsg::Room { room, msg: reply };
                                rep.send(&from, msg);
                            }
                        }
                    }
                }
                Delivery::PeerUp(node) => {
                    for (key, h) in self.all_loaded_keyed() {
                        post.post(&key, &h, RoomCmd::PeerUp(node.clone()), &metrics);
                    }
                }
                Delivery::Joined { node, room, since } => {
                    let key = RoomKey::from(room);
                    if let Some(h) = self.loaded(&key) {
                        post.post(&key, &h, RoomCmd::PeerJoined(node, since), &metrics);
                    }
                }
                Delivery::PeerDown(node) => {
                    for (key, h) in self.all_loaded_keyed() {
                        post.post(&key, &h, RoomCmd::PeerDown(node.clone()), &metrics);
                    }
                }
            }
        }
    }

    /// How many rooms are loaded.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
