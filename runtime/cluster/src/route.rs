//! Nearest region without affinity: rank the healthy regions for a client at a place.
//!
//! The estimate is the great-circle distance over fibre, about 200 km per millisecond
//! one way, so a round trip of `2 × km / 200` ms. Where this node has measured its own
//! round trip to a region, the ratio of measured to estimated for that path (how much
//! longer the real route is) scales the client's estimate for that region too. Pure
//! functions: the HTTP handler gathers the inputs.

use serde::Serialize;

/// Fibre: about two thirds of the speed of light, 200 km per ms.
const KM_PER_MS: f64 = 200.0;
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance in km (haversine).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

/// Round trip over fibre along the great circle.
pub fn fibre_rtt_ms(km: f64) -> f64 {
    2.0 * km / KM_PER_MS
}

/// A region as the routing sees it.
#[derive(Debug, Clone)]
pub struct RegionView {
    pub region: String,
    /// Mean location of its nodes.
    pub location: (f64, f64),
    /// Client URLs of its live nodes; empty if none is alive.
    pub urls: Vec<String>,
    /// This node's measured round trip to the region, if any, and the distance it spans.
    pub measured: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    pub region: String,
    pub estimated_rtt_ms: f64,
    pub distance_km: f64,
    pub urls: Vec<String>,
}

/// Healthy regions (at least one live node), nearest first.
pub fn rank(client: (f64, f64), regions: &[RegionView]) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = regions
        .iter()
        .filter(|r| !r.urls.is_empty())
        .map(|r| {
            let km = distance_km(client, r.location);
            // Paths shorter than ~100 km are dominated by fixed costs, not distance:
            // scaling by their ratio would mislead.
            let stretch = match r.measured {
                Some((rtt_ms, span_km)) if span_km > 100.0 => {
                    (rtt_ms / fibre_rtt_ms(span_km)).clamp(1.0, 4.0)
                }
                _ => 1.0,
            };
            Ranked {
                region: r.region.clone(),
                estimated_rtt_ms: round1(fibre_rtt_ms(km) * stretch),
                distance_km: round1(km),
                urls: r.urls.clone(),
            }
        })
        .collect();
    ranked.sort_by(|a, b| a.estimated_rtt_ms.total_cmp(&b.estimated_rtt_ms));
    ranked
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRGINIA: (f64, f64) = (37.37, -79.82);
    const AMSTERDAM: (f64, f64) = (52.37, 4.90);
    const PUNE: (f64, f64) = (18.52, 73.86);

    fn region(name: &str, location: (f64, f64), alive: bool) -> RegionView {
        RegionView {
            region: name.into(),
            location,
            urls: if alive {
                vec![format!("http://{name}")]
            } else {
                vec![]
            },
            measured: None,
        }
    }

    #[test]
    fn distances_match_known_figures() {
        // Virginia–Amsterdam is about 6,400 km; a degree of latitude about 111 km.
        let km = distance_km(VIRGINIA, AMSTERDAM);
        assert!((6300.0..6500.0).contains(&km), "{km}");
        assert!((distance_km((0.0, 0.0), (1.0, 0.0)) - 111.2).abs() < 0.5);
        assert_eq!(distance_km(PUNE, PUNE), 0.0);
    }

    #[test]
    fn nearest_first_and_dead_regions_left_out() {
        let regions = [
            region("us-east", VIRGINIA, true),
            region("eu-west", AMSTERDAM, true),
            region("ap-south", PUNE, true),
        ];
        let london = (51.5, -0.12);
        let order: Vec<_> = rank(london, &regions)
            .into_iter()
            .map(|r| r.region)
            .collect();
        assert_eq!(order, ["eu-west", "us-east", "ap-south"]);
        let regions = [
            region("us-east", VIRGINIA, true),
            region("eu-west", AMSTERDAM, false),
            region("ap-south", PUNE, true),
        ];
        let order: Vec<_> = rank(london, &regions)
            .into_iter()
            .map(|r| r.region)
            .collect();
        assert_eq!(order, ["us-east", "ap-south"]);
    }

    #[test]
    fn a_measured_slow_path_pushes_a_region_back() {
        let mumbai = (19.07, 72.88);
        let mut far_but_fast = region("eu-west", AMSTERDAM, true);
        far_but_fast.measured = Some((fibre_rtt_ms(6000.0), 6000.0));
        let mut near_but_slow = region("ap-south", PUNE, true);
        // Measured four times the fibre estimate over the span it was measured on.
        near_but_slow.measured = Some((4.0 * fibre_rtt_ms(8000.0), 8000.0));
        let ranked = rank(mumbai, &[far_but_fast, near_but_slow]);
        assert_eq!(ranked[0].region, "ap-south");
        // Pune is ~120 km from Mumbai: 1.2 ms over fibre, ×4.
        assert!(
            (ranked[0].estimated_rtt_ms - 4.0 * fibre_rtt_ms(ranked[0].distance_km)).abs() < 0.2
        );
    }
}
