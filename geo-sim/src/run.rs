//! `geo-sim run`: one whole run. Start the plan's nodes as processes, deploy the
//! example handlers through the control plane, let the users arrive, calibrate with
//! no emulated delay, switch the WAN and access delays on, play the fault timeline,
//! stop the traffic, let it settle, read every replica, and check the history.
//!
//! Phases, on the history's clock: `arrival` (users join, nothing emulated),
//! `calibration` (traffic, nothing emulated: what this machine's own scheduling costs),
//! `run` (the WAN on; fault times count from its start), `settle` (no new traffic;
//! what is in flight lands; presence outlives its grace; documents converge).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::geo::Map;
use crate::history::Op;
use crate::network::{self, Conditions, Lossy};
use crate::nodes::{Fleet, Life};
use crate::observe::{self, Target};
use crate::plan::{App, Plan};
use crate::recorder::Recorder;
use crate::scenario::FaultKind;
use crate::user::{self, Front, World};

/// How long a restarted node may take to serve again before the run goes on without
/// waiting for it.
const RESTART_PATIENCE: Duration = Duration::from_secs(30);
/// How long deploys are retried after a kill before the run gives up on them.
const PROBE_PATIENCE: Duration = Duration::from_secs(30);
/// After the traffic stops: at least this long for what is in flight to land.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the settled replicas may take to agree before they are read anyway.
const AGREE_PATIENCE: Duration = Duration::from_secs(15);
/// How long users may take to close when the run finishes.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);

/// One step of the fault timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Start(usize),
    End(usize),
    /// A rolling fault's k-th step (deploy through region k; restart node k).
    Roll(usize, usize),
}

/// Every step, with its time from the start of the run proper, in time order.
pub fn timeline(plan: &Plan) -> Vec<(Duration, Step)> {
    let mut out = Vec::new();
    for (i, f) in plan.faults.iter().enumerate() {
        out.push((f.at, Step::Start(i)));
        let rolls = match f.kind {
            FaultKind::RollingDeploy { every_s } => Some((plan.regions().len(), every_s)),
            FaultKind::RollingRestart { every_s } => Some((plan.nodes.len(), every_s)),
            _ => None,
        };
        let mut end = f.until;
        if let Some((steps, every_s)) = rolls {
            let every = Duration::from_secs_f64(every_s);
            for k in 0..steps {
                out.push((f.at + every * k as u32, Step::Roll(i, k)));
            }
            end = Some(
                end.unwrap_or(Duration::ZERO)
                    .max(f.at + every * steps as u32),
            );
        }
        if let Some(end) = end {
            out.push((end.min(plan.duration), Step::End(i)));
        }
    }
    // Stable: a fault that starts and ends at one time starts first.
    out.sort_by_key(|(t, _)| *t);
    out
}

/// What a run was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub seed: u64,
    pub out: PathBuf,
    /// The command that replays this run, for the report.
    pub command: String,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// How a run ended.
pub struct Outcome {
    pub plan: Arc<Plan>,
    pub history: PathBuf,
    pub interrupted: bool,
    /// When the run proper started on the history's clock, and ended.
    pub run_ms: (u64, u64),
}

/// The example handler `app` with a custom section holding `tag`: a distinct build
/// (a new version with a new sha256) that behaves exactly the same.
pub fn tagged(app: App, tag: &str) -> Vec<u8> {
    let base = match app {
        App::Chat => edgeroom::examples::CHAT,
        App::Counter => edgeroom::examples::COUNTER,
    };
    let name = b"geo-sim";
    let mut payload = leb128(name.len() as u64);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = base.to_vec();
    out.push(0); // custom section
    out.extend(leb128(payload.len() as u64));
    out.extend(payload);
    out
}

fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Deploy `wasm` as `app` through the node at `url`; its version, or why not.
async fn deploy(
    http: &reqwest::Client,
    url: &str,
    app: &str,
    wasm: Vec<u8>,
) -> Result<u64, String> {
    let r = http
        .put(format!("{url}/v1/apps/{app}/handler"))
        .body(wasm)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["version"].as_u64())
        .ok_or_else(|| format!("no version in {body}"))
}

/// Plays the plan against the fleet.
struct Conductor {
    plan: Arc<Plan>,
    map: Arc<Map>,
    fleet: Fleet,
    recorder: Recorder,
    conditions: Conditions,
    /// The node a `kill`/`pause` of "leader" resolved to, per fault.
    resolved: HashMap<usize, Vec<usize>>,
    /// Probes and convergence measurements running beside the timeline.
    side: JoinSet<()>,
    http: reqwest::Client,
}

impl Conductor {
    fn targets(&self) -> Vec<Target> {
        self.fleet
            .nodes
            .iter()
            .map(|n| Target {
                node: n.plan.name.clone(),
                url: n.url(),
            })
            .collect()
    }

    fn rooms(&self) -> Vec<(String, App)> {
        self.plan
            .rooms
            .iter()
            .map(|r| (r.name.clone(), r.app))
            .collect()
    }

    async fn push_links(&mut self) -> anyhow::Result<()> {
        let peers = self.fleet.peers();
        for i in 0..self.fleet.nodes.len() {
            let links = network::links_from(&self.plan, &self.map, &peers, i, &self.conditions);
            self.fleet.set_links(i, links).await?;
        }
        Ok(())
    }

