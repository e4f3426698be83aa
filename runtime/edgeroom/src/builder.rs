//! A node to run inside this process the way an operator runs one as a process: built
//! from its config and clock, started on a tokio runtime of its own, and stopped either
//! with a drain ([`NodeHandle::shutdown`]) or all at once ([`NodeHandle::kill`], as
//! kill -9 would: no drain, nothing saved, every task the node or its libraries spawned
//! dropped with the runtime). Either way the builder comes back, to start the node again
//! from the same data directory. Tests and simulations use it to restart nodes without
//! leaving a process.

use std::sync::Arc;
use std::time::Duration;

use crate::node::{Node, RunningNode, start_with_clock};
use edgeroom_host::clock::Clock;
use edgeroom_host::config::NodeConfig;

/// How long a stopping node's runtime may take to drop its tasks (and with them its
/// sockets and storage) before the caller goes on.
const DROP_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NodeBuilder {
    config: NodeConfig,
    clock: Clock,
    threads: usize,
}

impl NodeBuilder {
    pub fn new(config: NodeConfig) -> Self {
        Self {
            config,
            clock: Clock::system(),
            threads: 2,
        }
    }

    /// The clock the node keeps its time by (see `clock`).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Worker threads of the node's runtime (default 2).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Start the node on a runtime of its own; resolves once it serves.
    pub async fn start(self) -> anyhow::Result<NodeHandle> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name(format!("node-{}", self.config.node_id))
            .enable_all()
            .build()?;
        let starting = runtime.spawn(start_with_clock(self.config.clone(), self.clock.clone()));
        let running = match starting.await {
            Ok(Ok(running)) => running,
            Ok(Err(e)) => {
                drop_runtime(runtime).await;
                return Err(e);
            }
            Err(e) => {
                drop_runtime(runtime).await;
                anyhow::bail!("the node's start task failed: {e}");
            }
        };
        Ok(NodeHandle {
            builder: self,
            runtime: Some(runtime),
            running: Some(running),
        })
    }
}

/// A node started by [`NodeBuilder::start`]. Dropped, it is killed.
pub struct NodeHandle {
    builder: NodeBuilder,
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<RunningNode>,
}

impl NodeHandle {
    pub fn running(&self) -> &RunningNode {
        self.running
            .as_ref()
            .unwrap_or_else(|| unreachable!("a handle holds its node until it is consumed"))
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.running().node
    }

    /// Drain as `edgeroom serve` does on SIGTERM (see [`RunningNode::shutdown`]), then
    /// drop whatever is left of the node's tasks.
    pub async fn shutdown(mut self, grace: Duration) -> NodeBuilder {
        if let (Some(runtime), Some(running)) = (self.runtime.take(), self.running.take()) {
            let _ = runtime.spawn(running.shutdown(grace)).await;
            drop_runtime(runtime).await;
        }
        self.builder.clone()
    }

    /// Stop every task of the node at once, with no drain: what was not yet saved or
    /// sent is gone, as with kill -9. Its peers find out by its silence.
    pub async fn kill(mut self) -> NodeBuilder {
        // Nothing holds the node in a cycle: dropping its tasks lets it go.
        drop(self.running.take());
        if let Some(runtime) = self.runtime.take() {
            drop_runtime(runtime).await;
        }
        self.builder.clone()
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        // Nothing holds the node in a cycle: dropping its tasks lets it go.
        drop(self.running.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Drop a node's runtime and wait (a while) until its tasks are gone, so its ports and
/// its storage are free for a restart. A runtime cannot be dropped on an async thread;
/// a blocking one may wait for it.
async fn drop_runtime(runtime: tokio::runtime::Runtime) {
    let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(DROP_PATIENCE)).await;
}
