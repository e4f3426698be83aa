//! The map geo-sim places regions and users on: region coordinates and the measured
//! round trip between every pair of regions.
//!
//! The shipped data (`data/regions.csv`, `data/region-rtt-ms.csv`) is Microsoft's
//! published P95 round-trip times between Azure regions (30 days ending 2026-07-30; see
//! the files' headers) with the cities those regions are in. An operator may describe
//! their own map in the same two formats.

use std::collections::BTreeMap;

/// Kilometres light covers in fibre per millisecond, one way (about 2/3 of c).
pub const FIBRE_KM_PER_MS: f64 = 200.0;

const SHIPPED_REGIONS: &str = include_str!("../data/regions.csv");
const SHIPPED_RTT: &str = include_str!("../data/region-rtt-ms.csv");

/// A region: where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub city: String,
    pub lat: f64,
    pub lon: f64,
}

/// Regions and the round trip between each pair (milliseconds, P95).
#[derive(Debug, Clone)]
pub struct Map {
    pub regions: Vec<Region>,
    rtt: BTreeMap<(String, String), f64>,
}

/// What is wrong with a map, naming the file's line where there is one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MapError {
    #[error("{file} line {line}: {why}")]
    Line {
        file: &'static str,
        line: usize,
        why: String,
    },
    #[error("no round trip between {0} and {1}")]
    MissingPair(String, String),
    #[error("region {0} has a round trip but no coordinates")]
    Unplaced(String),
}

impl Map {
    /// The map geo-sim ships with (eight regions on four continents).
    pub fn shipped() -> Self {
        match Self::parse(SHIPPED_REGIONS, SHIPPED_RTT) {
            Ok(map) => map,
            // The shipped files are checked by a test; a broken build is a bug here.
            Err(e) => unreachable!("the shipped map does not parse: {e}"),
        }
    }

    /// A map from a regions CSV (`region,city,lat,lon`) and a round-trip CSV (a header
    /// row of destinations, then one row per source). `#` lines are comments.
    pub fn parse(regions: &str, rtt: &str) -> Result<Self, MapError> {
        let mut placed = Vec::new();
        for (line, cols) in rows(regions).skip(1) {
            let bad = |why: String| MapError::Line {
                file: "regions",
                line,
                why,
            };
            let [name, city, lat, lon] = cols[..] else {
                return Err(bad(format!(
                    "want region,city,lat,lon; got {} fields",
                    cols.len()
                )));
            };
            let degrees = |v: &str, max: f64| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && x.abs() <= max)
                    .ok_or_else(|| bad(format!("{v:?} is not a coordinate within ±{max}")))
            };
            placed.push(Region {
                name: name.to_string(),
                city: city.to_string(),
                lat: degrees(lat, 90.0)?,
                lon: degrees(lon, 180.0)?,
            });
        }
        let mut lines = rows(rtt);
        let Some((header_line, header)) = lines.next() else {
            return Err(MapError::Line {
                file: "rtt",
                line: 1,
                why: "no header row".into(),
            });
        };
        let columns: Vec<String> = header.iter().skip(1).map(|s| s.to_string()).collect();
        if columns.is_empty() {
            return Err(MapError::Line {
                file: "rtt",
                line: header_line,
                why: "the header names no destination".into(),
            });
        }
        let mut table = BTreeMap::new();
        for (line, cols) in lines {
            let bad = |why: String| MapError::Line {
                file: "rtt",
                line,
                why,
            };
            if cols.len() != columns.len() + 1 {
                return Err(bad(format!(
                    "want {} round trips, got {}",
                    columns.len(),
                    cols.len().saturating_sub(1)
                )));
            }
            let src = cols[0];
            for (dst, v) in columns.iter().zip(&cols[1..]) {
                let ms = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| bad(format!("{v:?} is not a round trip in ms")))?;
                table.insert((src.to_string(), dst.clone()), ms);
            }
        }
        let map = Self {
            regions: placed,
            rtt: table,
        };
        map.check()?;
        Ok(map)
    }

    /// Every placed region has a round trip to every other, and every region with round
    /// trips is placed.
    fn check(&self) -> Result<(), MapError> {
        for ((src, dst), _) in self.rtt.iter() {
            for r in [src, dst] {
                if self.region(r).is_none() {
                    return Err(MapError::Unplaced(r.clone()));
                }
            }
        }
        for a in &self.regions {
            for b in &self.regions {
                if a.name != b.name && self.rtt_ms(&a.name, &b.name).is_none() {
                    return Err(MapError::MissingPair(a.name.clone(), b.name.clone()));
                }
            }
        }
        Ok(())
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The round trip from `a` to `b` in ms (0 within a region). The matrix is measured
    /// per direction and not quite symmetric; each direction keeps its own figure.
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<f64> {
        if a == b {
            return Some(0.0);
        }
        self.rtt.get(&(a.to_string(), b.to_string())).copied()
    }

    /// The one-way delay the emulated WAN gives a datagram from `a` to `b`: half the
    /// round trip.
    pub fn one_way_ms(&self, a: &str, b: &str) -> Option<f64> {
        self.rtt_ms(a, b).map(|rtt| rtt / 2.0)
    }
}

/// Great-circle distance in km (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

/// A user's one-way access delay to an edge: fibre over the great circle plus a
/// last-mile constant.
pub fn access_ms(user: (f64, f64), edge: (f64, f64), last_mile_ms: f64) -> f64 {
    distance_km(user, edge) / FIBRE_KM_PER_MS + last_mile_ms
}

/// Non-empty, non-comment lines with their 1-based line numbers, split on commas.
fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.split(',').map(str::trim).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_map_is_complete() {
        let map = Map::shipped();
        assert_eq!(map.regions.len(), 8);
        assert_eq!(map.rtt_ms("eu-west", "eu-central"), Some(14.0));
        assert_eq!(map.rtt_ms("sa-east", "ap-southeast"), Some(337.0));
        assert_eq!(map.one_way_ms("us-east", "us-west"), Some(37.5));
        assert_eq!(map.rtt_ms("us-east", "us-east"), Some(0.0));
    }

    #[test]
    fn a_missing_pair_or_an_unplaced_region_is_refused() {
        let regions = "region,city,lat,lon\na,A,1,1\nb,B,2,2\n";
        let rtt = "src,a,b\na,0,10\n";
        assert_eq!(
            Map::parse(regions, rtt).unwrap_err(),
            MapError::MissingPair("b".into(), "a".into())
        );
        let rtt = "src,a,c\na,0,10\nc,10,0\n";
        assert_eq!(
            Map::parse(regions, rtt).unwrap_err(),
            MapError::Unplaced("c".into())
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let regions = "# comment\nregion,city,lat,lon\na,A,91,1\n";
        let err = Map::parse(regions, "src,a\na,0\n").unwrap_err();
        assert!(
            matches!(
                err,
                MapError::Line {
                    file: "regions",
                    line: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = Map::parse("region,city,lat,lon\na,A,1,1\n", "src,a\na,x\n").unwrap_err();
        assert!(
            matches!(
                err,
                MapError::Line {
                    file: "rtt",
                    line: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn distances_and_access_delays_match_known_figures() {
        // Amsterdam–Frankfurt is about 365 km.
        let d = distance_km((52.37, 4.90), (50.11, 8.68));
        assert!((d - 365.0).abs() < 10.0, "{d}");
        // 2000 km of fibre is 10 ms one way, plus the last mile.
        let a = access_ms((0.0, 0.0), (0.0, 17.986), 2.0);
        assert!((a - 12.0).abs() < 0.1, "{a}");
    }
}