    /// The node named in a fault: `leader` is whichever node leads the control plane
    /// now, as the first live node sees it.
    async fn node_named(&self, name: &str) -> Option<usize> {
        if name != "leader" {
            return self.fleet.index(name);
        }
        for n in self.fleet.nodes.iter().filter(|n| n.life == Life::Up) {
            let got = async {
                self.http
                    .get(format!("{}/v1/cluster", n.url()))
                    .send()
                    .await?
                    .text()
                    .await
            };
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(2), got).await
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(leader) = v["cluster"]["leader"].as_str()
            {
                return self.fleet.index(leader);
            }
        }
        None
    }

    fn in_region(&self, region: &str) -> Vec<usize> {
        (0..self.fleet.nodes.len())
            .filter(|&i| self.fleet.nodes[i].plan.region == region)
            .collect()
    }

    async fn restart(&mut self, i: usize) {
        if self.fleet.nodes[i].life != Life::Down {
            return;
        }
        let name = self.fleet.nodes[i].name().to_string();
        if let Err(e) = self.fleet.spawn(i).await {
            eprintln!("geo-sim: restarting {name}: {e:#}");
            return;
        }
        if let Err(e) = self.fleet.wait_healthy(i, RESTART_PATIENCE).await {
            eprintln!("geo-sim: {e:#}");
        }
    }

    /// Keep trying deploys through live nodes until one is accepted; record each. A
    /// write waits for a leader inside the node (up to its own patience), so each
    /// attempt may take that long: the time recorded is from the kill to the answer.
    fn probe_deploys(&mut self, after: String) {
        let recorder = self.recorder.clone();
        let http = reqwest::Client::builder()
            .timeout(PROBE_PATIENCE)
            .build()
            .unwrap_or_else(|_| self.http.clone());
        let urls: Vec<(String, String)> = self
            .fleet
            .nodes
            .iter()
            .filter(|n| n.life == Life::Up)
            .map(|n| (n.plan.name.clone(), n.url()))
            .collect();
        self.side.spawn(async move {
            let started = Instant::now();
            let mut k = 0usize;
            while started.elapsed() < PROBE_PATIENCE && !urls.is_empty() {
                let (via, url) = &urls[k % urls.len()];
                let wasm = tagged(App::Chat, &format!("probe {after} {k}"));
                let ok = deploy(&http, url, "chat", wasm).await.is_ok();
                recorder.record(Op::ControlWrite {
                    via: via.clone(),
                    what: format!("deploy after {after}"),
                    ok,
                    took_ms: started.elapsed().as_millis() as u64,
                });
                if ok {
                    return;
                }
                k += 1;
                sleep(Duration::from_millis(250)).await;
            }
        });
    }

    fn measure_convergence(&mut self, after: String, healed: Instant) {
        let (http, recorder) = (self.http.clone(), self.recorder.clone());
        let (targets, rooms) = (self.targets(), self.rooms());
        self.side.spawn(observe::convergence(
            http, targets, rooms, after, healed, recorder,
        ));
    }

    async fn step(&mut self, step: Step) -> anyhow::Result<()> {
        let (i, start) = match step {
            Step::Start(i) => (i, true),
            Step::End(i) => (i, false),
            Step::Roll(i, k) => return self.roll(i, k).await,
        };
        let fault = self.plan.faults[i].clone();
        let began = Instant::now();
        if start {
            self.recorder.record(Op::FaultStart {
                what: fault.label.clone(),
            });
        }
        match (&fault.kind, start) {
            (FaultKind::RegionDown { region }, true) => {
                for n in self.in_region(region) {
                    self.fleet.kill(n).await?;
                }
            }
            (FaultKind::RegionDown { region }, false) => {
                for n in self.in_region(region) {
                    self.restart(n).await;
                }
            }
            (FaultKind::Partition { a, b, one_way }, true) => {
                self.conditions.cuts.push((a.clone(), b.clone(), *one_way));
                self.push_links().await?;
            }
            (FaultKind::Partition { a, b, one_way }, false) => {
                let cut = (a.clone(), b.clone(), *one_way);
                self.conditions.cuts.retain(|c| *c != cut);
                self.push_links().await?;
            }
            (
                FaultKind::Lossy {
                    loss,
                    jitter_ms,
                    burst_len,
                    min_rtt_ms,
                },
                true,
            ) => {
                self.conditions.lossy = Some(Lossy {
                    loss: *loss,
                    jitter_ms: *jitter_ms,
                    burst_len: *burst_len,
                    min_rtt_ms: *min_rtt_ms,
                });
                self.push_links().await?;
            }
            (FaultKind::Lossy { .. }, false) => {
                self.conditions.lossy = None;
                self.push_links().await?;
            }
            (FaultKind::Kill { node }, true) => {
                if let Some(n) = self.node_named(node).await {
                    self.resolved.insert(i, vec![n]);
                    self.fleet.kill(n).await?;
                    self.recorder.record(Op::FaultStart {
                        what: format!("killed {}", self.fleet.nodes[n].name()),
                    });
                    self.probe_deploys(fault.label.clone());
                }
            }
            (FaultKind::Kill { .. }, false) => {
                for n in self.resolved.remove(&i).unwrap_or_default() {
                    self.restart(n).await;
                }
            }
            (FaultKind::Pause { node }, true) => {
                if let Some(n) = self.node_named(node).await
                    && self.fleet.nodes[n].life == Life::Up
                {
                    self.resolved.insert(i, vec![n]);
                    self.fleet.pause(n)?;
                }
            }
            (FaultKind::Pause { .. }, false) => {
                for n in self.resolved.remove(&i).unwrap_or_default() {
                    self.fleet.resume(n)?;
                }
            }
            (FaultKind::ClockSkew { node, offset_ms }, true) => {
                if let Some(n) = self.node_named(node).await {
                    self.resolved.insert(i, vec![n]);
                    self.fleet.set_clock(n, *offset_ms).await?;
                }
            }
            (FaultKind::ClockSkew { .. }, false) => {
                for n in self.resolved.remove(&i).unwrap_or_default() {
                    self.fleet.set_clock(n, 0).await?;
                }
            }
            // Rolling faults act in their steps; crowds, churn, resets and stalls are
            // the users' own doing.
            _ => {}
        }
        if !start {
            self.recorder.record(Op::FaultEnd {
                what: fault.label.clone(),
            });
            if matches!(
                fault.kind,
                FaultKind::Partition { .. } | FaultKind::RegionDown { .. }
            ) {
                // A region heals when it is back; a partition as soon as it is lifted.
                let healed = match fault.kind {
                    FaultKind::Partition { .. } => began,
                    _ => Instant::now(),
                };
                self.measure_convergence(fault.label.clone(), healed);
            }
        }
        Ok(())
    }

    async fn roll(&mut self, i: usize, k: usize) -> anyhow::Result<()> {
        match self.plan.faults[i].kind {
            FaultKind::RollingDeploy { .. } => {
                let region = &self.plan.regions()[k];
                let Some(&n) = self
                    .in_region(region)
                    .iter()
                    .find(|&&n| self.fleet.nodes[n].life == Life::Up)
                else {
                    return Ok(());
                };
                let (via, url) = (
                    self.fleet.nodes[n].name().to_string(),
                    self.fleet.nodes[n].url(),
                );
                for app in [App::Chat, App::Counter] {
                    let started = Instant::now();
                    let wasm = tagged(app, &format!("rolling {region}"));
                    let result = deploy(&self.http, &url, app.name(), wasm).await;
                    self.recorder.record(Op::ControlWrite {
                        via: via.clone(),
                        what: match &result {
                            Ok(v) => format!("deploy {} v{v} in {region}", app.name()),
                            Err(e) => format!("deploy {} in {region}: {e}", app.name()),
                        },
                        ok: result.is_ok(),
                        took_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
            FaultKind::RollingRestart { .. } => {
                let what = format!("restart {}", self.fleet.nodes[k].name());
                self.recorder.record(Op::FaultStart { what: what.clone() });
                if self.fleet.nodes[k].life == Life::Up {
                    self.fleet.terminate(k).await?;
                }
                self.restart(k).await;
                self.recorder.record(Op::FaultEnd { what });
            }
            _ => {}
        }
        Ok(())
    }
}

/// Start the fleet and deploy the examples; the fleet serving them everywhere.
async fn start_fleet(plan: &Plan, map: &Map, dir: &Path) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet::prepare(plan, dir)?;
    let peers = fleet.peers();
    for i in 0..fleet.nodes.len() {
        let links = network::links_from(plan, map, &peers, i, &Conditions::default());
        fleet.set_links(i, links).await?;
    }
    fleet.start_all().await?;
    let http = fleet.http().clone();
    let first = fleet.nodes[0].url();
    for app in [App::Chat, App::Counter] {
        let version = deploy(&http, &first, app.name(), tagged(app, "geo-sim"))
            .await
            .map_err(|e| anyhow::anyhow!("deploying {}: {e}", app.name()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &fleet.nodes {
            loop {
                let url = format!("{}/v1/apps/{}", n.url(), app.name());
                let live = async { http.get(&url).send().await?.text().await };
                if let Ok(text) = live.await
                    && serde_json::from_str::<serde_json::Value>(&text)
                        .is_ok_and(|v| v["version"].as_u64() == Some(version))
                {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} never served {} v{version}",
                    n.name(),
                    app.name()
                );
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(fleet)
}

/// Run the plan; the history is in `opts.out/history.jsonl` whatever happens.
pub async fn run(plan: Plan, map: Arc<Map>, opts: &Options) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    std::fs::create_dir_all(&opts.out)?;
    let nodes_dir = opts.out.join("nodes");
    // A fresh start: nothing of an earlier run's nodes.
    let _ = std::fs::remove_dir_all(&nodes_dir);
    std::fs::create_dir_all(&nodes_dir)?;
    let started = Instant::now();
    let fleet = start_fleet(&plan, &map, &nodes_dir).await?;
    println!(
        "geo-sim: {} nodes up and serving chat and counter in {:.1} s",
        fleet.nodes.len(),
        started.elapsed().as_secs_f64()
    );

    let history = opts.out.join("history.jsonl");
    let (recorder, writer) = Recorder::create(&history)?;
    let (emulated_tx, emulated) = watch::channel(false);
    let (sending_tx, sending) = watch::channel(true);
    let (finish_tx, finish) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let http = fleet.http().clone();
    let mut conductor = Conductor {
        plan: plan.clone(),
        map: map.clone(),
        conditions: Conditions::default(),
        resolved: HashMap::new(),
        side: JoinSet::new(),
        http: http.clone(),
        recorder: recorder.clone(),
        fleet,
    };
    let fronts: Vec<Front> = conductor
        .fleet
        .nodes
        .iter()
        .map(|n| Front {
            node: n.plan.name.clone(),
            url: n.url(),
            region: n.plan.region.clone(),
            place: n.plan.place,
        })
        .collect();
    let world = Arc::new(World {
        plan: plan.clone(),
        map: map.clone(),
        recorder: recorder.clone(),
        fronts,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        emulated,
        sending,
        finish,
    });
    let mut users = JoinSet::new();
    for u in plan.users.iter().cloned() {
        users.spawn(user::run(world.clone(), u));
    }
    let mut background = JoinSet::new();
    background.spawn(observe::control_plane(
        http.clone(),
        conductor.targets(),
        recorder.clone(),
        stop.clone(),
    ));
    let progress = progress_bar(
        opts.progress,
        &plan,
        &recorder,
        stop.clone(),
        &mut background,
    );

    // The timeline, on the history's clock.
    let t0 = recorder.start();
    let run_start = t0 + plan.run_start();
    let run_end = t0 + plan.run_end();
    let steps = timeline(&plan);
    let play = async {
        recorder.record(Op::Phase {
            name: "arrival".into(),
        });
        sleep_until(t0 + plan.arrival).await;
        recorder.record(Op::Phase {
            name: "calibration".into(),
        });
        sleep_until(run_start).await;
        conductor.conditions.emulated = true;
        conductor.push_links().await?;
        let _ = emulated_tx.send(true);
        recorder.record(Op::Phase { name: "run".into() });
        for (at, step) in &steps {
            sleep_until(run_start + *at).await;
            conductor.step(*step).await?;
        }
        sleep_until(run_end).await;
        anyhow::Ok(())
    };
    let interrupted = tokio::select! {
        r = play => match r {
            Ok(()) => false,
            // What was recorded so far is checked and reported all the same.
            Err(e) => {
                eprintln!("\ngeo-sim: the run stopped early: {e:#}; settling, then writing what was recorded");
                recorder.record(Op::Aborted { why: format!("{e:#}") });
                true
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ngeo-sim: interrupted; settling, then writing what was recorded (Ctrl-C again to stop at once)");
            true
        }
    };
    let run_ms = (
        plan.run_start().as_millis() as u64,
        recorder.now_ms().max(plan.run_start().as_millis() as u64),
    );

    // Settle: no new traffic; what is in flight lands; a dropped member's presence
    // outlives its grace; then every replica is read.
    recorder.record(Op::Phase {
        name: "settle".into(),
    });
    let _ = sending_tx.send(false);
    let settle = async {
        sleep(SETTLE).await;
        if !interrupted {
            let grace = plan.node_settings.presence_grace_ms.unwrap_or(15_000);
            let last_drop = recorder.tally.last_drop_ms.load(Ordering::Relaxed);
            let until = t0 + Duration::from_millis(last_drop + grace + 2_000);
            sleep_until(until.min(Instant::now() + Duration::from_millis(grace + 2_000))).await;
            let sessions = recorder
                .tally
                .sessions
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            let live: Vec<Target> = conductor
                .targets()
                .into_iter()
                .zip(&conductor.fleet.nodes)
                .filter(|(_, n)| n.life == Life::Up)
                .map(|(t, _)| t)
                .collect();
            observe::final_reads(
                &http,
                &live,
                &conductor.rooms(),
                &sessions,
                &recorder,
                AGREE_PATIENCE,
            )
            .await;
        }
    };
    tokio::select! {
        () = settle => {}
        _ = tokio::signal::ctrl_c() => eprintln!("geo-sim: stopping at once"),
    }

    let _ = finish_tx.send(true);
    let _ = stop_tx.send(true);
    let closing = async { while users.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_PATIENCE, closing).await.is_err() {
        users.abort_all();
    }
    conductor.side.abort_all();
    for (node, status) in conductor.fleet.exited() {
        recorder.record(Op::Exited { node, status });
    }
    conductor.fleet.save_metrics().await;
    conductor.fleet.kill_all().await;
    for (node, what) in conductor.fleet.panics() {
        recorder.record(Op::Panicked { node, what });
    }
    background.abort_all();
    while background.join_next().await.is_some() {}
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    drop(conductor);
    drop(world);
    drop(recorder);
    let written = writer.await??;
    println!(
        "geo-sim: {written} history records in {}",
        history.display()
    );
    Ok(Outcome {
        plan,
        history,
        interrupted,
        run_ms,
    })
}

/// A progress bar over the run's phases with live counts, drawn on stderr when it is
/// a terminal.
fn progress_bar(
    on: bool,
    plan: &Plan,
    recorder: &Recorder,
    mut stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Option<ProgressBar> {
    if !on {
        return None;
    }
    let total = plan.run_end().as_secs();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} s  {msg}")
            .ok()?,
    );
    let (b, r) = (bar.clone(), recorder.clone());
    let plan_start = plan.run_start();
    let plan_end = plan.run_end();
    tasks.spawn(async move {
        loop {
            let now = Duration::from_millis(r.now_ms());
            let phase = if now < plan_start {
                "calibrating"
            } else if now < plan_end {
                "running"
            } else {
                "settling"
            };
            let t = &r.tally;
            b.set_position(now.as_secs().min(b.length().unwrap_or(0)));
            b.set_message(format!(
                "{phase}: {} connected, {} acknowledged, {} delivered, {} drops",
                t.connected.load(Ordering::Relaxed),
                t.acknowledged.load(Ordering::Relaxed),
                t.delivered.load(Ordering::Relaxed),
                t.drops.load(Ordering::Relaxed),
            ));
            tokio::select! {
                () = sleep(Duration::from_millis(250)) => {}
                () = crate::user::until(&mut stop) => return,
            }
        }
    });
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn rolling_faults_step_through_regions_and_nodes() {
        let text = r#"name = "r"
duration_s = 100
[topology]
regions = ["us-east", "eu-west"]
nodes_per_region = 2
[users]
count = 10
weights = { us-east = 1 }
[[faults]]
at_s = 10
what = { kind = "rolling-restart", every_s = 5 }
[[faults]]
at_s = 12
for_s = 3
what = { kind = "pause", node = "eu-west-2" }
"#;
        let map = Map::shipped();
        let plan = Plan::new(&Scenario::parse(text, &map).unwrap(), &map, 1, false);
        let s = |x: u64| Duration::from_secs(x);
        assert_eq!(
            timeline(&plan),
            vec![
                (s(10), Step::Start(0)),
                (s(10), Step::Roll(0, 0)),
                (s(12), Step::Start(1)),
                (s(15), Step::Roll(0, 1)),
                (s(15), Step::End(1)),
                (s(20), Step::Roll(0, 2)),
                (s(25), Step::Roll(0, 3)),
                (s(30), Step::End(0)),
            ]
        );
    }

    #[test]
    fn a_tagged_build_is_a_new_version_of_the_same_component() {
        let a = tagged(App::Chat, "one");
        let b = tagged(App::Chat, "two");
        assert_ne!(a, b);
        assert!(a.starts_with(edgeroom::examples::CHAT));
        assert_eq!(leb128(300), [0xac, 0x02]);
    }
}
