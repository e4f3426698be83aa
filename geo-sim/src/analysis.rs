//! The figures of a run, computed from its history and its plan: delivery latency per
//! region pair against its physical floor (access + half the round trip + access),
//! the calibration's own cost, resume times after detection, connections per region
//! over time, throughput, the control plane's leader over time, convergence after
//! heals, control-plane writes after kills. Pure: a history in, figures out.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::geo::{Map, access_ms};
use crate::history::{Op, Record};
use crate::plan::Plan;

/// Percentiles of a set of samples (ms).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if s.is_empty() {
                return 0.0;
            }
            let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            s[i]
        };
        Spread {
            n: s.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: s.last().copied().unwrap_or(0.0),
        }
    }
}

/// Deliveries between two regions (sender's edge region → receiver's).
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub latency_ms: Spread,
    /// The physical floor of these deliveries: access + RTT/2 + access.
    pub floor_ms: Spread,
    /// Latency above each delivery's own floor.
    pub excess_ms: Spread,
    /// Sorted latencies, for the CDF (thinned to at most a few hundred points).
    #[serde(skip)]
    pub cdf: Vec<f64>,
}

/// One drop and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Return {
    pub client: String,
    pub why: String,
    pub dropped_ms: u64,
    /// From the drop to being a member again (resumed), less any planned time away.
    pub resumed_after_ms: Option<u64>,
    /// It came back, but as a new member (its resume failed).
    pub rejoined: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Deliveries sent during the run proper, by region pair.
    pub pairs: Vec<Pair>,
    /// Latency above the floor during calibration (no emulation: the floor is zero).
    pub calibration_ms: Spread,
    pub returns: Vec<Return>,
    /// Drops (not planned churn) that never came back.
    pub never_resumed: usize,
    /// Resume times of drops the edge caused (closed, broken, silent), ms.
    pub resume_ms: Spread,
    /// The same, per protocol (`native`, `socketio`).
    pub resume_by_protocol: BTreeMap<String, Spread>,
    /// Users per protocol.
    pub users_by_protocol: BTreeMap<String, usize>,
    /// Per fault start: how long until users noticed (their first drops), ms.
    pub detection_ms: BTreeMap<String, Spread>,
    /// Seconds since the start → users connected per region.
    pub connections: Vec<(u64, BTreeMap<String, usize>)>,
    /// Deliveries per second over time.
    pub throughput: Vec<(u64, u64)>,
    /// (ms, the leader most nodes named, term).
    pub leaders: Vec<(u64, Option<String>, u64)>,
    /// Faults on the history's clock: (label, start ms, end ms).
    pub faults: Vec<(String, u64, Option<u64>)>,
    /// Convergence after heals: (room, after, took ms or none).
    pub converged: Vec<(String, String, Option<u64>)>,
    /// Control-plane writes: (ms, via, what, ok, took ms).
    pub writes: Vec<(u64, String, String, bool, u64)>,
    /// Refusals by error code.
    pub refused: BTreeMap<String, u64>,
    /// Phase starts (name, ms).
    pub phases: Vec<(String, u64)>,
}

fn thin(sorted: &[f64], points: usize) -> Vec<f64> {
    if sorted.len() <= points {
        return sorted.to_vec();
    }
    (0..points)
        .map(|i| sorted[i * (sorted.len() - 1) / (points - 1)])
        .collect()
}

/// One region pair's deliveries: latencies, their floors, and latency above floor.
#[derive(Default)]
struct Samples {
    latency: Vec<f64>,
    floor: Vec<f64>,
    excess: Vec<f64>,
}

