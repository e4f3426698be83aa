//! One room's handler instance: created on demand, swapped on deploy, dropped after a
//! failure or when the room goes idle. The room's [`RoomApi`] lives in the store data and
//! survives all of that.

use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::Handler;
use super::host::{HostState, RoomApi, from_wit, to_wit};
use super::{CompiledHandler, Permit, Refused, Sandbox};
use edgeroom_proto::payload::Payload;

/// Why a handler call did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its CPU budget.
    Timeout,
    /// It tried to grow memory past the cap.
    OutOfMemory,
    /// It trapped (panic, unreachable, bad memory access, ...).
    Trap(String),
    /// It asked more of the host in one call than `max_host_calls` / `max_host_bytes`.
    Budget(String),
    /// The instance could not be created.
    Instantiate(String),
    /// No instance may be created now: the node or the app holds all it may.
    Busy(Refused),
}

impl Failure {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::OutOfMemory => "memory",
            Failure::Trap(_) => "trap",
            Failure::Budget(_) => "budget",
            Failure::Instantiate(_) => "instantiate",
            Failure::Busy(_) => "busy",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Failure::Timeout => "handler exceeded its CPU deadline".into(),
            Failure::OutOfMemory => "handler exceeded its memory limit".into(),
            Failure::Trap(t) => format!("handler crashed: {t}"),
            Failure::Budget(b) => format!("handler stopped: {b}"),
            Failure::Instantiate(e) => format!("handler could not start: {e}"),
            Failure::Busy(Refused::Node) => {
                "this node runs as many handler instances as it may; try again later".into()
            }
            Failure::Busy(Refused::App) => {
                "this app runs as many handler instances as one app may on this node; try again later"
                    .into()
            }
        }
    }
}

/// A call into the handler.
#[derive(Debug)]
pub enum Call<'a> {
    Join {
        conn: &'a String,
        auth: &'a String,
    },
    Message {
        conn: &'a String,
        event: &'a String,
        /// Moved into the guest: the room has no use for it afterwards.
        payload: Payload,
        wants_reply: bool,
    },
    Leave {
        conn: &'a String,
    },
    Timer,
}

/// What a call returned.
#[derive(Debug)]
pub enum Returned {
    Join(Result<(), String>),
    Message(Result<Option<Payload>, String>),
    Unit,
}

/// How long a room refused an instance waits for an idle one to be given back.
const RECLAIM_WAIT: Duration = Duration::from_millis(250);

enum State<W: 'static> {
    Idle(Box<HostState<W>>),
    Live {
        store: Store<HostState<W>>,
        handler: Handler,
        sha256: String,
        /// Its slot in the node's and the app's budget, given back when it is dropped.
        _permit: Permit,
    },
    /// Only between taking the store data out and putting it back, inside one method.
    Transit,
}

pub struct Slot<W: 'static> {
    state: State<W>,
    /// The app whose budget its instances count against.
    app: String,
}

impl<W: RoomApi> Slot<W> {
    pub fn new(world: W, app: &str, sandbox: &Sandbox<W>) -> Self {
        let c = sandbox.config();
        let max_ticks = (c.call_deadline_ms / c.tick_ms).max(1);
        Self {
            state: State::Idle(Box::new(HostState::new(
                world,
                c.max_memory_bytes,
                max_ticks,
                (c.max_host_calls, c.max_host_bytes),
            ))),
            app: app.to_owned(),
        }
    }

    pub fn world(&mut self) -> &mut W {
        match &mut self.state {
            State::Idle(h) => &mut h.world,
            State::Live { store, .. } => &mut store.data_mut().world,
            State::Transit => unreachable!("slot observed in transit"),
        }
    }

    /// The sha256 of the running handler, if an instance is live.
    pub fn live(&self) -> Option<&str> {
        match &self.state {
            State::Live { sha256, .. } => Some(sha256),
            _ => None,
        }
    }

