//! The link from rooms to one connection: a bounded queue plus a kill switch.
//!
//! Rooms never wait on a client. They `try_send` into the connection's queue; when it
//! is full — in frames, or in the bytes the waiting items keep alive — the client is a
//! slow consumer and is cut off with a clear reason, so a client that stops reading
//! costs the room nothing and holds a bounded amount of memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;
use edgeroom_proto::close::Disconnect;
use edgeroom_proto::native::{Format, ServerFrame};
use edgeroom_room::core::LogEntry;

/// Something for a connection to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame for this connection alone (boxed: every connection's queue holds slots
    /// of this enum, so it is kept small).
    Frame(Box<ServerFrame>),
    /// A frame many connections get (presence, state).
    Shared(Arc<Shared>),
    Event(Arc<LogEntry>),
}

impl Outbound {
    pub fn frame(frame: ServerFrame) -> Self {
        Outbound::Frame(Box::new(frame))
    }

    /// What waiting in a queue costs, in bytes, as the byte bound counts it: what the
    /// item keeps alive (an event shared with history and other members counts whole:
    /// a slow reader is what keeps it once the others are done with it).
    pub fn cost(&self) -> usize {
        match self {
            Outbound::Event(e) => e.cost(),
            Outbound::Shared(s) => frame_cost(&s.frame),
            Outbound::Frame(f) => frame_cost(f),
        }
    }
}

fn frame_cost(f: &ServerFrame) -> usize {
    const FRAME: usize = 64;
    FRAME
        + match f {
            ServerFrame::State { state, .. } => state.len(),
            ServerFrame::StatePatch { patch, .. } => patch.len(),
            ServerFrame::Reply {
                result: Ok(Some(p)),
                ..
            } => p.size(),
            ServerFrame::Reply { result: Err(e), .. } | ServerFrame::Error { error: e, .. } => {
                e.message.len()
            }
            ServerFrame::Presence { joined, left, .. } => {
                joined
                    .iter()
                    .map(|(c, p)| c.as_str().len() + p.len())
                    .sum::<usize>()
                    + left.iter().map(|c| c.as_str().len()).sum::<usize>()
            }
            ServerFrame::Kicked { reason, .. } => reason.len(),
            ServerFrame::Welcome { resume_token, .. } => resume_token.len(),
            ServerFrame::Reply { .. } => 0,
        }
}

/// How much a connection's outbox may hold.
#[derive(Debug, Clone, Copy)]
pub struct QueueBound {
    pub frames: usize,
    pub bytes: usize,
}

/// A frame sent to many connections, encoded once per wire format on first use.
#[derive(Debug)]
pub struct Shared {
    pub frame: ServerFrame,
    encoded: [OnceLock<Bytes>; 2],
}

impl Shared {
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            encoded: Default::default(),
        })
    }

    pub fn encoded(&self, format: Format, encode: impl FnOnce(&ServerFrame) -> Vec<u8>) -> Bytes {
        self.encoded[format.index()]
            .get_or_init(|| Bytes::from(encode(&self.frame)))
            .clone()
    }
}

/// Which of a room's own frames a member wants (events and replies it always gets).
/// Socket.IO members opt in to presence and state; native members get both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub presence: bool,
    pub state: bool,
}

impl Interest {
    pub const ALL: Interest = Interest {
        presence: true,
        state: true,
    };

    fn wants_frame(self, f: &ServerFrame) -> bool {
        match f {
            ServerFrame::Presence { .. } => self.presence,
            ServerFrame::State { .. } | ServerFrame::StatePatch { .. } => self.state,
            _ => true,
        }
    }
}

/// A member's live connection as its rooms hold it.
#[derive(Debug, Clone)]
pub struct Link {
    pub outbox: Outbox,
    pub interest: Interest,
    /// The generation of the resume token the connection holds, where its protocol
    /// rotates tokens (see `Member::token`); `None` where it does not (Socket.IO).
    pub token: Option<u64>,
}

impl Link {
    pub fn new(outbox: Outbox, interest: Interest) -> Self {
        Self {
            outbox,
            interest,
            token: None,
        }
    }

    /// The link of a connection holding the resume token of `generation`.
    pub fn with_token(self, generation: u64) -> Self {
        Self {
            token: Some(generation),
            ..self
        }
    }

    /// Whether `item` is for this member at all: a presence or state frame it did not
    /// ask for is not even queued (in a big room, most members may not want them).
    pub fn wants(&self, item: &Outbound) -> bool {
        match item {
            Outbound::Event(_) => true,
            Outbound::Frame(f) => self.interest.wants_frame(f),
            Outbound::Shared(s) => self.interest.wants_frame(&s.frame),
        }
    }
}

