//! Sandbox figures: handler call overhead and room cold start, with the real `echo`
//! component and the real room world. Prints one JSON line.
//!
//! `cargo bench -p edgeroom --bench sandbox`

use std::sync::Arc;
use std::time::Instant;

use edgeroom::config::SandboxConfig;
use edgeroom_host::metrics::Metrics;
use edgeroom_host::room::World;
use edgeroom_host::room::world::Place;
use edgeroom_proto::ids::{NodeId, RoomId, Seq};
use edgeroom_proto::payload::Payload;
use edgeroom_room::core::{LogLimits, RoomCore};
use edgeroom_room::state::RoomDoc;
use edgeroom_sandbox::{Call, Sandbox, Slot};

fn world(metrics: &Arc<Metrics>) -> World {
    let room = RoomId::new("bench").unwrap();
    let core = RoomCore::new(
        NodeId::new("b1").unwrap(),
        room.clone(),
        Seq::first(1),
        LogLimits {
            max_age_ms: 120_000,
            max_events: 1000,
            max_bytes: usize::MAX,
            max_ids: usize::MAX,
            max_ids_bytes: usize::MAX,
        },
    );
    let place = Place {
        app: "echo".into(),
        room,
        node: "b1".into(),
        region: "local".into(),
    };
    World::new(place, core, RoomDoc::new(), metrics.clone())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let metrics = Arc::new(Metrics::new());
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::<World>::new(
        SandboxConfig::default(),
        cache.path().to_path_buf(),
        metrics.clone(),
    )
    .unwrap();
    let handler = sandbox.compile(edgeroom::examples::ECHO).unwrap();

    // Cold start: instantiate a fresh instance for a room (store + instance from the pool).
    let mut slot = Slot::new(world(&metrics), "bench", &sandbox);
    let mut cold = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        slot.ensure(&sandbox, &handler).await.unwrap();
        cold.push(t.elapsed().as_secs_f64() * 1e6);
        slot.unload(&sandbox);
    }
    cold.sort_by(f64::total_cmp);

    // Call overhead: `echo` with a reply requested returns its arguments unchanged.
    slot.ensure(&sandbox, &handler).await.unwrap();
    let payload = Payload {
        json: r#"[{"hello":"world","n":42}]"#.into(),
        binaries: vec![],
    };
    let (conn, event) = ("c1".to_string(), "echo".to_string());
    // The room owns each event's payload and moves it into the call; so does this loop.
    let call = |payload| Call::Message {
        conn: &conn,
        event: &event,
        payload,
        wants_reply: true,
    };
    for _ in 0..10_000 {
        slot.call(&sandbox, &handler, call(payload.clone()))
            .await
            .unwrap();
    }
    // Ten batches; the median batch is the figure, the spread shows the machine's noise.
    let (batches, per_batch) = (10, 50_000);
    let mut per_call = Vec::new();
    for _ in 0..batches {
        let payloads = vec![payload.clone(); per_batch];
        let t = Instant::now();
        for p in payloads {
            slot.call(&sandbox, &handler, call(p)).await.unwrap();
        }
        per_call.push(t.elapsed().as_secs_f64() * 1e6 / per_batch as f64);
    }
    per_call.sort_by(f64::total_cmp);
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;

    println!(
        "{}",
        serde_json::json!({
            "bench": "sandbox",
            "handler": "echo",
            "call_overhead_us": round3(percentile(&per_call, 0.5)),
            "call_overhead_us_min": round3(per_call[0]),
            "call_overhead_us_max": round3(per_call[per_call.len() - 1]),
            "calls": batches * per_batch,
            "cold_start_us_p50": (percentile(&cold, 0.5) * 10.0).round() / 10.0,
            "cold_start_us_p99": (percentile(&cold, 0.99) * 10.0).round() / 10.0,
            "cold_starts": cold.len(),
        })
    );
}
