//! The plan of one run, derived from a scenario and one root seed and nothing else:
//! the nodes and where they are, every user (home region, place on the map, room,
//! arrival), the rooms, and the fault timeline with names resolved. The same scenario
//! and seed give the same plan, so `--seed` replays it (real time does not replay
//! thread interleavings; `--repeat` measures how often a violation shows).
//!
//! `--quick` shrinks any scenario to 3 regions × 1 node and about 200 users over 30 s,
//! keeping the regions its faults name and scaling the fault timeline to fit.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::geo::Map;
use crate::scenario::{FaultKind, Links, NodeSettings, Scenario, Workload};

/// A node of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// `<region>-<n>`, n from 1.
    pub name: String,
    pub region: String,
    /// (latitude, longitude): its region's city.
    pub place: (f64, f64),
    /// The first node of each region votes in the control plane; the others learn.
    pub voter: bool,
}

/// Which example a room runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Chat,
    Counter,
}

impl App {
    pub fn name(self) -> &'static str {
        match self {
            App::Chat => "chat",
            App::Counter => "counter",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoomPlan {
    pub name: String,
    pub app: App,
}

/// How a user talks to its edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    SocketIo,
}

/// A simulated user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPlan {
    /// `u<n>`: what the history calls it, and its chat name.
    pub name: String,
    /// The region whose weight placed it.
    pub region: String,
    /// Where on the map it is.
    pub place: (f64, f64),
    /// Index into [`Plan::rooms`].
    pub room: usize,
    /// When it arrives, from the start of the run's first phase (arrival); crowd
    /// members arrive during the run.
    pub join_at: Duration,
    /// Messages or increments per second.
    pub rate_per_s: f64,
    /// Its own seed: its send times, churn, and which edge URL it picks.
    pub seed: u64,
    pub protocol: Protocol,
}

/// A fault with its times resolved, relative to the start of the run proper.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    pub at: Duration,
    /// When it ends (none: an instant, or to the end of the run).
    pub until: Option<Duration>,
    pub kind: FaultKind,
    /// How reports name it, e.g. `region-down eu-west`.
    pub label: String,
}

/// Everything a run does, decided before it starts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub seed: u64,
    pub quick: bool,
    /// Users arrive over this long (WAN off).
    pub arrival: Duration,
    /// Then traffic with no emulated delay, to measure this machine's own cost.
    pub calibration: Duration,
    /// Then the run proper, with the WAN and access delays, and its faults.
    pub duration: Duration,
    pub nodes: Vec<NodePlan>,
    pub rooms: Vec<RoomPlan>,
    pub users: Vec<UserPlan>,
    pub faults: Vec<FaultPlan>,
    pub links: Links,
    pub node_settings: NodeSettings,
    pub last_mile_ms: f64,
}

/// Users a quick run has at most.
const QUICK_USERS: usize = 200;
/// A quick run's run proper.
const QUICK_S: f64 = 30.0;
/// A fault a quick run shortens still lasts this long (or its own length if shorter).
const QUICK_MIN_FAULT_S: f64 = 5.0;
/// How far from their region's city users live, km at most.
const USER_RADIUS_KM: f64 = 800.0;

impl Plan {
    /// The plan for `scenario` (already checked against `map`) with this root seed.
    pub fn new(scenario: &Scenario, map: &Map, seed: u64, quick: bool) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = if quick {
            shrink(scenario)
        } else {
            scenario.clone()
        };
        let regions = s.topology.regions.get_ref().clone();
        let per_region = *s.topology.nodes_per_region.get_ref();
        let place_of = |r: &str| map.region(r).map_or((0.0, 0.0), |g| (g.lat, g.lon));
        let nodes: Vec<NodePlan> = regions
            .iter()
            .flat_map(|r| {
                (1..=per_region).map(move |i| NodePlan {
                    name: format!("{r}-{i}"),
                    region: r.clone(),
                    place: place_of(r),
                    voter: i == 1,
                })
            })
            .collect();

        let rooms: Vec<RoomPlan> = (0..s.users.rooms.max(1))
            .map(|i| {
                let app = match s.users.workload {
                    Workload::Chat => App::Chat,
                    Workload::Counter => App::Counter,
                    Workload::Both if i % 2 == 0 => App::Chat,
                    Workload::Both => App::Counter,
                };
                RoomPlan {
                    name: format!("{}-{i}", app.name()),
                    app,
                }
            })
            .collect();

