//! `loadgen`: drives an Edgeroom node — or a Socket.IO peer implementing the same `echo`
//! contract — and prints one JSON line of figures.
//!
//! Scenarios:
//! - `fanout`: R rooms of S members; the first P members of each room publish
//!   `broadcast` events, which the contract relays to every other member. Payloads carry
//!   publisher, sequence number and send time, so subscribers measure latency, loss,
//!   duplicates and reordering themselves. `--rate 0` runs publishers closed-loop with
//!   `--window` events unacknowledged: the throughput the server sustains.
//! - `echo`: C connections, each keeping `--window` `echo` requests in flight: acks/s
//!   and round-trip latency.
//! - `conns`: C idle connections spread over source addresses 127.0.0.2–127.0.0.250;
//!   with `--server-pid`, the server's resident memory per connection.
//!
//! With `--server-pid`, the server's CPU time over the measured window is reported too.

mod client;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Notify;

use client::{Incoming, Protocol, Receiver, Sender, Target};

#[derive(Parser, Clone)]
#[command(about = "Load generator for Edgeroom and Socket.IO peers; prints one JSON line")]
struct Args {
    /// Scenario: `fanout`, `echo` or `conns`.
    #[arg(default_value = "fanout")]
    scenario: String,
    /// Server address (ip:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// More nodes of the same cluster (repeat): `fanout` spreads each room's members
    /// over all nodes in turn (member `m` on node `m mod n`, publishers first), and
    /// reports latency for same-node and cross-node deliveries apart.
    #[arg(long)]
    also: Vec<std::net::SocketAddr>,
    #[arg(long, value_enum, default_value = "native")]
    protocol: Protocol,
    /// Native protocol: the app.
    #[arg(long, default_value = "echo")]
    app: String,
    /// Socket.IO: the Engine.IO path.
    #[arg(long, default_value = "/socket.io/")]
    path: String,
    /// A name for the server in the output (e.g. `edgeroom`, `socket.io`).
    #[arg(long, default_value = "edgeroom")]
    server: String,
    /// The server's process id: report its CPU time (and, for `conns`, its memory).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// `fanout`: members per room, publishers included.
    #[arg(long, default_value_t = 100)]
    subs: usize,
    /// `fanout`: publishers per room.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// `echo`, `conns`: connections.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Total request rate (events/s over all senders); 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged requests per sender in closed loop.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// `echo`: the event each request emits (`echo` is answered without touching the
    /// room's log; `broadcast` is logged, so a standalone node journals it before the
    /// answer).
    #[arg(long, default_value = "echo")]
    event: String,
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

/// Acknowledgements of one sender's requests, counted by its reader.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
    notify: Notify,
}

