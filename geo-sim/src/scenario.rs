//! Scenario files: the topology, the users, the links and the faults of one run, as
//! TOML. Every field is documented on [`Scenario`] and its parts; `docs/geo-sim.md`
//! shows a whole file.
//!
//! A file with an unknown field, an impossible topology (a region the map does not
//! place, a weight for a region not in the run, more nodes than loopback ports) or a
//! fault past the end of the run is refused before anything starts, with the line at
//! fault.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::geo::Map;

/// Nodes one run may start at most: each takes a client port and a peer port on
/// loopback, and geo-sim keeps to a range of a few thousand.
pub const MAX_NODES: usize = 64;

/// One scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, as reports show it.
    pub name: String,
    /// How long the run lasts, in seconds.
    pub duration_s: Spanned<u64>,
    /// The root seed (`--seed` overrides it); without one, a random seed is drawn and
    /// printed.
    #[serde(default)]
    pub seed: Option<u64>,
    pub topology: Topology,
    pub users: Users,
    /// How every link between two regions behaves besides its delay (see
    /// [`Scenario::links`]).
    #[serde(default, rename = "links")]
    pub links_table: Option<Spanned<Links>>,
    /// Settings of every node, where they differ from a node's defaults.
    #[serde(default)]
    pub node: NodeSettings,
    /// What goes wrong, and when.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Seconds of traffic with no emulated delay before the run proper: what this
    /// machine's own scheduling costs, measured and subtracted in the report.
    #[serde(default = "default_calibration_s")]
    pub calibration_s: u64,
    /// Your own map instead of the shipped one: files in the shipped formats, paths
    /// relative to the scenario file.
    #[serde(default)]
    pub map: Option<MapFiles>,
}

/// A map of one's own (see `geo-sim/data/` for the formats).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFiles {
    /// `region,city,lat,lon` per line.
    pub regions: String,
    /// Round trips in ms: a header row of destinations, then a row per source.
    pub rtt: String,
}

fn default_calibration_s() -> u64 {
    10
}

/// Node settings a scenario may change (milliseconds; absent: the node's default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// How long a dropped member keeps its presence.
    pub presence_grace_ms: Option<u64>,
    /// How long a silent peer takes to be declared dead.
    pub failure_timeout_ms: Option<u64>,
    /// Engine.IO heartbeat: the server pings this often, and a client gives the
    /// connection up after the interval plus the timeout without a ping.
    pub socketio_ping_interval_ms: Option<u64>,
    pub socketio_ping_timeout_ms: Option<u64>,
}

/// Where the nodes are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Regions of the map to run (names from `geo-sim/data/regions.csv`).
    pub regions: Spanned<Vec<String>>,
    /// Edgeroom nodes in each region.
    pub nodes_per_region: Spanned<usize>,
}

/// Who drives the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// Simulated users in all.
    pub count: usize,
    /// How users spread over the regions (relative weights; a region left out gets
    /// none). Users are placed around their region's city.
    pub weights: Spanned<BTreeMap<String, f64>>,
    /// The rooms they share.
    #[serde(default = "default_rooms")]
    pub rooms: usize,
    /// What they do.
    #[serde(default)]
    pub workload: Workload,
    /// Messages (chat) or increments (counter) each user sends per second.
    #[serde(default = "default_rate")]
    pub rate_per_s: f64,
    /// One-way delay of a user's own access link, on top of fibre over the distance.
    #[serde(default = "default_last_mile_ms")]
    pub last_mile_ms: f64,
    /// Over how many seconds from the start the users arrive.
    #[serde(default = "default_join_s")]
    pub join_s: f64,
    /// The share of users (0–1) that speak Socket.IO (as socket.io-client does, with
    /// connection state recovery); the others speak the native protocol.
    #[serde(default)]
    pub socketio: f64,
}

fn default_join_s() -> f64 {
    10.0
}

fn default_rooms() -> usize {
    10
}
fn default_rate() -> f64 {
    0.5
}
fn default_last_mile_ms() -> f64 {
    5.0
}

