//! WAN emulation under QUIC: one-way delay, jitter, loss and partitions per pair of nodes.
//!
//! [`WanSocket`] wraps the real UDP socket behind quinn's `AsyncUdpSocket`, so the real
//! QUIC stack (handshakes, congestion control, retransmission) runs over the emulated
//! network; `geo-sim` and the partition tests drive it through a shared [`Wan`].
//! Impairments apply when a datagram leaves its sender, keyed by (sender, receiver)
//! address. Delayed datagrams wait in one FIFO queue per link: a timer per datagram
//! would reorder them, which QUIC reads as loss.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How one direction of a link between two nodes behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkRule {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Up to this much more, uniformly random, without reordering.
    pub jitter: Duration,
    /// Fraction of datagrams dropped, 0.0–1.0.
    pub loss: f64,
    /// Cut: every datagram is dropped.
    pub down: bool,
}

impl LinkRule {
    pub fn delay(one_way: Duration) -> Self {
        Self {
            delay: one_way,
            ..Self::default()
        }
    }
}

/// The emulated network shared by every node of a test or simulation.
#[derive(Clone, Default)]
pub struct Wan {
    inner: Arc<WanInner>,
}

struct WanInner {
    rules: Mutex<HashMap<(SocketAddr, SocketAddr), LinkRule>>,
    dropped: AtomicU64,
    delayed: AtomicU64,
    /// Every loss and jitter draw, from one seeded generator: a simulation that gives
    /// the seed gets the same sequence of draws.
    rng: Mutex<StdRng>,
}

impl Default for WanInner {
    fn default() -> Self {
        Self::seeded(rand::random())
    }
}

impl WanInner {
    fn seeded(seed: u64) -> Self {
        Self {
            rules: Mutex::default(),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl fmt::Debug for Wan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wan")
            .field("links", &self.inner.rules.lock().len())
            .finish()
    }
}

impl Wan {
    pub fn new() -> Self {
        Self::default()
    }

    /// A network whose losses and jitter are drawn from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            inner: Arc::new(WanInner::seeded(seed)),
        }
    }

    /// Set the rule for datagrams from `from` to `to`.
    pub fn set(&self, from: SocketAddr, to: SocketAddr, rule: LinkRule) {
        self.inner.rules.lock().insert((from, to), rule);
    }

    /// The same rule both ways between `a` and `b`.
    pub fn set_both(&self, a: SocketAddr, b: SocketAddr, rule: LinkRule) {
        self.set(a, b, rule);
        self.set(b, a, rule);
    }

    /// Cut every link between the two sides (other impairments are kept for the heal).
    pub fn partition(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        self.set_down(side_a, side_b, true);
    }

    /// Undo [`Wan::partition`].
    pub fn heal(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        self.set_down(side_a, side_b, false);
    }

    fn set_down(&self, side_a: &[SocketAddr], side_b: &[SocketAddr], down: bool) {
        let mut rules = self.inner.rules.lock();
        for &a in side_a {
            for &b in side_b {
                rules.entry((a, b)).or_default().down = down;
                rules.entry((b, a)).or_default().down = down;
            }
        }
    }

    fn rule(&self, from: SocketAddr, to: SocketAddr) -> Option<LinkRule> {
        self.inner.rules.lock().get(&(from, to)).copied()
    }

    /// Datagrams dropped by loss or partitions so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Datagrams that waited in a delay queue so far.
    pub fn delayed(&self) -> u64 {
        self.inner.delayed.load(Ordering::Relaxed)
    }
}

/// A UDP socket whose outgoing datagrams cross the emulated [`Wan`].
pub struct WanSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    wan: Wan,
    links: Mutex<HashMap<SocketAddr, Arc<DelayQueue>>>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for WanSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WanSocket")
            .field("local", &self.local)
            .finish()
    }
}

/// One link's datagrams waiting out their delay, due times never decreasing.
#[derive(Default)]
struct DelayQueue {
    queue: Mutex<VecDeque<Delayed>>,
    ready: Notify,
}

struct Delayed {
    due: Instant,
    to: SocketAddr,
    ecn: Option<EcnCodepoint>,
    src_ip: Option<IpAddr>,
    contents: Vec<u8>,
}

impl WanSocket {
    /// Wrap `inner`; must be called inside a tokio runtime (delay queues run on it).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, wan: Wan) -> io::Result<Self> {
        Ok(Self {
            local: inner.local_addr()?,
            inner,
            wan,
            links: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    fn delay(&self, transmit: &Transmit, rule: &LinkRule) {
        let link = {
            let mut links = self.links.lock();
            let link = links.entry(transmit.destination).or_insert_with(|| {
                let link = Arc::new(DelayQueue::default());
                self.runtime.spawn(drain(link.clone(), self.inner.clone()));
                link
            });
            link.clone()
        };
        let jitter = if rule.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.wan
                .inner
                .rng
                .lock()
                .random_range(Duration::ZERO..rule.jitter)
        };
        let mut queue = link.queue.lock();
        let earliest = queue.back().map(|d| d.due);
        let due = (Instant::now() + rule.delay + jitter).max(earliest.unwrap_or(Instant::now()));
        queue.push_back(Delayed {
            due,
            to: transmit.destination,
            ecn: transmit.ecn,
            src_ip: transmit.src_ip,
            contents: transmit.contents.to_vec(),
        });
        drop(queue);
        self.wan.inner.delayed.fetch_add(1, Ordering::Relaxed);
        link.ready.notify_one();
    }
}

/// Send one link's delayed datagrams in order, each at its due time. Ends with the
/// socket's last user (the queue is then unreachable).
async fn drain(link: Arc<DelayQueue>, socket: Arc<dyn AsyncUdpSocket>) {
    let mut poller = socket.clone().create_io_poller();
    loop {
        let next = link.queue.lock().front().map(|d| d.due);
        let Some(due) = next else {
            if Arc::strong_count(&link) == 1 {
                return;
            }
            // Bounded wait so a dropped socket ends this task.
            let _ = tokio::time::timeout(Duration::from_secs(1), link.ready.notified()).await;
            continue;
        };
        tokio::time::sleep_until(due).await;
        let Some(d) = link.queue.lock().pop_front() else {
            continue;
        };
        let transmit = Transmit {
            destination: d.to,
            ecn: d.ecn,
            contents: &d.contents,
            segment_size: None,
            src_ip: d.src_ip,
        };
        loop {
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                // A datagram that cannot be sent is lost, as on a real network.
                _ => break,
            }
        }
    }
}

impl AsyncUdpSocket for WanSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(rule) = self.wan.rule(self.local, transmit.destination) else {
            return self.inner.try_send(transmit);
        };
        if rule.down
            || (rule.loss > 0.0 && self.wan.inner.rng.lock().random_bool(rule.loss.min(1.0)))
        {
            self.wan.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if rule.delay.is_zero() && rule.jitter.is_zero() {
            return self.inner.try_send(transmit);
        }
        self.delay(transmit, &rule);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// One datagram per transmit, so loss and delay apply per datagram.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_network_draws_the_same_losses_and_jitter() {
        let draws = |wan: &Wan| -> Vec<u64> {
            (0..16)
                .map(|_| wan.inner.rng.lock().random::<u64>())
                .collect()
        };
        assert_eq!(draws(&Wan::seeded(7)), draws(&Wan::seeded(7)));
        assert_ne!(draws(&Wan::seeded(7)), draws(&Wan::seeded(8)));
    }
}
