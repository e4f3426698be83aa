//! The store data of a handler instance and the host side of the WIT `room` interface.
//!
//! The sandbox knows nothing of rooms: every import is forwarded to a [`RoomApi`] the
//! room supplies. WASI is limited to what a Rust `std` guest needs to start (io, cli
//! with an empty environment and discarded output, random); no filesystem, clocks or
//! sockets are linked, so a handler that imports them is refused at deploy.

use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::edgeroom::handler::{room, types};
use super::bindings::{Handler, Payload as WitPayload};
use edgeroom_proto::payload::Payload;

/// What a handler can do to its room. The room implements this.
pub trait RoomApi: Send + 'static {
    fn broadcast(&mut self, event: String, payload: Payload, except: Option<String>);
    fn send(&mut self, conn: String, event: String, payload: Payload);
    fn kick(&mut self, conn: String, reason: String);
    /// (conn, presence JSON) of every member.
    fn members(&mut self) -> Vec<(String, String)>;
    /// A member's verified identity (its token's `sub`); `None` if anonymous or not a member.
    fn user(&mut self, conn: &str) -> Option<String>;
    fn set_presence(&mut self, conn: String, presence_json: String) -> Result<(), String>;
    fn state_get(&mut self, path: &str) -> Option<String>;
    fn state_put(&mut self, path: &str, json: &str) -> Result<(), String>;
    fn state_increment(&mut self, path: &str, by: i64) -> Result<i64, String>;
    fn state_push(&mut self, path: &str, json: &str) -> Result<u32, String>;
    fn state_delete(&mut self, path: &str) -> Result<(), String>;
    fn set_timer(&mut self, ms: u32);
    fn now_ms(&mut self) -> u64;
    fn log(&mut self, level: tracing::Level, msg: &str);
    /// (app, room, node, region)
    fn info(&mut self) -> [String; 4];
}

/// Memory accounting for one instance; remembers whether the cap was hit so a
/// resulting trap is reported as out-of-memory.
pub(crate) struct MemoryCap {
    pub max: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Store data: the room's API plus what wasmtime and WASI need.
pub struct HostState<W> {
    pub world: W,
    pub(crate) memory: MemoryCap,
    /// Epoch ticks this call has run; the deadline callback traps past `max_ticks`.
    pub(crate) ticks: u64,
    pub(crate) max_ticks: u64,
    /// What this call has asked of the host so far.
    pub(crate) budget: Budget,
    wasi: WasiCtx,
    table: ResourceTable,
}

/// One handler call's use of the host, against its caps.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    calls: u32,
    bytes: usize,
    pub max_calls: u32,
    pub max_bytes: usize,
    /// The call was ended for going over (so its trap is reported as that).
    pub hit: bool,
}

impl Budget {
    /// A new handler call starts with nothing spent.
    pub fn reset(&mut self) {
        (self.calls, self.bytes, self.hit) = (0, 0, false);
    }

    /// One host call passing `bytes`: an error (a trap for the guest) once over a cap.
    fn spend(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.calls = self.calls.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.calls > self.max_calls || self.bytes > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "host-call budget exceeded ({} calls, {} bytes; at most {} and {})",
                self.calls, self.bytes, self.max_calls, self.max_bytes
            )));
        }
        Ok(())
    }
}

