//! WAN emulation under QUIC: one-way delay, jitter, uniform and bursty loss, bandwidth
//! caps and partitions (symmetric or one-way) per pair of nodes.
//!
//! [`WanSocket`] wraps the real UDP socket behind quinn's `AsyncUdpSocket`, so the real
//! QUIC stack (handshakes, congestion control, retransmission) runs over the emulated
//! network; `geo-sim` and the partition tests drive it through a shared [`Wan`].
//! Impairments apply when a datagram leaves its sender, keyed by (sender, receiver)
//! address, by the sans-IO [`admit`]; a datagram already in flight when its link is cut
//! is dropped when it falls due. Delayed datagrams wait in one FIFO queue per link: a
//! timer per datagram would reorder them, which QUIC reads as loss.

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
    /// Cut: every datagram is dropped, those in flight too.
    pub down: bool,
    /// Bursty loss on top of `loss` (Gilbert–Elliott).
    pub burst: Option<Burst>,
    /// Bandwidth cap in bytes per second: datagrams leave one after another at this
    /// rate, and a datagram that would wait more than [`MAX_QUEUEING`] is dropped (a
    /// router's tail drop).
    pub rate: Option<u64>,
}

/// Gilbert–Elliott loss: the link is good or bad; before each datagram a good link
/// turns bad with probability `enter` and a bad one good with `leave`; on a bad link a
/// datagram is lost with probability `loss`. Mean burst: 1/`leave` datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub enter: f64,
    pub leave: f64,
    pub loss: f64,
}

/// The longest a bandwidth-capped link queues a datagram before it drops one.
pub const MAX_QUEUEING: Duration = Duration::from_millis(200);

/// What one link remembers between datagrams.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkState {
    /// In a loss burst.
    bad: bool,
    /// When the capped link is free to send the next datagram.
    free_at: Option<Instant>,
}

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Dropped,
    /// Sent at once.
    Now,
    /// Sent at this time (the caller keeps a link's datagrams in order).
    At(Instant),
}