impl Acks {
    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// What one connection's reader measured.
struct ReadStats {
    delivered: u64,
    dup: u64,
    gaps: u64,
    lat: Histogram<u64>,
    /// Deliveries of events published on another node.
    remote_lat: Histogram<u64>,
}

impl ReadStats {
    fn new() -> Self {
        Self {
            delivered: 0,
            dup: 0,
            gaps: 0,
            lat: histogram(),
            remote_lat: histogram(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0,
           "mean": (h.mean() / 10.0).round() / 100.0, "n": h.len()})
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target {
        protocol: args.protocol,
        addr: args.addr,
        nodes: std::iter::once(args.addr)
            .chain(args.also.clone())
            .collect(),
        app: args.app.clone(),
        path: args.path.clone(),
    };
    let mut out = match args.scenario.as_str() {
        "fanout" => fanout(&args, &target).await?,
        "echo" => echo(&args, &target).await?,
        "conns" => conns(&args, &target).await?,
        other => anyhow::bail!("unknown scenario {other:?} (fanout, echo, conns)"),
    };
    out["server"] = json!(args.server);
    out["protocol"] = json!(match args.protocol {
        Protocol::Native => "native",
        Protocol::Socketio => "socketio",
    });
    println!("{out}");
    Ok(())
}

/// The clock every payload timestamp is taken from.
fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

async fn fanout(args: &Args, target: &Target) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.pubs >= 1 && args.pubs <= args.subs,
        "need 1 <= pubs <= subs"
    );
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let n_pubs = args.rooms * args.pubs;
    let acks: Vec<Arc<Acks>> = (0..n_pubs).map(|_| Arc::new(Acks::default())).collect();
    let (finish, finished) = tokio::sync::watch::channel(false);

    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let nodes = target.nodes.len();
    let rss_start = args.server_pid.and_then(server::rss_bytes);
    for r in 0..args.rooms {
        let room = format!("load-{r}");
        for m in 0..args.subs {
            // Members come from many loopback sources, as a crowd comes from many
            // addresses (a node caps sockets per address).
            let from = std::net::IpAddr::from([127, 0, 0, 2 + ((r * args.subs + m) % 249) as u8]);
            let (tx, rx) = target.connect_to(m, &room, Some(from)).await?;
            let publisher = (m < args.pubs).then_some(r * args.pubs + m);
            // Which publishers of the run sit on another node than this member.
            let remote: Vec<bool> = (0..n_pubs)
                .map(|p| (p % args.pubs) % nodes != m % nodes)
                .collect();
            readers.push(tokio::spawn(read_loop(
                rx,
                remote,
                publisher.map(|p| acks[p].clone()),
                start,
                finished.clone(),
            )));
            if let Some(p) = publisher {
                senders.push((p, tx));
            }
        }
    }