impl<W> HostState<W> {
    pub fn new(world: W, max_memory: usize, max_ticks: u64, budget: (u32, usize)) -> Self {
        Self {
            world,
            memory: MemoryCap {
                max: max_memory,
                hit: false,
            },
            ticks: 0,
            max_ticks,
            budget: Budget {
                max_calls: budget.0,
                max_bytes: budget.1,
                ..Budget::default()
            },
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl<W: Send> WasiView for HostState<W> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn to_host(p: WitPayload) -> Payload {
    Payload {
        json: p.json,
        binaries: p.binaries.into_iter().map(Into::into).collect(),
    }
}

/// The guest gets its own copy of the attachments (one not shared is moved, not copied).
pub(crate) fn to_wit(p: Payload) -> WitPayload {
    WitPayload {
        json: p.json,
        binaries: p.binaries.into_iter().map(Vec::from).collect(),
    }
}

pub(crate) fn from_wit(p: WitPayload) -> Payload {
    to_host(p)
}

/// Longest message a handler may log at once.
const MAX_LOG: usize = 4096;

impl<W: RoomApi> types::Host for HostState<W> {}

impl<W: RoomApi> room::Host for HostState<W> {
    fn broadcast(
        &mut self,
        event: String,
        payload: WitPayload,
        except: Option<String>,
    ) -> wasmtime::Result<()> {
        self.budget.spend(event.len() + wit_size(&payload))?;
        self.world.broadcast(event, to_host(payload), except);
        Ok(())
    }
    fn send(&mut self, conn: String, event: String, payload: WitPayload) -> wasmtime::Result<()> {
        self.budget.spend(event.len() + wit_size(&payload))?;
        self.world.send(conn, event, to_host(payload));
        Ok(())
    }
    fn kick(&mut self, conn: String, reason: String) -> wasmtime::Result<()> {
        self.budget.spend(reason.len())?;
        self.world.kick(conn, reason);
        Ok(())
    }
    fn members(&mut self) -> wasmtime::Result<Vec<types::Member>> {
        self.budget.spend(0)?;
        Ok(self
            .world
            .members()
            .into_iter()
            .map(|(conn, presence)| types::Member { conn, presence })
            .collect())
    }
    fn user(&mut self, conn: String) -> wasmtime::Result<Option<String>> {
        self.budget.spend(0)?;
        Ok(self.world.user(&conn))
    }
    fn set_presence(
        &mut self,
        conn: String,
        presence_json: String,
    ) -> wasmtime::Result<Result<(), String>> {
        self.budget.spend(presence_json.len())?;
        Ok(self.world.set_presence(conn, presence_json))
    }
    fn state_get(&mut self, path: String) -> wasmtime::Result<Option<String>> {
        self.budget.spend(path.len())?;
        Ok(self.world.state_get(&path))
    }
    fn state_put(&mut self, path: String, json: String) -> wasmtime::Result<Result<(), String>> {
        self.budget.spend(path.len() + json.len())?;
        Ok(self.world.state_put(&path, &json))
    }
    fn state_increment(&mut self, path: String, by: i64) -> wasmtime::Result<Result<i64, String>> {
        self.budget.spend(path.len())?;
        Ok(self.world.state_increment(&path, by))
    }
    fn state_push(&mut self, path: String, json: String) -> wasmtime::Result<Result<u32, String>> {
        self.budget.spend(path.len() + json.len())?;
        Ok(self.world.state_push(&path, &json))
    }
    fn state_delete(&mut self, path: String) -> wasmtime::Result<Result<(), String>> {
        self.budget.spend(path.len())?;
        Ok(self.world.state_delete(&path))
    }
    fn set_timer(&mut self, ms: u32) -> wasmtime::Result<()> {
        self.budget.spend(0)?;
        self.world.set_timer(ms);
        Ok(())
    }
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.budget.spend(0)?;
        Ok(self.world.now_ms())
    }
    fn log(&mut self, level: types::Level, msg: String) -> wasmtime::Result<()> {
        self.budget.spend(msg.len())?;
        let level = match level {
            types::Level::Trace => tracing::Level::TRACE,
            types::Level::Debug => tracing::Level::DEBUG,
            types::Level::Info => tracing::Level::INFO,
            types::Level::Warn => tracing::Level::WARN,
            types::Level::Error => tracing::Level::ERROR,
        };
        let mut end = msg.len().min(MAX_LOG);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        self.world.log(level, &msg[..end]);
        Ok(())
    }
    fn info(&mut self) -> wasmtime::Result<types::Context> {
        self.budget.spend(0)?;
        let [app, room, node, region] = self.world.info();
        Ok(types::Context {
            app,
            room,
            node,
            region,
        })
    }
}

fn wit_size(p: &WitPayload) -> usize {
    p.json.len() + p.binaries.iter().map(Vec::len).sum::<usize>()
}

struct Io;
impl HasData for Io {
    type Data<'a> = &'a mut ResourceTable;
}

/// A linker with the room interface and the WASI subset.
pub(crate) fn linker<W: RoomApi>(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<Linker<HostState<W>>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::{cli, io, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    let mut l = Linker::new(engine);
    Handler::add_to_linker::<HostState<W>, HasSelf<HostState<W>>>(&mut l, |s| s)?;
    io::error::add_to_linker::<HostState<W>, Io>(&mut l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<HostState<W>, Io>(&mut l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<HostState<W>, Io>(&mut l, |t| t.ctx().table)?;
    cli::environment::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::exit::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::stdin::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::stdout::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::stderr::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::terminal_input::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::terminal_output::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState<W>, WasiCli>(&mut l, HostState::<W>::cli)?;
    random::random::add_to_linker::<HostState<W>, WasiRandom>(&mut l, HostState::<W>::random)?;
    random::insecure::add_to_linker::<HostState<W>, WasiRandom>(&mut l, HostState::<W>::random)?;
    random::insecure_seed::add_to_linker::<HostState<W>, WasiRandom>(
        &mut l,
        HostState::<W>::random,
    )?;
    Ok(l)
}
