//! How geo-sim steers its node processes: one JSON line at a time on the child's
//! stdin. A line sets the links leaving that node (the emulated WAN applies where a
//! datagram is sent) and its wall-clock offset; the first line also seeds the node's
//! loss and jitter draws and comes before the node starts.
//!
//! The node side (`geo-sim node`) runs the same code as `edgeroom serve`, with the
//! node's peer socket behind the WAN shim. When its stdin closes — geo-sim is gone,
//! however it went — the node process exits at once: no run leaves a node behind.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use edgeroom_host::clock::Clock;
use edgeroom_host::config::NodeConfig;
use edgeroom_transport::Wan;
use edgeroom_transport::wan::{Burst, LinkRule};

/// One control line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Seeds the node's loss and jitter draws (first line only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Every link leaving this node, as it is from now on (replaces the last list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<Link>>,
    /// This node's wall clock, this far from the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

/// One direction of a link between two nodes' peer sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub from: Option<SocketAddr>,
    pub to: Option<SocketAddr>,
    /// One-way delay, microseconds.
    pub delay_us: u64,
    /// Up to this much more, uniformly random (no reordering), microseconds.
    pub jitter_us: u64,
    /// Uniform loss, 0–1.
    pub loss: f64,
    /// Gilbert–Elliott bursts: (enter, leave, loss in a burst).
    pub burst: Option<(f64, f64, f64)>,
    /// Bandwidth cap, bytes per second.
    pub rate: Option<u64>,
    /// Cut (datagrams in flight too).
    pub down: bool,
}

impl Link {
    pub fn rule(&self) -> LinkRule {
        LinkRule {
            delay: Duration::from_micros(self.delay_us),
            jitter: Duration::from_micros(self.jitter_us),
            loss: self.loss,
            down: self.down,
            burst: self
                .burst
                .map(|(enter, leave, loss)| Burst { enter, leave, loss }),
            rate: self.rate,
        }
    }
}

impl Control {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

/// What a node process steers: its WAN and its clock.
#[derive(Clone)]
pub struct Steered {
    pub wan: Wan,
    pub clock: Clock,
}

impl Steered {
    /// Apply one control line.
    pub fn apply(&self, c: &Control) {
        if let Some(links) = &c.links {
            for l in links {
                if let (Some(from), Some(to)) = (l.from, l.to) {
                    self.wan.set(from, to, l.rule());
                }
            }
        }
        if let Some(ms) = c.clock_offset_ms {
            self.clock.set_wall_offset(ms);
        }
    }
}

/// Read the first control line (before the node starts): the seed, the links, the
/// clock.
pub async fn first(input: &mut (impl AsyncBufRead + Unpin)) -> anyhow::Result<Steered> {
    let mut line = String::new();
    anyhow::ensure!(
        input.read_line(&mut line).await? > 0,
        "stdin closed before the first control line"
    );
    let c: Control = serde_json::from_str(&line)?;
    let steered = Steered {
        wan: Wan::seeded(c.seed.unwrap_or(0)),
        clock: Clock::system(),
    };
    steered.apply(&c);
    Ok(steered)
}

/// Apply control lines until stdin closes; a line that does not parse is logged and
/// skipped.
pub async fn follow(mut input: impl AsyncBufRead + Unpin, steered: Steered) {
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => match serde_json::from_str::<Control>(&line) {
                Ok(c) => steered.apply(&c),
                Err(e) => tracing::warn!("control line {line:?}: {e}"),
            },
        }
    }
}

/// `geo-sim node --config FILE`: run one node under geo-sim's control, as `edgeroom
/// serve` runs it; returns when it was told to stop (SIGTERM: drained) or its parent
/// went away (at once).
pub fn run_node(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let mut config = NodeConfig::from_toml(&text)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let steered = first(&mut stdin).await?;
        if let Some(c) = config.cluster.as_mut() {
            c.wan = Some(steered.wan.clone());
        }
        let clock = steered.clock.clone();
        let orphaned = follow(stdin, steered);
        let stop = async {
            tokio::select! {
                () = edgeroom::serve::wait_for_signal() => {}
                () = orphaned => {
                    // geo-sim is gone: nothing is left to drain for.
                    std::process::exit(3);
                }
            }
        };
        edgeroom::serve::serve_until(config, clock, stop).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_line_round_trips_and_sets_the_rule() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c = Control {
            seed: Some(7),
            links: Some(vec![Link {
                from: Some(a),
                to: Some(b),
                delay_us: 37_500,
                loss: 0.05,
                burst: Some((0.01, 0.1, 1.0)),
                ..Link::default()
            }]),
            clock_offset_ms: Some(-2000),
        };
        let line = c.line();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let back: Control = serde_json::from_str(&line).unwrap();
        assert_eq!(back, c);
        let rule = back.links.unwrap()[0].rule();
        assert_eq!(rule.delay, Duration::from_micros(37_500));
        assert_eq!(rule.burst.map(|b| b.leave), Some(0.1));
        assert!(serde_json::from_str::<Control>(r#"{"speed":1}"#).is_err());
    }
}
