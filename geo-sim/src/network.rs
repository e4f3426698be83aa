//! The emulated WAN between the nodes, as a pure function of the plan and what is
//! wrong with it now: the links leaving each node (one-way delay of half the measured
//! round trip, jitter, loss, bursts, bandwidth caps, cuts), which geo-sim hands to that
//! node's process. During arrival and calibration the network is not emulated at all.

use std::net::SocketAddr;

use crate::emulation::Link;
use crate::geo::Map;
use crate::plan::Plan;

/// One-way delay between two nodes of one region, ms.
pub const IN_REGION_MS: f64 = 0.5;

/// What is wrong with the network now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    /// False during arrival and calibration: every link is as fast as loopback.
    pub emulated: bool,
    /// Cuts: (side a, side b, one way: only what a sends is cut).
    pub cuts: Vec<(Vec<String>, Vec<String>, bool)>,
    /// Extra loss and jitter on links at least `min_rtt_ms` long.
    pub lossy: Option<Lossy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lossy {
    pub loss: f64,
    pub jitter_ms: f64,
    pub burst_len: Option<f64>,
    pub min_rtt_ms: f64,
}

/// Gilbert–Elliott parameters for a loss rate that comes in bursts of `len` datagrams
/// on average (every datagram of a burst is lost): leave = 1/len, and the share of
/// time in bursts, enter / (enter + leave), equals the loss rate.
pub fn burst(loss: f64, len: f64) -> Option<(f64, f64, f64)> {
    if loss <= 0.0 || loss >= 1.0 || len < 1.0 {
        return None;
    }
    let leave = 1.0 / len;
    Some((loss * leave / (1.0 - loss), leave, 1.0))
}

/// The links leaving node `from` (index into `plan.nodes`) to every other node, whose
/// peer addresses are `peers` (same order).
pub fn links_from(
    plan: &Plan,
    map: &Map,
    peers: &[SocketAddr],
    from: usize,
    now: &Conditions,
) -> Vec<Link> {
    let src = &plan.nodes[from];
    let mut out = Vec::new();
    for (j, dst) in plan.nodes.iter().enumerate() {
        if j == from {
            continue;
        }
        let mut link = Link {
            from: Some(peers[from]),
            to: Some(peers[j]),
            ..Link::default()
        };
        let cut = now.cuts.iter().any(|(a, b, one_way)| {
            let (sa, sb) = (a.contains(&src.region), b.contains(&src.region));
            let (da, db) = (a.contains(&dst.region), b.contains(&dst.region));
            (sa && db) || (!one_way && sb && da)
        });
        link.down = cut;
        if now.emulated {
            let rtt = map.rtt_ms(&src.region, &dst.region).unwrap_or(0.0);
            let one_way = if src.region == dst.region {
                IN_REGION_MS
            } else {
                rtt / 2.0
            };
            let l = &plan.links;
            let mut loss = l.loss;
            let mut jitter = l.jitter_ms;
            let mut burst_len = l.burst_len;
            if let Some(f) = &now.lossy
                && src.region != dst.region
                && rtt >= f.min_rtt_ms
            {
                loss = 1.0 - (1.0 - loss) * (1.0 - f.loss);
                jitter += f.jitter_ms;
                burst_len = f.burst_len.or(burst_len);
            }
            link.delay_us = (one_way * 1000.0) as u64;
            link.jitter_us = (jitter * 1000.0) as u64;
            match burst_len.and_then(|len| burst(loss, len)) {
                Some(b) => link.burst = Some(b),
                None => link.loss = loss,
            }
            link.rate = l.bandwidth_kbps.map(|k| k * 1000 / 8);
        }
        out.push(link);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn plan() -> Plan {
        let text = r#"name = "n"
duration_s = 60
[topology]
regions = ["us-east", "eu-west", "ap-south"]
nodes_per_region = 2
[users]
count = 10
weights = { us-east = 1 }
[links]
jitter_ms = 2
"#;
        let map = Map::shipped();
        Plan::new(&Scenario::parse(text, &map).unwrap(), &map, 1, false)
    }

    fn peers(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16)))
            .collect()
    }

    #[test]
    fn delays_are_half_the_round_trip_and_nothing_before_emulation() {
        let (p, map) = (plan(), Map::shipped());
        let peers = peers(p.nodes.len());
        let on = Conditions {
            emulated: true,
            ..Conditions::default()
        };
        // Node 0 is us-east-1; node 2 eu-west-1; node 1 us-east-2.
        let links = links_from(&p, &map, &peers, 0, &on);
        assert_eq!(links.len(), 5);
        let to = |j: usize| links.iter().find(|l| l.to == Some(peers[j])).unwrap();
        assert_eq!(
            to(2).delay_us,
            44_500,
            "us-east → eu-west: 89 ms round trip"
        );
        assert_eq!(to(1).delay_us, 500, "within a region");
        assert_eq!(to(2).jitter_us, 2000);
        let off = links_from(&p, &map, &peers, 0, &Conditions::default());
        assert!(
            off.iter()
                .all(|l| l.delay_us == 0 && l.jitter_us == 0 && !l.down)
        );
    }

    #[test]
    fn cuts_and_lossy_long_links() {
        let (p, map) = (plan(), Map::shipped());
        let peers = peers(p.nodes.len());
        let mut now = Conditions {
            emulated: true,
            cuts: vec![(vec!["us-east".into()], vec!["ap-south".into()], true)],
            lossy: Some(Lossy {
                loss: 0.05,
                jitter_ms: 10.0,
                burst_len: None,
                min_rtt_ms: 100.0,
            }),
        };
        let from_us = links_from(&p, &map, &peers, 0, &now);
        let from_ap = links_from(&p, &map, &peers, 4, &now);
        let to = |links: &[Link], j: usize| *links.iter().find(|l| l.to == Some(peers[j])).unwrap();
        assert!(to(&from_us, 4).down, "us-east → ap-south is cut");
        assert!(!to(&from_ap, 0).down, "one way: ap-south → us-east flows");
        assert!(!to(&from_us, 2).down);
        // 89 ms is under the lossy threshold; 214 ms is over it.
        assert_eq!(to(&from_us, 2).loss, 0.0);
        assert!((to(&from_ap, 0).loss - 0.05).abs() < 1e-9);
        assert_eq!(to(&from_ap, 0).jitter_us, 12_000);
        now.cuts[0].2 = false;
        assert!(to(&links_from(&p, &map, &peers, 4, &now), 0).down);
    }

    #[test]
    fn bursts_keep_the_loss_rate() {
        let (enter, leave, loss) = burst(0.05, 10.0).unwrap();
        assert_eq!(loss, 1.0);
        assert!((leave - 0.1).abs() < 1e-12);
        assert!((enter / (enter + leave) - 0.05).abs() < 1e-12);
        assert!(burst(0.0, 10.0).is_none());
    }
}