/// The example handler the users drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Acknowledged messages and presence (`chat`).
    #[default]
    Chat,
    /// Acknowledged increments from every region (`counter`).
    Counter,
    /// Half the rooms of each.
    Both,
}

/// How links between regions behave besides their measured delay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Links {
    /// Up to this much extra delay, uniformly random, without reordering.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Fraction of datagrams lost, 0–1.
    #[serde(default)]
    pub loss: f64,
    /// Losses come in bursts of this many datagrams on average (Gilbert–Elliott);
    /// absent: each datagram is lost independently.
    #[serde(default)]
    pub burst_len: Option<f64>,
    /// A bandwidth cap on every link, kilobits per second (absent: none).
    #[serde(default)]
    pub bandwidth_kbps: Option<u64>,
}

/// One fault on the timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When it starts, seconds into the run.
    pub at_s: Spanned<f64>,
    /// How long it lasts (absent: to the end of the run, or an instant for kills).
    #[serde(default)]
    pub for_s: Option<f64>,
    /// What goes wrong: an inline table with its `kind` and the kind's fields.
    pub what: Spanned<FaultKind>,
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultKind {
    /// Every node of a region killed (kill -9), restarted when the fault ends.
    RegionDown { region: String },
    /// The regions on one side cannot reach the others (`one_way`: only what side `a`
    /// sends is cut).
    Partition {
        a: Vec<String>,
        b: Vec<String>,
        #[serde(default)]
        one_way: bool,
    },
    /// Links between regions at least `min_rtt_ms` apart turn lossy and jittery
    /// (bursts of `burst_len` datagrams on average when given).
    Lossy {
        loss: f64,
        #[serde(default)]
        jitter_ms: f64,
        #[serde(default)]
        burst_len: Option<f64>,
        #[serde(default)]
        min_rtt_ms: f64,
    },
    /// One node's process killed (kill -9) and restarted when the fault ends; `leader`
    /// picks whichever node leads the control plane then.
    Kill { node: String },
    /// One node paused (SIGSTOP) and resumed (SIGCONT) when the fault ends.
    Pause { node: String },
    /// A node's clock set off by `offset_ms`.
    ClockSkew { node: String, offset_ms: i64 },
    /// A new handler version deployed region by region, `every_s` apart.
    RollingDeploy { every_s: f64 },
    /// Every node restarted one at a time with a drain (SIGTERM), `every_s` apart.
    RollingRestart { every_s: f64 },
    /// `users` more users join within the fault's duration.
    FlashCrowd { users: usize },
    /// Every client's connection force-closed about every `every_s`, away `away_s`.
    Churn { every_s: f64, away_s: f64 },
    /// A `share` (0–1) of the users' connections reset (TCP RST) at once.
    ClientReset { share: f64 },
    /// A `share` of the users' connections stall: nothing moves either way for the
    /// fault's duration.
    ClientStall { share: f64 },
}

/// A scenario that cannot run: why, and the line of the file at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {why}")]
pub struct Invalid {
    pub line: usize,
    pub why: String,
}

impl Scenario {
    /// The `[links]` table, or its defaults.
    pub fn links(&self) -> Links {
        self.links_table
            .as_ref()
            .map(|t| t.get_ref().clone())
            .unwrap_or_default()
    }

    /// Parse and check a scenario against the map it runs on.
    pub fn parse(text: &str, map: &Map) -> Result<Self, Invalid> {
        let scenario = Self::unchecked(text)?;
        scenario.check(text, map)?;
        Ok(scenario)
    }

    fn unchecked(text: &str) -> Result<Self, Invalid> {
        toml::from_str(text).map_err(|e| Invalid {
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            why: e.message().to_string(),
        })
    }