        let arrival = Duration::from_secs_f64(s.users.join_s.max(0.0));
        let weights = s.users.weights.get_ref();
        let mut homes = share_out(s.users.count, &regions, |r| {
            weights.get(r).copied().unwrap_or(0.0)
        });
        homes.shuffle(&mut rng);
        let mut users = Vec::with_capacity(homes.len());
        for (i, home) in homes.into_iter().enumerate() {
            users.push(UserPlan {
                name: format!("u{i}"),
                place: around(place_of(&home), &mut rng),
                region: home,
                room: i % rooms.len(),
                join_at: arrival.mul_f64(rng.random::<f64>()),
                rate_per_s: s.users.rate_per_s,
                seed: rng.random(),
                protocol: protocol(s.users.socketio, &mut rng),
            });
        }

        let lead_in = arrival + Duration::from_secs(s.calibration_s);
        let mut faults = Vec::new();
        for f in &s.faults {
            let at = Duration::from_secs_f64(*f.at_s.get_ref());
            let until = f.for_s.map(|d| at + Duration::from_secs_f64(d));
            let kind = f.what.get_ref().clone();
            if let FaultKind::FlashCrowd { users: crowd } = &kind {
                let span = until.map_or(Duration::from_secs(5), |u| u - at);
                let crowd_homes =
                    share_out(*crowd, &regions, |r| weights.get(r).copied().unwrap_or(0.0));
                for home in crowd_homes {
                    let i = users.len();
                    users.push(UserPlan {
                        name: format!("u{i}"),
                        place: around(place_of(&home), &mut rng),
                        region: home,
                        room: i % rooms.len(),
                        join_at: lead_in + at + span.mul_f64(rng.random::<f64>()),
                        rate_per_s: s.users.rate_per_s,
                        seed: rng.random(),
                        protocol: protocol(s.users.socketio, &mut rng),
                    });
                }
            }
            faults.push(FaultPlan {
                at,
                until,
                label: label(&kind),
                kind,
            });
        }
        faults.sort_by_key(|f| f.at);

        Plan {
            name: s.name.clone(),
            seed,
            quick,
            arrival,
            calibration: Duration::from_secs(s.calibration_s),
            duration: Duration::from_secs(*s.duration_s.get_ref()),
            nodes,
            rooms,
            users,
            faults,
            links: s.links(),
            node_settings: s.node.clone(),
            last_mile_ms: s.users.last_mile_ms,
        }
    }

    /// When the run proper starts, from the start of arrival.
    pub fn run_start(&self) -> Duration {
        self.arrival + self.calibration
    }

    /// When the run proper ends, from the start of arrival.
    pub fn run_end(&self) -> Duration {
        self.run_start() + self.duration
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in &self.nodes {
            if !out.contains(&n.region) {
                out.push(n.region.clone());
            }
        }
        out
    }
}

fn protocol(socketio: f64, rng: &mut impl Rng) -> Protocol {
    match rng.random::<f64>() < socketio {
        true => Protocol::SocketIo,
        false => Protocol::Native,
    }
}

/// `count` items over `regions` by weight, largest remainders first.
fn share_out(count: usize, regions: &[String], weight: impl Fn(&str) -> f64) -> Vec<String> {
    let total: f64 = regions.iter().map(|r| weight(r)).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let exact: Vec<f64> = regions
        .iter()
        .map(|r| count as f64 * weight(r) / total)
        .collect();
    let mut whole: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_by(|a, b| {
        (exact[*b] - exact[*b].floor()).total_cmp(&(exact[*a] - exact[*a].floor()))
    });
    let short = count - whole.iter().sum::<usize>();
    for &i in order.iter().take(short) {
        whole[i] += 1;
    }
    regions
        .iter()
        .zip(whole)
        .flat_map(|(r, n)| std::iter::repeat_n(r.clone(), n))
        .collect()
}

/// A place within [`USER_RADIUS_KM`] of `centre`, uniformly over the disc.
fn around(centre: (f64, f64), rng: &mut impl Rng) -> (f64, f64) {
    let km = USER_RADIUS_KM * rng.random::<f64>().sqrt();
    let bearing = rng.random::<f64>() * std::f64::consts::TAU;
    let lat = (centre.0 + km * bearing.cos() / 111.0).clamp(-89.0, 89.0);
    let per_degree = 111.0 * lat.to_radians().cos().max(0.05);
    let mut lon = centre.1 + km * bearing.sin() / per_degree;
    if lon > 180.0 {
        lon -= 360.0;
    } else if lon < -180.0 {
        lon += 360.0;
    }
    (lat, lon)
}