    let cpu = server::Cpu::start(args.server_pid);
    // Our own CPU too: on a small machine the load generator can be the limit.
    let own_cpu = server::Cpu::start(Some(std::process::id()));
    let per_sender_rate = args.rate as f64 / n_pubs as f64;
    let pad = "x".repeat(args.size);
    let t0 = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(p, tx)| {
            let (pad, stop, acks) = (pad.clone(), stop.clone(), acks[p].clone());
            let (rate, window) = (per_sender_rate, args.window);
            tokio::spawn(async move {
                send_loop(rate, window, &stop, &acks, |seq| {
                    let data = json!({"p": p, "s": seq, "t": micros_since(start), "pad": pad});
                    tx.emit("broadcast", &data, Some(seq))
                })
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    acks.iter().for_each(|a| a.notify.notify_one());
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Let deliveries drain before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_split = cpu.split();
    let cpu_s = cpu_split.map(|(user, kernel)| user + kernel);
    let loadgen_cpu_s = own_cpu.split().map(|(user, kernel)| round2(user + kernel));

    let rss_end = args.server_pid.and_then(server::rss_bytes);
    let mut total = ReadStats::new();
    let _ = finish.send(true);
    for r in readers {
        if let Ok(Ok(s)) = r.await {
            total.delivered += s.delivered;
            total.dup += s.dup;
            total.gaps += s.gaps;
            total.lat.add(&s.lat)?;
            total.remote_lat.add(&s.remote_lat)?;
        }
    }
    let acked: u64 = acks.iter().map(|a| a.ok.load(Ordering::Relaxed)).sum();
    let failed: u64 = acks.iter().map(|a| a.failed.load(Ordering::Relaxed)).sum();
    let expected = acked * (args.subs as u64 - 1);
    Ok(json!({
        "scenario": "fanout",
        "rooms": args.rooms, "subs": args.subs, "pubs": args.pubs, "rate": args.rate, "size": args.size,
        "secs": round2(elapsed),
        "sent": sent, "acked": acked, "failed": failed,
        "events_per_s": (acked as f64 / elapsed).round(),
        "delivered": total.delivered, "expected": expected,
        "delivered_per_s": (total.delivered as f64 / elapsed).round(),
        "loss": expected.saturating_sub(total.delivered), "duplicates": total.dup, "out_of_order": total.gaps,
        "latency_ms": latency_json(&total.lat),
        "nodes": nodes,
        "cross_node_latency_ms": (nodes > 1).then(|| latency_json(&total.remote_lat)),
        // Each event goes once to every other node with members of its room.
        "forwarded": acked * (nodes.min(args.subs) as u64 - 1),
        "server_rss_start": rss_start,
        "server_rss_end": rss_end,
        "server_cpu_s": cpu_s.map(round2),
        "server_kernel_cpu_s": cpu_split.map(|(_, kernel)| round2(kernel)),
        "loadgen_cpu_s": loadgen_cpu_s,
        "server_cpu_s_per_million_deliveries": cpu_s
            .filter(|_| total.delivered > 0)
            .map(|c| round2(c * 1e6 / total.delivered as f64)),
    }))
}

/// Send requests at `rate` per second, or closed-loop with `window` in flight, until
/// `stop`. Returns how many were sent.
async fn send_loop(
    rate: f64,
    window: u64,
    stop: &AtomicBool,
    acks: &Acks,
    send: impl Fn(u64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut seq = 0u64;
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(iv) = interval {
            next += iv;
            tokio::time::sleep_until(next).await;
        } else {
            loop {
                let notified = acks.notify.notified();
                if seq - acks.done() < window || stop.load(Ordering::Relaxed) {
                    break;
                }
                notified.await;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        seq += 1;
        send(seq)?;
    }
    Ok(seq)
}

async fn read_loop(
    mut rx: Receiver,
    remote: Vec<bool>,
    acks: Option<Arc<Acks>>,
    start: Instant,
    mut finished: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<ReadStats> {
    let mut last = vec![0u64; remote.len()];
    let mut st = ReadStats::new();
    while let Some(m) = next_until(&mut rx, &mut finished).await? {
        match m {
            Incoming::Ack { ok, .. } => {
                if let Some(a) = &acks {
                    let counter = if ok { &a.ok } else { &a.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    a.notify.notify_one();
                }
            }
            Incoming::Event { event, data } if event == "broadcast" => {
                let (p, s, sent) = (
                    data["p"].as_u64().unwrap_or(u64::MAX),
                    data["s"].as_u64().unwrap_or(0),
                    data["t"].as_u64().unwrap_or(0),
                );
                let Some(prev) = usize::try_from(p).ok().and_then(|p| last.get_mut(p)) else {
                    continue;
                };
                if s <= *prev {
                    st.dup += 1;
                    continue;
                }
                if s != *prev + 1 {
                    st.gaps += 1;
                }
                *prev = s;
                st.delivered += 1;
                let lat = micros_since(start).saturating_sub(sent);
                st.lat.saturating_record(lat);
                if remote.get(p as usize) == Some(&true) {
                    st.remote_lat.saturating_record(lat);
                }
            }
            Incoming::Event { .. } | Incoming::Other => {}
        }
    }
    Ok(st)
}

/// The next message, or `None` once the connection ended or the run is `finished`.
async fn next_until(
    rx: &mut Receiver,
    finished: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Incoming>> {
    tokio::select! {
        m = rx.next() => m.transpose(),
        _ = finished.wait_for(|f| *f) => Ok(None),
    }
}

async fn echo(args: &Args, target: &Target) -> anyhow::Result<Value> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (finish, finished) = tokio::sync::watch::channel(false);
    let mut conns = Vec::new();
    for c in 0..args.conns {
        let room = format!("echo-{}", c % args.rooms.max(1));
        conns.push(target.connect(&room, None).await?);
    }
    let cpu = server::Cpu::start(args.server_pid);
    // Our own CPU too: on a small machine the load generator can be the limit.
    let own_cpu = server::Cpu::start(Some(std::process::id()));
    let per_sender_rate = args.rate as f64 / args.conns.max(1) as f64;
    let pad = "x".repeat(args.size);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut readers = Vec::new();
    for (tx, mut rx) in conns {
        let acks = Arc::new(Acks::default());
        let (acks2, mut finished) = (acks.clone(), finished.clone());
        readers.push(tokio::spawn(async move {
            let mut lat = histogram();
            while let Some(m) = next_until(&mut rx, &mut finished).await? {
                if let Incoming::Ack { ok, data, .. } = m {
                    if ok {
                        // An answer that does not echo the send time (a broadcast's)
                        // counts, without a latency.
                        if let Some(sent) = data["t"].as_u64() {
                            lat.saturating_record(micros_since(start).saturating_sub(sent));
                        }
                        acks2.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        acks2.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    acks2.notify.notify_one();
                }
            }
            anyhow::Ok(lat)
        }));
        let (pad, stop, window) = (pad.clone(), stop.clone(), args.window);
        let event = args.event.clone();
        tasks.push((
            acks.clone(),
            tokio::spawn(async move {
                send_loop(per_sender_rate, window, &stop, &acks, |seq| {
                    let data = json!({"t": micros_since(start), "pad": pad});
                    tx.emit(&event, &data, Some(seq))
                })
                .await
            }),
        ));
    }
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut all_acks = Vec::new();
    for (acks, t) in tasks {
        acks.notify.notify_one();
        sent += t.await??;
        all_acks.push(acks);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // Acks counted within the window are the throughput; stragglers still get latency.
    let acked: u64 = all_acks.iter().map(|a| a.ok.load(Ordering::Relaxed)).sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_split = cpu.split();
    let cpu_s = cpu_split.map(|(user, kernel)| user + kernel);
    let loadgen_cpu_s = own_cpu.split().map(|(user, kernel)| round2(user + kernel));
    let _ = finish.send(true);
    let mut lat = histogram();
    for r in readers {
        if let Ok(Ok(h)) = r.await {
            lat.add(&h)?;
        }
    }
    let failed: u64 = all_acks
        .iter()
        .map(|a| a.failed.load(Ordering::Relaxed))
        .sum();
    Ok(json!({
        "scenario": "echo", "event": args.event,
        "conns": args.conns, "window": args.window, "rate": args.rate, "size": args.size,
        "secs": round2(elapsed), "sent": sent, "acked": acked, "failed": failed,
        "acks_per_s": (acked as f64 / elapsed).round(),
        "latency_ms": latency_json(&lat),
        "server_cpu_s": cpu_s.map(round2),
        "server_kernel_cpu_s": cpu_split.map(|(_, kernel)| round2(kernel)),
        "loadgen_cpu_s": loadgen_cpu_s,
        "server_cpu_s_per_million_acks": cpu_s
            .filter(|_| acked > 0)
            .map(|c| round2(c * 1e6 / acked as f64)),
    }))
}

async fn conns(args: &Args, target: &Target) -> anyhow::Result<Value> {
    let rss_before = args.server_pid.and_then(server::rss_bytes);
    let t0 = Instant::now();
    let mut held: Vec<(Sender, tokio::task::JoinHandle<()>)> = Vec::with_capacity(args.conns);
    let mut failed = 0u64;
    let mut first_error = None;
    for c in 0..args.conns {
        // 127.0.0.2 ..= 127.0.0.250: many sources, so no one source runs out of ports.
        let ip = std::net::IpAddr::from([127, 0, 0, 2 + (c % 249) as u8]);
        let room = format!("idle-{}", c % args.rooms.max(1));
        match target.connect(&room, Some(ip)).await {
            Ok((tx, mut rx)) => {
                // Keep reading: answers heartbeats, notices the close.
                let reader =
                    tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
                held.push((tx, reader));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    // Idle for a while (through at least one heartbeat when secs > ping interval).
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let alive = held.iter().filter(|(_, r)| !r.is_finished()).count();
    let rss_after = args.server_pid.and_then(server::rss_bytes);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if alive > 0 => Some((a.saturating_sub(b)) as f64 / alive as f64),
        _ => None,
    };
    Ok(json!({
        "scenario": "conns",
        "conns": args.conns, "connected": held.len(), "failed": failed, "first_error": first_error,
        "alive_after_idle": alive, "idle_secs": args.secs,
        "connect_per_s": (held.len() as f64 / connect_secs).round(),
        "server_rss_before_bytes": rss_before, "server_rss_after_bytes": rss_after,
        "server_rss_per_conn_bytes": per_conn.map(f64::round),
    }))
}
