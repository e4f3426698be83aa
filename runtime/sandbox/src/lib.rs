//! The WebAssembly sandbox: compiles uploaded handler components and runs them.
//! It knows nothing of rooms, nodes or networks: a room supplies a [`RoomApi`] for a
//! handler's imports, and the node a [`Meter`] for what is counted.
//!
//! One wasmtime engine per node with a pooling allocator; a per-call CPU budget by
//! epoch interruption (calls are async and yield at every tick, so a spinning handler
//! never holds an I/O thread); a memory cap per instance; compiled components cached
//! by sha256 in memory and on disk. Any failure of a call ends that call only: the
//! instance is dropped and the next call gets a fresh one.

mod budget;
mod host;
mod slot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use budget::{Instances, Permit, Reclaim, Refused};
pub use host::{HostState, RoomApi};
pub use slot::{Call, Failure, Returned, Slot};

/// The WebAssembly sandbox's settings (`[sandbox]` in `node.toml`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// CPU budget of one handler call.
    pub call_deadline_ms: u64,
    /// Memory one handler instance may use.
    pub max_memory_bytes: usize,
    /// Handler instances (rooms with a live handler) per node: slots of the pooling allocator.
    pub max_instances: u32,
    /// Handler instances one app's rooms may hold live on the node, so one app (or one
    /// client creating rooms of it) cannot starve the others. A room refused an instance
    /// answers `overloaded`; counted in `edgeroom_instances_refused{scope}`.
    pub max_instances_per_app: u32,
    /// Epoch tick: the granularity of deadlines and of yielding to other rooms.
    pub tick_ms: u64,
    /// Host calls (broadcast, state, log, ...) one handler call may make; past it the
    /// call traps (`handler_failed`, counted as `budget`).
    pub max_host_calls: u32,
    /// Bytes one handler call may pass to the host (event names and payloads, JSON,
    /// log text); past it the call traps.
    pub max_host_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            call_deadline_ms: 50,
            max_memory_bytes: 32 * 1024 * 1024,
            max_instances: 1000,
            max_instances_per_app: 750,
            tick_ms: 5,
            max_host_calls: 10_000,
            max_host_bytes: 32 * 1024 * 1024,
        }
    }
}

/// What the sandbox counts, as the node's metrics take it.
pub trait Meter: Send + Sync + 'static {
    /// A handler instance was created (`+1`) or dropped (`-1`).
    fn instances(&self, delta: i64);
    /// One handler call took this long.
    fn call_seconds(&self, seconds: f64);
    /// A call failed, of this kind (`Failure::kind`).
    fn failed(&self, kind: &str);
    /// An instance was refused by this cap (`Refused::scope`).
    fn refused(&self, scope: &str);
}

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../guest-sdk/wit",
        world: "handler",
        exports: { default: async },
        // A host call may end the guest's call: the per-call host budget.
        imports: { default: trappable },
    });
}

/// A handler compiled and checked against the world, ready to instantiate.
pub struct CompiledHandler<W: 'static> {
    pub sha256: String,
    pre: bindings::HandlerPre<HostState<W>>,
}

impl<W> Clone for CompiledHandler<W> {
    fn clone(&self) -> Self {
        Self {
            sha256: self.sha256.clone(),
            pre: self.pre.clone(),
        }
    }
}

/// The node's wasm engine.
pub struct Sandbox<W: 'static> {
    engine: Engine,
    linker: Linker<HostState<W>>,
    config: SandboxConfig,
    cache_dir: PathBuf,
    compiled: Mutex<HashMap<String, CompiledHandler<W>>>,
    metrics: Arc<dyn Meter>,
    instances: Arc<Instances>,
}

/// Hex sha256 of a handler's bytes: its identity everywhere.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl<W: RoomApi> Sandbox<W> {
    pub fn new(
        config: SandboxConfig,
        cache_dir: PathBuf,
        metrics: Arc<dyn Meter>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.max_wasm_stack(512 << 10);
        let instances = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memory_size(config.max_memory_bytes)
            .max_memories_per_component(2)
            .max_core_instances_per_component(16)
            .max_tables_per_component(8);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)?;
        let linker = host::linker::<W>(&engine)?;
        std::fs::create_dir_all(&cache_dir)?;

        // The epoch clock: deadlines and yields happen at its ticks.
        let weak = engine.weak();
        let tick = Duration::from_millis(config.tick_ms);
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir,
            compiled: Mutex::new(HashMap::new()),
            metrics,
            instances: Instances::new(instances, config.max_instances_per_app),
            config,
        }))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn metrics(&self) -> &dyn Meter {
        &*self.metrics
    }

    pub(crate) fn instances(&self) -> &Arc<Instances> {
        &self.instances
    }

    /// Calls for idle instances to be dropped (see [`Instances`]), for a room to watch.
    pub fn reclaims(&self) -> tokio::sync::watch::Receiver<Reclaim> {
        self.instances.reclaims()
    }

    /// Compile (or fetch from cache) and check a handler. Blocking: compiling takes tens
    /// of milliseconds, so async callers use `spawn_blocking`. The error is a reason fit
    /// to show the uploader.
    pub fn compile(&self, wasm: &[u8]) -> Result<CompiledHandler<W>, String> {
        let sha256 = sha256_hex(wasm);
        if let Some(c) = self.compiled.lock().get(&sha256) {
            return Ok(c.clone());
        }
        let component = self.load_or_compile(&sha256, wasm)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("handler does not fit the edgeroom world: {e:#}"))?;
        let pre = bindings::HandlerPre::new(pre)
            .map_err(|e| format!("handler does not export the edgeroom world: {e:#}"))?;
        let compiled = CompiledHandler {
            sha256: sha256.clone(),
            pre,
        };
        self.compiled.lock().insert(sha256, compiled.clone());
        Ok(compiled)
    }

    fn load_or_compile(&self, sha256: &str, wasm: &[u8]) -> Result<Component, String> {
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            return Err("not a WebAssembly binary (bad magic number)".into());
        }
        let cached = self.cache_dir.join(format!("{sha256}.cwasm"));
        if cached.exists() {
            // SAFETY: files in the cache directory are written only by `Component::serialize`
            // below, from this engine version; a stale or foreign artifact fails to load and
            // is recompiled.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(%sha256, "compiled cache entry unusable, recompiling: {e:#}")
                }
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| format!("invalid handler component: {e:#}"))?;
        match component.serialize() {
            Ok(bytes) => {
                let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, &cached))
                    .is_err()
                {
                    tracing::warn!(%sha256, "could not write the compiled cache");
                }
            }
            Err(e) => tracing::warn!(%sha256, "could not serialize compiled handler: {e:#}"),
        }
        Ok(component)
    }
}