fn label(kind: &FaultKind) -> String {
    match kind {
        FaultKind::RegionDown { region } => format!("region-down {region}"),
        FaultKind::Partition { a, b, one_way } => format!(
            "partition {} {} {}",
            a.join("+"),
            if *one_way { "-/->" } else { "<-/->" },
            b.join("+")
        ),
        FaultKind::Lossy {
            loss, jitter_ms, ..
        } => format!("lossy {:.1}% ±{jitter_ms} ms", loss * 100.0),
        FaultKind::Kill { node } => format!("kill {node}"),
        FaultKind::Pause { node } => format!("pause {node}"),
        FaultKind::ClockSkew { node, offset_ms } => format!("clock-skew {node} {offset_ms:+} ms"),
        FaultKind::RollingDeploy { .. } => "rolling-deploy".into(),
        FaultKind::RollingRestart { .. } => "rolling-restart".into(),
        FaultKind::FlashCrowd { users } => format!("flash-crowd +{users}"),
        FaultKind::Churn { every_s, away_s } => format!("churn every {every_s} s, away {away_s} s"),
        FaultKind::ClientReset { share } => format!("client-reset {:.0}%", share * 100.0),
        FaultKind::ClientStall { share } => format!("client-stall {:.0}%", share * 100.0),
    }
}

/// The quick form of a scenario: 3 regions (those its faults name first) × 1 node,
/// at most [`QUICK_USERS`] users, a [`QUICK_S`] run with the fault timeline scaled to
/// it.
fn shrink(full: &Scenario) -> Scenario {
    let mut s = full.clone();
    let all = full.topology.regions.get_ref();
    let mut keep: Vec<String> = Vec::new();
    let want = |r: &String, keep: &mut Vec<String>| {
        if all.contains(r) && !keep.contains(r) && keep.len() < 3 {
            keep.push(r.clone());
        }
    };
    for f in &full.faults {
        match f.what.get_ref() {
            FaultKind::RegionDown { region } => want(region, &mut keep),
            FaultKind::Partition { a, b, .. } => {
                // One region of each side first, so the cut still splits the run.
                if let Some(r) = a.first() {
                    want(r, &mut keep);
                }
                if let Some(r) = b.first() {
                    want(r, &mut keep);
                }
            }
            FaultKind::Kill { node }
            | FaultKind::Pause { node }
            | FaultKind::ClockSkew { node, .. } => {
                if let Some((region, _)) = node.rsplit_once('-') {
                    want(&region.to_string(), &mut keep);
                }
            }
            _ => {}
        }
    }
    let weights = full.users.weights.get_ref();
    let mut by_weight = all.clone();
    by_weight.sort_by(|a, b| {
        let w = |r: &String| weights.get(r).copied().unwrap_or(0.0);
        w(b).total_cmp(&w(a))
    });
    for r in &by_weight {
        want(r, &mut keep);
    }
    // Keep the map's order.
    keep.sort_by_key(|r| all.iter().position(|x| x == r));
    let mut w = weights.clone();
    w.retain(|r, _| keep.contains(r));
    if w.values().sum::<f64>() <= 0.0 {
        for r in &keep {
            w.insert(r.clone(), 1.0);
        }
    }
    s.users.weights = toml::Spanned::new(full.users.weights.span(), w);
    let scale_users = QUICK_USERS.min(full.users.count) as f64 / full.users.count.max(1) as f64;
    s.users.count = QUICK_USERS.min(full.users.count);
    s.users.rooms = ((full.users.rooms as f64 * scale_users).round() as usize).max(2);
    s.users.join_s = full.users.join_s.min(3.0);
    s.calibration_s = full.calibration_s.min(3);
    s.topology.regions = toml::Spanned::new(full.topology.regions.span(), keep.clone());
    s.topology.nodes_per_region = toml::Spanned::new(full.topology.nodes_per_region.span(), 1);

    let full_s = *full.duration_s.get_ref() as f64;
    let k = (QUICK_S / full_s).min(1.0);
    s.duration_s = toml::Spanned::new(full.duration_s.span(), full_s.min(QUICK_S) as u64);
    s.faults.clear();
    for f in &full.faults {
        let mut f = f.clone();
        let at = *f.at_s.get_ref() * k;
        f.at_s = toml::Spanned::new(f.at_s.span(), at);
        f.for_s = f.for_s.map(|d| (d * k).max(d.min(QUICK_MIN_FAULT_S)));
        if let Some(d) = f.for_s {
            // Still within the run.
            f.for_s = Some(d.min(QUICK_S - at));
        }
        let what = match f.what.get_ref().clone() {
            FaultKind::Partition { a, b, one_way } => {
                let (a, b): (Vec<String>, Vec<String>) = (
                    a.into_iter().filter(|r| keep.contains(r)).collect(),
                    b.into_iter().filter(|r| keep.contains(r)).collect(),
                );
                if a.is_empty() || b.is_empty() {
                    continue;
                }
                FaultKind::Partition { a, b, one_way }
            }
            FaultKind::RegionDown { region } if !keep.contains(&region) => continue,
            FaultKind::Kill { node } => FaultKind::Kill {
                node: quick_node(&node, &keep),
            },
            FaultKind::Pause { node } => FaultKind::Pause {
                node: quick_node(&node, &keep),
            },
            FaultKind::ClockSkew { node, offset_ms } => FaultKind::ClockSkew {
                node: quick_node(&node, &keep),
                offset_ms,
            },
            FaultKind::RollingDeploy { every_s } => FaultKind::RollingDeploy {
                every_s: (every_s * k).max(3.0),
            },
            FaultKind::RollingRestart { every_s } => FaultKind::RollingRestart {
                every_s: (every_s * k).max(3.0),
            },
            FaultKind::FlashCrowd { users } => FaultKind::FlashCrowd {
                users: ((users as f64 * scale_users).round() as usize).max(1),
            },
            other => other,
        };
        f.what = toml::Spanned::new(f.what.span(), what);
        s.faults.push(f);
    }
    s
}

