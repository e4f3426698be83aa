//! The thread a node's peer traffic runs on: QUIC (every connection's crypto, acks,
//! loss recovery and timers), the emulated WAN's delay queues, and whatever must answer
//! a peer promptly (heartbeats).
//!
//! Why a thread of its own: on the node's workers a heartbeat waits behind room work
//! (handler calls, Automerge), and a node that is only busy looked dead to its peers.
//! They then moved its presence away and greeted it afresh when it came back, which
//! made everyone busier still: in full-scale geo-sim that cascade took the fleet down.
//! Akka cluster gives its heartbeats a dispatcher of their own for the same reason.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};
use tokio::runtime::Handle;

/// A runtime of one worker thread, owned by the endpoint it serves. Dropped, its tasks
/// end (in the background: it may be dropped from async code).
pub struct IoThread {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl IoThread {
    pub fn start(name: &str) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// What quinn spawns its drivers, timers and sockets on.
    pub fn quinn(&self) -> Arc<dyn Runtime> {
        Arc::new(QuinnOn(self.handle.clone()))
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// quinn's tokio runtime, pinned to one runtime whoever calls it (quinn spawns a
/// connection's driver from the task that dials or accepts).
struct QuinnOn(Handle);

impl fmt::Debug for QuinnOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QuinnOn")
    }
}

impl Runtime for QuinnOn {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        let _in = self.0.enter();
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let _in = self.0.enter();
        TokioRuntime.wrap_udp_socket(sock)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}