    /// Drop the instance (if any), keeping the world.
    pub fn unload(&mut self, sandbox: &Sandbox<W>) {
        if let State::Live { .. } = self.state
            && let State::Live { store, .. } = std::mem::replace(&mut self.state, State::Transit)
        {
            let mut data = store.into_data();
            data.memory.hit = false;
            self.state = State::Idle(Box::new(data));
            sandbox.metrics().instances(-1);
        }
    }

    /// Make sure an instance of `handler` is live.
    pub async fn ensure(
        &mut self,
        sandbox: &Sandbox<W>,
        handler: &CompiledHandler<W>,
    ) -> Result<(), Failure> {
        match self.live() {
            Some(sha) if sha == handler.sha256 => return Ok(()),
            Some(_) => self.unload(sandbox),
            None => {}
        }
        let permit = sandbox
            .instances()
            .take_waiting(&self.app, RECLAIM_WAIT)
            .await
            .map_err(|refused| {
                sandbox.metrics().refused(refused.scope());
                Failure::Busy(refused)
            })?;
        let State::Idle(data) = std::mem::replace(&mut self.state, State::Transit) else {
            unreachable!("unloaded above");
        };
        let mut store = Store::new(sandbox.engine(), *data);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut cx| {
            let d = cx.data_mut();
            d.ticks += 1;
            if d.ticks > d.max_ticks {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.data_mut().ticks = 0;
        store.data_mut().budget.reset();
        store.set_epoch_deadline(1);
        match handler.pre.instantiate_async(&mut store).await {
            Ok(h) => {
                sandbox.metrics().instances(1);
                self.state = State::Live {
                    store,
                    handler: h,
                    sha256: handler.sha256.clone(),
                    _permit: permit,
                };
                Ok(())
            }
            Err(e) => {
                let failure = classify(&e, store.data());
                self.state = State::Idle(Box::new(store.into_data()));
                let failure = match failure {
                    Failure::Trap(t) => Failure::Instantiate(t),
                    f => f,
                };
                sandbox.metrics().failed(failure.kind());
                Err(failure)
            }
        }
    }

    /// Run one call, instantiating first if needed. A failed call drops the instance.
    pub async fn call(
        &mut self,
        sandbox: &Sandbox<W>,
        handler: &CompiledHandler<W>,
        call: Call<'_>,
    ) -> Result<Returned, Failure> {
        self.ensure(sandbox, handler).await?;
        let State::Live {
            store, handler: h, ..
        } = &mut self.state
        else {
            unreachable!("ensure made the slot live");
        };
        store.data_mut().ticks = 0;
        store.data_mut().budget.reset();
        store.set_epoch_deadline(1);
        let started = Instant::now();
        let result = match call {
            Call::Join { conn, auth } => h
                .call_on_join(&mut *store, conn, auth)
                .await
                .map(Returned::Join),
            Call::Message {
                conn,
                event,
                payload,
                wants_reply,
            } => h
                .call_on_message(&mut *store, conn, event, &to_wit(payload), wants_reply)
                .await
                .map(|r| Returned::Message(r.map(|p| p.map(from_wit)))),
            Call::Leave { conn } => h
                .call_on_leave(&mut *store, conn)
                .await
                .map(|()| Returned::Unit),
            Call::Timer => h.call_on_timer(&mut *store).await.map(|()| Returned::Unit),
        };
        sandbox
            .metrics()
            .call_seconds(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let failure = classify(&e, store.data());
                sandbox.metrics().failed(failure.kind());
                // A trap poisons the whole store: start the next call from a fresh instance.
                self.unload(sandbox);
                Err(failure)
            }
        }
    }
}

fn classify<W>(e: &wasmtime::Error, data: &HostState<W>) -> Failure {
    use wasmtime::Trap;
    if data.memory.hit {
        return Failure::OutOfMemory;
    }
    if data.budget.hit {
        return Failure::Budget(format!("{e:#}"));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(format!("{e:#}")),
    }
}
