//! The link from rooms to one connection: a bounded queue plus a kill switch.
//!
//! Rooms never wait on a client. They `try_send` into the connection's queue; when it
//! is full the client is a slow consumer and is cut off with a clear reason, so a
//! client that stops reading costs the room nothing.

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
}

impl Link {
    pub fn new(outbox: Outbox, interest: Interest) -> Self {
        Self { outbox, interest }
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

/// Ends a connection from outside its task, with a reason for the close frame.
#[derive(Debug, Default)]
pub struct KillSwitch {
    reason: Mutex<Option<Disconnect>>,
    notify: Notify,
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
    tx: mpsc::Sender<Outbound>,
    kill: Arc<KillSwitch>,
    pub format: Format,
    metrics: Arc<Metrics>,
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
    /// A queue of `capacity` frames: the room side and the connection side.
    pub fn new(
        capacity: usize,
        format: Format,
        metrics: Arc<Metrics>,
    ) -> (Outbox, mpsc::Receiver<Outbound>, Arc<KillSwitch>) {
        let (tx, rx) = mpsc::channel(capacity);
        let kill = Arc::new(KillSwitch::default());
        (
            Outbox {
                tx,
                kill: kill.clone(),
                format,
                metrics,
            },
            rx,
            kill,
        )
    }

    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.kill.reason().is_none() {
                    self.metrics.slow_consumers.inc();
                    self.kill.kill(Disconnect::SlowConsumer {
                        limit: self.tx.max_capacity(),
                    });
                }
                Err(PushError::SlowConsumer)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
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