/// Ends a connection from outside its task, with a reason for the close frame; and lets
/// a resume ask the connection whether its client is still there (`probe`, answered by
/// `heard` moving).
#[derive(Debug, Default)]
pub struct KillSwitch {
    reason: Mutex<Option<Disconnect>>,
    notify: Notify,
    /// How many times the client was heard from (any frame, a pong included).
    heard: std::sync::atomic::AtomicU64,
    probe: Notify,
}

impl KillSwitch {
    /// Ask the connection to close. The first reason wins.
    pub fn kill(&self, reason: impl Into<Disconnect>) {
        let mut r = self.reason.lock();
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.notify.notify_one();
    }

    pub fn reason(&self) -> Option<Disconnect> {
        self.reason.lock().clone()
    }

    /// The connection's task heard from its client.
    pub fn heard(&self) {
        self.heard
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn times_heard(&self) -> u64 {
        self.heard.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ask the connection's task to make its client answer now (a ping).
    pub fn probe(&self) {
        self.probe.notify_one();
    }

    /// Resolves when a probe is asked for.
    pub async fn probed(&self) {
        self.probe.notified().await
    }

    /// Resolves once `kill` was called.
    pub async fn killed(&self) -> Disconnect {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.reason() {
                return r;
            }
            notified.await;
        }
    }
}

/// The sending side, held by every room the connection is in.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// Each item with its cost as counted in, so the reader takes out the same.
    tx: mpsc::Sender<(Outbound, usize)>,
    kill: Arc<KillSwitch>,
    pub format: Format,
    metrics: Arc<Metrics>,
    /// Bytes (`Outbound::cost`) queued now, and the most there may be.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The connection's side of its outbox: what the writer drains.
#[derive(Debug)]
pub struct OutboxReader {
    rx: mpsc::Receiver<(Outbound, usize)>,
    queued: Arc<AtomicUsize>,
}

impl OutboxReader {
    fn took(&self, (item, cost): (Outbound, usize)) -> Outbound {
        let before = self.queued.fetch_sub(cost, Ordering::Relaxed);
        debug_assert!(
            before >= cost,
            "an outbox gives out more bytes than it took in"
        );
        item
    }

    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        Some(self.took(item))
    }

    pub fn try_recv(&mut self) -> Result<Outbound, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv()?;
        Ok(self.took(item))
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the connection is being dropped as a slow consumer.
    SlowConsumer,
    /// The connection is gone.
    Closed,
}

impl Outbox {
    /// A queue bounded by `bound`: the room side and the connection side.
    pub fn new(
        bound: QueueBound,
        format: Format,
        metrics: Arc<Metrics>,
    ) -> (Outbox, OutboxReader, Arc<KillSwitch>) {
        let (tx, rx) = mpsc::channel(bound.frames);
        let kill = Arc::new(KillSwitch::default());
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                tx,
                kill: kill.clone(),
                format,
                metrics,
                queued: queued.clone(),
                max_bytes: bound.bytes,
            },
            OutboxReader { rx, queued },
            kill,
        )
    }

    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        let cost = item.cost();
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        // One item alone may exceed the bound (it was allowed in by the event limits).
        if before > 0 && before + cost > self.max_bytes {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.slow(Disconnect::Backlog {
                bytes: self.max_bytes,
            });
            return Err(PushError::SlowConsumer);
        }
        match self.tx.try_send((item, cost)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(cost, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.slow(Disconnect::SlowConsumer {
                            limit: self.tx.max_capacity(),
                        });
                        Err(PushError::SlowConsumer)
                    }
                    mpsc::error::TrySendError::Closed(_) => Err(PushError::Closed),
                }
            }
        }
    }

    fn slow(&self, why: Disconnect) {
        if self.kill.reason().is_none() {
            self.metrics.slow_consumers.inc();
            self.kill.kill(why);
        }
    }

    pub fn frame(&self, frame: ServerFrame) -> Result<(), PushError> {
        self.push(Outbound::frame(frame))
    }

    /// Whether two outboxes lead to the same connection.
    pub fn same(&self, other: &Outbox) -> bool {
        self.tx.same_channel(&other.tx)
    }

    pub fn kill(&self, reason: impl Into<Disconnect>) {
        self.kill.kill(reason);
    }

    pub fn kill_switch(&self) -> Arc<KillSwitch> {
        self.kill.clone()
    }
}