/// A node name in the quick form: the same region's only node (or the first kept
/// region's, if its region was dropped); `leader` stays.
fn quick_node(node: &str, keep: &[String]) -> String {
    if node == "leader" {
        return node.into();
    }
    let region = node.rsplit_once('-').map_or(node, |(r, _)| r);
    let region = if keep.iter().any(|k| k == region) {
        region
    } else {
        keep.first().map_or(region, String::as_str)
    };
    format!("{region}-1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = r#"name = "t"
duration_s = 300
[topology]
regions = ["us-east", "us-west", "eu-west", "ap-south", "ap-northeast"]
nodes_per_region = 2
[users]
count = 2000
weights = { us-east = 3, us-west = 2, eu-west = 3, ap-south = 1, ap-northeast = 1 }
rooms = 40
workload = "both"
[[faults]]
at_s = 90
for_s = 60
what = { kind = "region-down", region = "ap-northeast" }
[[faults]]
at_s = 200
what = { kind = "kill", node = "us-west-2" }
[[faults]]
at_s = 100
for_s = 5
what = { kind = "flash-crowd", users = 500 }
"#;

    fn plan(seed: u64, quick: bool) -> Plan {
        let map = Map::shipped();
        let s = Scenario::parse(SCENARIO, &map).unwrap();
        Plan::new(&s, &map, seed, quick)
    }

    #[test]
    fn one_seed_one_plan() {
        let (a, b, c) = (plan(7, false), plan(7, false), plan(8, false));
        assert_eq!(a.users, b.users);
        assert_eq!(a.faults, b.faults);
        assert_ne!(a.users, c.users);
    }

    #[test]
    fn users_follow_the_weights_and_live_near_their_region() {
        let p = plan(1, false);
        assert_eq!(p.nodes.len(), 10);
        assert_eq!(p.nodes.iter().filter(|n| n.voter).count(), 5);
        assert_eq!(p.users.len(), 2500, "2000 plus a crowd of 500");
        let home = |r: &str| p.users[..2000].iter().filter(|u| u.region == r).count();
        assert_eq!(home("us-east"), 600);
        assert_eq!(home("ap-south"), 200);
        let map = Map::shipped();
        for u in &p.users {
            let city = map.region(&u.region).unwrap();
            let km = crate::geo::distance_km(u.place, (city.lat, city.lon));
            assert!(km <= USER_RADIUS_KM * 1.03, "{} is {km} km out", u.name);
        }
        // Crowd members arrive within the fault's five seconds of the run proper.
        let crowd = &p.users[2000..];
        let from = p.run_start() + Duration::from_secs(100);
        assert!(
            crowd
                .iter()
                .all(|u| u.join_at >= from && u.join_at <= from + Duration::from_secs(5))
        );
        assert_eq!(p.rooms.iter().filter(|r| r.app == App::Counter).count(), 20);
    }

    #[test]
    fn quick_keeps_the_regions_its_faults_name_and_fits_the_timeline() {
        let p = plan(1, true);
        assert_eq!(p.nodes.len(), 3);
        let regions = p.regions();
        assert!(regions.contains(&"ap-northeast".to_string()), "{regions:?}");
        assert!(regions.contains(&"us-west".to_string()), "{regions:?}");
        assert_eq!(p.users.len(), 250);
        assert_eq!(p.duration, Duration::from_secs(30));
        let outage = &p.faults[0];
        assert_eq!(outage.at, Duration::from_secs(9));
        assert_eq!(outage.until, Some(Duration::from_secs(15)));
        assert!(p.faults.iter().any(|f| f.kind
            == FaultKind::Kill {
                node: "us-west-1".into()
            }));
        for f in &p.faults {
            assert!(f.until.unwrap_or(f.at) <= p.duration, "{f:?}");
        }
    }
}