    /// Read a scenario file and the map it names (the shipped one if none), and check
    /// the one against the other.
    pub fn load(path: &std::path::Path) -> anyhow::Result<(Scenario, Map)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let at = |e: Invalid| anyhow::anyhow!("{}: {e}", path.display());
        let scenario = Self::unchecked(&text).map_err(at)?;
        let map = match &scenario.map {
            None => Map::shipped(),
            Some(files) => {
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.join(f).display()))
                };
                Map::parse(&read(&files.regions)?, &read(&files.rtt)?)
                    .map_err(|e| anyhow::anyhow!("{}: the map: {e}", path.display()))?
            }
        };
        scenario.check(&text, &map).map_err(at)?;
        Ok((scenario, map))
    }

    fn check(&self, text: &str, map: &Map) -> Result<(), Invalid> {
        let at = |span: Range<usize>, why: String| Invalid {
            line: line_of(text, span.start),
            why,
        };
        let regions = &self.topology.regions;
        if regions.get_ref().is_empty() {
            return Err(at(regions.span(), "a run needs at least one region".into()));
        }
        for r in regions.get_ref() {
            if map.region(r).is_none() {
                return Err(at(
                    regions.span(),
                    format!("region {r:?} is not on the map (no coordinates)"),
                ));
            }
        }
        let nodes = regions.get_ref().len() * *self.topology.nodes_per_region.get_ref();
        if nodes == 0 || nodes > MAX_NODES {
            return Err(at(
                self.topology.nodes_per_region.span(),
                format!("{nodes} nodes: a run starts between 1 and {MAX_NODES}"),
            ));
        }
        let weights = &self.users.weights;
        for (r, w) in weights.get_ref() {
            if !regions.get_ref().contains(r) {
                return Err(at(
                    weights.span(),
                    format!("weight for {r:?}, which is not in the run"),
                ));
            }
            if !w.is_finite() || *w < 0.0 {
                return Err(at(
                    weights.span(),
                    format!("weight {w} for {r:?} is not a weight"),
                ));
            }
        }
        if weights.get_ref().values().sum::<f64>() <= 0.0 {
            return Err(at(weights.span(), "no region has users".into()));
        }
        if !(0.0..=1.0).contains(&self.users.socketio) {
            return Err(at(
                weights.span(),
                "[users] socketio is a share, 0 to 1".into(),
            ));
        }
        let l = self.links();
        let links_at = self.links_table.as_ref().map_or(0..0, |t| t.span());
        if !(0.0..=1.0).contains(&l.loss)
            || l.jitter_ms < 0.0
            || l.burst_len.is_some_and(|b| b < 1.0)
            || l.bandwidth_kbps == Some(0)
        {
            return Err(at(
                links_at,
                "[links]: loss is 0 to 1, jitter_ms not negative, burst_len at least 1, bandwidth_kbps above 0".into(),
            ));
        }
        let end = *self.duration_s.get_ref() as f64;
        if end <= 0.0 {
            return Err(at(
                self.duration_s.span(),
                "a run lasts at least a second".into(),
            ));
        }
        let node_names: Vec<String> = regions
            .get_ref()
            .iter()
            .flat_map(|r| {
                (1..=*self.topology.nodes_per_region.get_ref()).map(move |i| format!("{r}-{i}"))
            })
            .collect();
        for fault in &self.faults {
            let start = *fault.at_s.get_ref();
            let until = start + fault.for_s.unwrap_or(0.0);
            if !(0.0..end).contains(&start) || until > end || fault.for_s.is_some_and(|d| d < 0.0) {
                return Err(at(
                    fault.at_s.span(),
                    format!("a fault from {start} s to {until} s does not fit a run of {end} s"),
                ));
            }
            let what = fault.what.span();
            let in_run = |list: &[String]| {
                list.iter()
                    .find(|r| !regions.get_ref().contains(r))
                    .map(|r| at(what.clone(), format!("region {r:?} is not in the run")))
            };
            let node = |name: &String| {
                (name != "leader" && !node_names.contains(name)).then(|| {
                    at(
                        what.clone(),
                        format!("no node {name:?}: nodes are named <region>-<n>, or \"leader\""),
                    )
                })
            };
            let bad = |ok: bool, why: &str| (!ok).then(|| at(what.clone(), why.to_string()));
            let fraction = |x: f64| (0.0..=1.0).contains(&x);
            let problem = match fault.what.get_ref() {
                FaultKind::RegionDown { region } => in_run(std::slice::from_ref(region)),
                FaultKind::Partition { a, b, .. } => in_run(a).or_else(|| in_run(b)),
                FaultKind::Kill { node: n }
                | FaultKind::Pause { node: n }
                | FaultKind::ClockSkew { node: n, .. } => node(n),
                FaultKind::Lossy {
                    loss,
                    jitter_ms,
                    burst_len,
                    ..
                } => bad(fraction(*loss), "loss is a fraction, 0 to 1")
                    .or_else(|| bad(*jitter_ms >= 0.0, "jitter_ms cannot be negative"))
                    .or_else(|| {
                        bad(
                            burst_len.is_none_or(|b| b >= 1.0),
                            "burst_len is at least 1",
                        )
                    }),
                FaultKind::RollingDeploy { every_s } | FaultKind::RollingRestart { every_s } => {
                    bad(*every_s > 0.0, "every_s must be positive")
                }
                FaultKind::FlashCrowd { users } => bad(*users > 0, "a crowd has users"),
                FaultKind::Churn { every_s, away_s } => bad(
                    *away_s > 0.0 && every_s > away_s,
                    "churn wants every_s > away_s > 0",
                ),
                FaultKind::ClientReset { share } | FaultKind::ClientStall { share } => bad(
                    *share > 0.0 && fraction(*share),
                    "share is a fraction, above 0 and at most 1",
                ),
            };
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        Ok(())
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTAGE: &str = r#"name = "region-outage"
duration_s = 120

[topology]
regions = ["us-east", "eu-west", "ap-south"]
nodes_per_region = 2

[users]
count = 2000
weights = { us-east = 2, eu-west = 2, ap-south = 1 }

[[faults]]
at_s = 30
for_s = 30
what = { kind = "region-down", region = "eu-west" }
"#;

    fn parse(text: &str) -> Result<Scenario, Invalid> {
        Scenario::parse(text, &Map::shipped())
    }

    #[test]
    fn a_scenario_parses_with_its_defaults() {
        let s = parse(OUTAGE).unwrap();
        assert_eq!(s.name, "region-outage");
        assert_eq!(s.users.rooms, 10);
        assert_eq!(s.users.workload, Workload::Chat);
        assert!(
            matches!(s.faults[0].what.get_ref(), FaultKind::RegionDown { region } if region == "eu-west")
        );
    }

    #[test]
    fn an_unknown_field_is_refused_naming_its_line() {
        let text = OUTAGE.replace("count = 2000", "count = 2000\nspeed = 11");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 10, "{err}");
        assert!(err.why.contains("speed"), "{err}");
    }

    #[test]
    fn impossible_topologies_and_late_faults_are_refused_naming_their_line() {
        let cases = [
            (OUTAGE.replace("\"ap-south\"]", "\"mars\"]"), 5, "mars"),
            (
                OUTAGE.replace("nodes_per_region = 2", "nodes_per_region = 40"),
                6,
                "nodes",
            ),
            (OUTAGE.replace("ap-south = 1", "sa-east = 1"), 10, "sa-east"),
            (
                OUTAGE.replace("at_s = 30", "at_s = 100"),
                13,
                "does not fit",
            ),
            (
                OUTAGE.replace("region = \"eu-west\" }", "region = \"sa-east\" }"),
                15,
                "sa-east",
            ),
            (
                OUTAGE.replace(
                    "\"region-down\", region = \"eu-west\"",
                    "\"kill\", node = \"eu-west-3\"",
                ),
                15,
                "eu-west-3",
            ),
            (
                OUTAGE.replace(
                    "region = \"eu-west\" }",
                    "region = \"eu-west\", extra = 1 }",
                ),
                15,
                "extra",
            ),
        ];
        for (text, line, word) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.line, line, "{err}");
            assert!(err.why.contains(word), "{err}");
        }
        let leader = OUTAGE.replace(
            "\"region-down\", region = \"eu-west\"",
            "\"kill\", node = \"leader\"",
        );
        assert!(parse(&leader).is_ok());
    }
}