/// Compute the figures of a run.
pub fn figures(history: &[Record], plan: &Plan, map: &Map) -> Figures {
    let mut f = Figures::default();
    let region_of = |node: &str| plan.node(node).map(|n| n.region.clone());
    let place_of_user: HashMap<&str, (f64, f64)> = plan
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.place))
        .collect();
    let city = |region: &str| map.region(region).map_or((0.0, 0.0), |r| (r.lat, r.lon));
    let phase_ms = |name: &str| {
        history.iter().find_map(|r| match &r.op {
            Op::Phase { name: n } if n == name => Some(r.t_ms),
            _ => None,
        })
    };
    let cal_start = phase_ms("calibration").unwrap_or(0);
    let run_start = phase_ms("run").unwrap_or(u64::MAX);
    let run_end = phase_ms("settle").unwrap_or(u64::MAX);

    // Where each client is connected now (its node), as the history goes.
    let mut at: HashMap<String, String> = HashMap::new();
    let mut sends: HashMap<(String, String, u64), (u64, Option<String>)> = HashMap::new();
    let mut per_pair: BTreeMap<(String, String), Samples> = BTreeMap::new();
    let mut calibration = Vec::new();
    let mut open_drops: HashMap<String, usize> = HashMap::new();
    let mut fault_starts: Vec<(String, u64)> = Vec::new();
    let mut open_faults: HashMap<String, usize> = HashMap::new();
    let mut leader_views: BTreeMap<String, (Option<String>, u64)> = BTreeMap::new();
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_sample = 0u64;
    let away: HashMap<String, u64> = plan
        .faults
        .iter()
        .filter_map(|f| match f.kind {
            crate::scenario::FaultKind::Churn { away_s, .. } => {
                Some((f.label.clone(), (away_s * 1000.0) as u64))
            }
            _ => None,
        })
        .collect();
    let churn_away = away.values().copied().max().unwrap_or(0);

    for r in history {
        while r.t_ms >= next_sample * 1000 {
            let mut counts: BTreeMap<String, usize> =
                plan.regions().into_iter().map(|g| (g, 0)).collect();
            for node in at.values() {
                if let Some(g) = region_of(node) {
                    *counts.entry(g).or_default() += 1;
                }
            }
            f.connections.push((next_sample, counts));
            next_sample += 1;
        }
        match &r.op {
            Op::Phase { name } => f.phases.push((name.clone(), r.t_ms)),
            Op::Connect { client, node, .. } => {
                at.insert(client.clone(), node.clone());
            }
            Op::Drop { client, why, .. } => {
                at.remove(client);
                open_drops.insert(client.clone(), f.returns.len());
                f.returns.push(Return {
                    client: client.clone(),
                    why: why.clone().unwrap_or_else(|| "edge".into()),
                    dropped_ms: r.t_ms,
                    resumed_after_ms: None,
                    rejoined: false,
                });
            }
            Op::Resume { client, .. } => {
                if let Some(i) = open_drops.remove(client) {
                    let ret = &mut f.returns[i];
                    let planned = if ret.why == "churn" { churn_away } else { 0 };
                    ret.resumed_after_ms = Some(
                        r.t_ms
                            .saturating_sub(ret.dropped_ms)
                            .saturating_sub(planned),
                    );
                }
            }
            Op::Join { client, .. } => {
                if let Some(i) = open_drops.remove(client) {
                    f.returns[i].rejoined = true;
                }
            }
            Op::Send { client, room, n } => {
                sends.insert(
                    (room.clone(), client.clone(), *n),
                    (r.t_ms, at.get(client).cloned()),
                );
            }
            Op::Deliver {
                client,
                room,
                from,
                n,
            } => {
                *per_second.entry(r.t_ms / 1000).or_default() += 1;
                let Some((sent_ms, Some(src_node))) = sends.get(&(room.clone(), from.clone(), *n))
                else {
                    continue;
                };
                let Some(dst_node) = at.get(client) else {
                    continue;
                };
                let latency = r.t_ms.saturating_sub(*sent_ms) as f64;
                if *sent_ms >= cal_start && *sent_ms < run_start {
                    calibration.push(latency);
                    continue;
                }
                if *sent_ms < run_start || *sent_ms >= run_end {
                    continue;
                }
                let (Some(src), Some(dst)) = (region_of(src_node), region_of(dst_node)) else {
                    continue;
                };
                let (Some(sp), Some(dp)) = (
                    place_of_user.get(from.as_str()),
                    place_of_user.get(client.as_str()),
                ) else {
                    continue;
                };
                let floor = access_ms(*sp, city(&src), plan.last_mile_ms)
                    + map.one_way_ms(&src, &dst).unwrap_or(0.0)
                    + access_ms(*dp, city(&dst), plan.last_mile_ms);
                let e = per_pair.entry((src, dst)).or_default();
                e.latency.push(latency);
                e.floor.push(floor);
                e.excess.push(latency - floor);
            }
            Op::Refused { code, .. } => *f.refused.entry(code.clone()).or_default() += 1,
            Op::Leader { node, leader, term } => {
                leader_views.insert(node.clone(), (leader.clone(), *term));
                // The leader most nodes name now.
                let mut votes: BTreeMap<(Option<String>, u64), usize> = BTreeMap::new();
                for v in leader_views.values() {
                    *votes.entry(v.clone()).or_default() += 1;
                }
                if let Some(((l, t), _)) = votes.into_iter().max_by_key(|(_, n)| *n)
                    && f.leaders
                        .last()
                        .is_none_or(|(_, pl, pt)| *pl != l || *pt != t)
                {
                    f.leaders.push((r.t_ms, l, t));
                }
            }
            Op::FaultStart { what } => {
                open_faults.insert(what.clone(), f.faults.len());
                f.faults.push((what.clone(), r.t_ms, None));
                fault_starts.push((what.clone(), r.t_ms));
            }
            Op::FaultEnd { what } => {
                if let Some(i) = open_faults.remove(what) {
                    f.faults[i].2 = Some(r.t_ms);
                }
            }
            Op::Converged {
                room,
                after,
                took_ms,
            } => f.converged.push((room.clone(), after.clone(), *took_ms)),
            Op::ControlWrite {
                via,
                what,
                ok,
                took_ms,
            } => f
                .writes
                .push((r.t_ms, via.clone(), what.clone(), *ok, *took_ms)),
            _ => {}
        }
    }

    for ((from, to), samples) in per_pair {
        let mut sorted = samples.latency.clone();
        sorted.sort_by(f64::total_cmp);
        f.pairs.push(Pair {
            from,
            to,
            latency_ms: Spread::of(&samples.latency),
            floor_ms: Spread::of(&samples.floor),
            excess_ms: Spread::of(&samples.excess),
            cdf: thin(&sorted, 400),
        });
    }
    f.calibration_ms = Spread::of(&calibration);
    f.throughput = per_second.into_iter().collect();
    let unplanned: Vec<&Return> = f.returns.iter().filter(|r| r.why != "churn").collect();
    f.never_resumed = f
        .returns
        .iter()
        .filter(|r| r.resumed_after_ms.is_none() && !r.rejoined)
        .count();
    let resume: Vec<f64> = unplanned
        .iter()
        .filter_map(|r| r.resumed_after_ms.map(|ms| ms as f64))
        .collect();
    f.resume_ms = Spread::of(&resume);
    let protocol_of: HashMap<&str, &str> = plan
        .users
        .iter()
        .map(|u| {
            let p = match u.protocol {
                crate::plan::Protocol::Native => "native",
                crate::plan::Protocol::SocketIo => "socketio",
            };
            (u.name.as_str(), p)
        })
        .collect();
    for p in protocol_of.values() {
        *f.users_by_protocol.entry(p.to_string()).or_default() += 1;
    }
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &unplanned {
        if let (Some(ms), Some(p)) = (r.resumed_after_ms, protocol_of.get(r.client.as_str())) {
            by.entry(p.to_string()).or_default().push(ms as f64);
        }
    }
    f.resume_by_protocol = by.into_iter().map(|(p, v)| (p, Spread::of(&v))).collect();
    // Detection: a fault's users noticed it with their first drops within 30 s.
    for (what, t) in fault_starts {
        let noticed: Vec<f64> = f
            .returns
            .iter()
            .filter(|r| {
                (r.why == "edge" || r.why == "silent")
                    && r.dropped_ms >= t
                    && r.dropped_ms < t + 30_000
            })
            .map(|r| (r.dropped_ms - t) as f64)
            .collect();
        if !noticed.is_empty() {
            f.detection_ms.insert(what, Spread::of(&noticed));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Spread::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(
            (s.n, s.p50, s.p95, s.p99, s.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Spread::of(&[]), Spread::default());
        assert_eq!(thin(&[1.0, 2.0, 3.0, 4.0, 5.0], 3), vec![1.0, 3.0, 5.0]);
    }
}
