//! `loadgen`: drives an Edgeroom node (native protocol) and prints one JSON line of figures.
//!
//! Scenario `fanout`: R rooms of S members; the first P members of each room publish
//! `broadcast` events, which the `echo` contract relays to every other member. Payloads
//! carry publisher, sequence number and send time, so subscribers measure latency, loss,
//! duplicates and reordering themselves. With `--rate 0` publishers run closed-loop,
//! keeping `--window` events unacknowledged: the throughput the node sustains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone)]
#[command(about = "Load generator for Edgeroom; prints one JSON line")]
struct Args {
    /// Scenario: `fanout`.
    #[arg(default_value = "fanout")]
    scenario: String,
    /// Node address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value = "echo")]
    app: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Members per room, publishers included.
    #[arg(long, default_value_t = 100)]
    subs: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 1)]
    pubs: usize,
    /// Total publish rate (events/s over all publishers); 0 = closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged events per publisher in closed loop.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Acknowledgements of one publisher's events, counted by its reader.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
    notify: Notify,
}

struct SubStats {
    delivered: u64,
    dup: u64,
    gaps: u64,
    lat: Histogram<u64>,
}

async fn connect(args: &Args, room: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{}/v1/ws?app={}", args.addr, args.app);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::Text(
        json!({"type": "join", "room": room, "ref": 0})
            .to_string()
            .into(),
    ))
    .await?;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m? {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["type"] == "reply" && v["ref"] == 0 {
                anyhow::ensure!(v["ok"] == true, "join refused: {v}");
                return Ok(ws);
            }
        }
    }
    anyhow::bail!("connection closed during join")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.scenario == "fanout",
        "unknown scenario {:?} (this build has: fanout)",
        args.scenario
    );
    anyhow::ensure!(
        args.pubs >= 1 && args.pubs <= args.subs,
        "need 1 <= pubs <= subs"
    );
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let n_pubs = args.rooms * args.pubs;
    let acks: Vec<Arc<Acks>> = (0..n_pubs).map(|_| Arc::new(Acks::default())).collect();
    // Tells readers to stop and report, once deliveries have drained.
    let (finish, finished) = tokio::sync::watch::channel(false);

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for r in 0..args.rooms {
        let room = format!("load-{r}");
        for m in 0..args.subs {
            let (sink, stream) = connect(&args, &room).await?.split();
            let publisher = (m < args.pubs).then_some(r * args.pubs + m);
            readers.push(tokio::spawn(read_loop(
                stream,
                n_pubs,
                publisher.map(|p| acks[p].clone()),
                start,
                finished.clone(),
            )));
            if let Some(p) = publisher {
                writers.push((p, room.clone(), sink));
            }
        }
    }

    let per_pub_rate = args.rate as f64 / n_pubs as f64;
    let pad = "x".repeat(args.size);
    let t0 = Instant::now();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|(p, room, sink)| {
            tokio::spawn(publish(
                sink,
                p as u64,
                room,
                pad.clone(),
                per_pub_rate,
                args.window,
                start,
                stop.clone(),
                acks[p].clone(),
            ))
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
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut total = SubStats {
        delivered: 0,
        dup: 0,
        gaps: 0,
        lat: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    let _ = finish.send(true);
    for r in readers {
        if let Ok(Ok(s)) = r.await {
            total.delivered += s.delivered;
            total.dup += s.dup;
            total.gaps += s.gaps;
            total.lat.add(&s.lat)?;
        }
    }
    let acked: u64 = acks.iter().map(|a| a.ok.load(Ordering::Relaxed)).sum();
    let failed: u64 = acks.iter().map(|a| a.failed.load(Ordering::Relaxed)).sum();
    let expected = acked * (args.subs as u64 - 1);
    let ms = |q: f64| total.lat.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "scenario": "fanout", "protocol": "native", "app": args.app,
            "rooms": args.rooms, "subs": args.subs, "pubs": args.pubs, "rate": args.rate, "size": args.size,
            "secs": (elapsed * 100.0).round() / 100.0,
            "sent": sent, "acked": acked, "failed": failed,
            "events_per_s": (acked as f64 / elapsed).round(),
            "delivered": total.delivered, "expected": expected,
            "delivered_per_s": (total.delivered as f64 / elapsed).round(),
            "loss": expected.saturating_sub(total.delivered), "duplicates": total.dup, "out_of_order": total.gaps,
            "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": total.lat.max() as f64 / 1000.0, "mean": total.lat.mean() / 1000.0, "n": total.lat.len()},
        })
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    id: u64,
    room: String,
    pad: String,
    rate: f64,
    window: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    acks: Arc<Acks>,
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
                let done = acks.ok.load(Ordering::Relaxed) + acks.failed.load(Ordering::Relaxed);
                if seq - done < window || stop.load(Ordering::Relaxed) {
                    break;
                }
                notified.await;
            }
        }
        seq += 1;
        let t = start.elapsed().as_micros() as u64;
        let frame = json!({"type": "emit", "room": room, "event": "broadcast", "data": {"p": id, "s": seq, "t": t, "pad": pad}, "ref": seq});
        sink.send(Message::Text(frame.to_string().into())).await?;
    }
    Ok(seq)
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    publishers: usize,
    acks: Option<Arc<Acks>>,
    start: Instant,
    mut finished: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SubStats> {
    let mut last = vec![0u64; publishers];
    let mut st = SubStats {
        delivered: 0,
        dup: 0,
        gaps: 0,
        lat: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    loop {
        let m = tokio::select! {
            m = stream.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = finished.wait_for(|f| *f) => break,
        };
        let Message::Text(t) = m? else { continue };
        let v: Value = serde_json::from_str(t.as_str())?;
        match v["type"].as_str() {
            Some("reply") => {
                if let Some(a) = &acks {
                    let counter = if v["ok"] == true { &a.ok } else { &a.failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    a.notify.notify_one();
                }
            }
            Some("event") => {
                let d = &v["data"];
                let (p, s, sent) = (
                    d["p"].as_u64().unwrap_or(u64::MAX),
                    d["s"].as_u64().unwrap_or(0),
                    d["t"].as_u64().unwrap_or(0),
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
                st.lat
                    .saturating_record((start.elapsed().as_micros() as u64).saturating_sub(sent));
            }
            _ => {}
        }
    }
    Ok(st)
}