/// Decide one datagram's fate: pure but for the draws from `rng`.
pub fn admit(
    state: &mut LinkState,
    rule: &LinkRule,
    len: usize,
    now: Instant,
    rng: &mut impl Rng,
) -> Fate {
    if rule.down {
        return Fate::Dropped;
    }
    if let Some(b) = rule.burst {
        let flip = if state.bad { b.leave } else { b.enter };
        if rng.random_bool(flip.clamp(0.0, 1.0)) {
            state.bad = !state.bad;
        }
        if state.bad && rng.random_bool(b.loss.clamp(0.0, 1.0)) {
            return Fate::Dropped;
        }
    }
    if rule.loss > 0.0 && rng.random_bool(rule.loss.min(1.0)) {
        return Fate::Dropped;
    }
    let departs = match rule.rate.filter(|r| *r > 0) {
        Some(rate) => {
            let start = state.free_at.map_or(now, |f| f.max(now));
            if start.duration_since(now) > MAX_QUEUEING {
                return Fate::Dropped;
            }
            let sending = Duration::from_secs_f64(len as f64 / rate as f64);
            state.free_at = Some(start + sending);
            start + sending
        }
        None => now,
    };
    let jitter = if rule.jitter.is_zero() {
        Duration::ZERO
    } else {
        rng.random_range(Duration::ZERO..rule.jitter)
    };
    let due = departs + rule.delay + jitter;
    if due == now { Fate::Now } else { Fate::At(due) }
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
    states: Mutex<HashMap<(SocketAddr, SocketAddr), LinkState>>,
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
            states: Mutex::default(),
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

    /// Undo [`Wan::partition`] (or [`Wan::cut_one_way`] both ways).
    pub fn heal(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        self.set_down(side_a, side_b, false);
    }

    /// Cut only what `from` sends to `to` (the other direction still flows).
    pub fn cut_one_way(&self, from: &[SocketAddr], to: &[SocketAddr], down: bool) {
        let mut rules = self.inner.rules.lock();
        for &a in from {
            for &b in to {
                rules.entry((a, b)).or_default().down = down;
            }
        }
    }

    fn set_down(&self, side_a: &[SocketAddr], side_b: &[SocketAddr], down: bool) {
        self.cut_one_way(side_a, side_b, down);
        self.cut_one_way(side_b, side_a, down);
    }

    fn is_down(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.rule(from, to).is_some_and(|r| r.down)
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

    fn delay(&self, transmit: &Transmit, due: Instant) {
        let link = {
            let mut links = self.links.lock();
            let link = links.entry(transmit.destination).or_insert_with(|| {
                let link = Arc::new(DelayQueue::default());
                let (wan, local) = (self.wan.clone(), self.local);
                self.runtime
                    .spawn(drain(link.clone(), self.inner.clone(), wan, local));
                link
            });
            link.clone()
        };
        let mut queue = link.queue.lock();
        let due = queue.back().map_or(due, |last| due.max(last.due));
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
async fn drain(
    link: Arc<DelayQueue>,
    socket: Arc<dyn AsyncUdpSocket>,
    wan: Wan,
    local: SocketAddr,
) {
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
        // In flight when the link was cut: gone with it.
        if wan.is_down(local, d.to) {
            wan.inner.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
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
        let key = (self.local, transmit.destination);
        let fate = {
            let mut states = self.wan.inner.states.lock();
            let state = states.entry(key).or_default();
            let mut rng = self.wan.inner.rng.lock();
            admit(
                state,
                &rule,
                transmit.contents.len(),
                Instant::now(),
                &mut *rng,
            )
        };
        match fate {
            Fate::Dropped => {
                self.wan.inner.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Fate::Now => self.inner.try_send(transmit),
            Fate::At(due) => {
                self.delay(transmit, due);
                Ok(())
            }
        }
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

    fn fates(rule: LinkRule, n: usize, len: usize, gap: Duration) -> Vec<Fate> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut state = LinkState::default();
        let t0 = Instant::now();
        (0..n)
            .map(|i| admit(&mut state, &rule, len, t0 + gap * i as u32, &mut rng))
            .collect()
    }

    #[test]
    fn a_cut_link_drops_everything_and_a_clear_one_sends_at_once() {
        let down = LinkRule {
            down: true,
            ..LinkRule::default()
        };
        assert!(
            fates(down, 10, 100, Duration::ZERO)
                .iter()
                .all(|f| *f == Fate::Dropped)
        );
        assert!(
            fates(LinkRule::default(), 10, 100, Duration::ZERO)
                .iter()
                .all(|f| *f == Fate::Now)
        );
    }

    #[test]
    fn bursty_loss_comes_in_runs_at_its_mean_rate() {
        // Good→bad 1%, bad→good 10%, everything lost while bad: ~9% loss in runs of ~10.
        let rule = LinkRule {
            burst: Some(Burst {
                enter: 0.01,
                leave: 0.1,
                loss: 1.0,
            }),
            ..LinkRule::default()
        };
        let f = fates(rule, 100_000, 100, Duration::ZERO);
        let lost = f.iter().filter(|f| **f == Fate::Dropped).count() as f64 / f.len() as f64;
        assert!((0.06..0.12).contains(&lost), "{lost}");
        let runs = f
            .windows(2)
            .filter(|w| w[0] != Fate::Dropped && w[1] == Fate::Dropped)
            .count();
        let mean_run = (lost * f.len() as f64) / runs as f64;
        assert!((7.0..14.0).contains(&mean_run), "{mean_run}");
    }

    #[test]
    fn a_capped_link_spaces_datagrams_and_tail_drops_past_its_buffer() {
        // 1 MB/s, 1000-byte datagrams offered all at once: one per ms, 200 ms of buffer.
        let rule = LinkRule {
            rate: Some(1_000_000),
            delay: Duration::from_millis(10),
            ..LinkRule::default()
        };
        let f = fates(rule, 300, 1000, Duration::ZERO);
        let t0 = match (f[0], f[1]) {
            (Fate::At(a), Fate::At(b)) => {
                assert_eq!(b - a, Duration::from_millis(1));
                a - Duration::from_millis(11)
            }
            other => panic!("{other:?}"),
        };
        let sent = f.iter().filter(|f| matches!(f, Fate::At(_))).count();
        assert!((200..=202).contains(&sent), "{sent}");
        let Some(Fate::At(last)) = f.iter().rev().find(|f| matches!(f, Fate::At(_))) else {
            panic!("nothing sent")
        };
        assert!(*last - t0 <= MAX_QUEUEING + Duration::from_millis(12));
    }

    #[test]
    fn delay_and_jitter_stay_within_their_bounds() {
        let rule = LinkRule {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(5),
            ..LinkRule::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let mut state = LinkState::default();
        let now = Instant::now();
        for _ in 0..1000 {
            let Fate::At(due) = admit(&mut state, &rule, 100, now, &mut rng) else {
                panic!("delayed datagrams are not dropped or sent at once");
            };
            let d = due - now;
            assert!(
                d >= Duration::from_millis(40) && d < Duration::from_millis(45),
                "{d:?}"
            );
        }
    }
}
