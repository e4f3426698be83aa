//! The report of a run: `report.json` (verdict, counts, every target with its figure,
//! the figures behind the charts, the earliest violations) and one self-contained
//! `report.html` (no network fetches: tables and inline SVG charts drawn with
//! `plotters`, the fault timeline shaded on every chart with a time axis).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::analysis::{Figures, Spread, figures};
use crate::check::{self, Verdict};
use crate::geo::Map;
use crate::history;
use crate::plan::Plan;
use crate::run::{Options, Outcome};
use crate::scenario::FaultKind;

/// A promise the report measures, with what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// What `write` produced.
pub struct Written {
    /// Every check held (the exit status follows it).
    pub passed: bool,
    /// One line for the terminal.
    pub summary: String,
}

/// Violations shown in full in the report.
const SHOWN: usize = 20;

fn ms(x: f64) -> String {
    format!("{x:.0} ms")
}

fn spread(s: &Spread) -> String {
    format!(
        "p50 {} / p95 {} / p99 {} / max {} (n={})",
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(s.max),
        s.n
    )
}

/// The targets that apply to this plan, measured.
pub fn targets(plan: &Plan, f: &Figures, c: &check::Report) -> Vec<Target> {
    let mut out = Vec::new();
    let kinds: Vec<&FaultKind> = plan.faults.iter().map(|f| &f.kind).collect();
    let has = |p: fn(&FaultKind) -> bool| kinds.iter().any(|k| p(k));
    let counts = &c.counts;
    let clean = counts.lost == 0 && counts.duplicated == 0 && counts.out_of_order == 0;
    let loss_line = format!(
        "{} lost, {} duplicated, {} out of order of {} acknowledged",
        counts.lost, counts.duplicated, counts.out_of_order, counts.acknowledged
    );
    if kinds.is_empty() {
        let cross: Vec<_> = f.pairs.iter().filter(|p| p.from != p.to).collect();
        let worst = cross
            .iter()
            .map(|p| (p, p.excess_ms.p99 - f.calibration_ms.p99))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        out.push(Target {
            name: "steady-state latency".into(),
            goal: "cross-region delivery p99 ≤ floor + 15 ms for every region pair, after the calibration".into(),
            measured: match worst {
                Some((p, x)) => format!(
                    "worst pair {} → {}: p99 {:.0} ms above its floor, calibration p99 {:.0} ms, so {:.0} ms",
                    p.from, p.to, p.excess_ms.p99, f.calibration_ms.p99, x
                ),
                None => "no cross-region deliveries".into(),
            },
            met: worst.is_some_and(|(_, x)| x <= 15.0),
        });
    }
    if has(|k| matches!(k, FaultKind::RegionDown { .. })) {
        let windows: Vec<(u64, u64)> = f
            .faults
            .iter()
            .filter(|(l, ..)| l.starts_with("region-down"))
            .map(|(_, s, e)| (*s, e.unwrap_or(u64::MAX)))
            .collect();
        let affected: Vec<_> = f
            .returns
            .iter()
            .filter(|r| {
                (r.why == "edge" || r.why == "silent")
                    && windows
                        .iter()
                        .any(|(s, e)| r.dropped_ms >= *s && r.dropped_ms <= *e)
            })
            .collect();
        let quick = affected
            .iter()
            .filter(|r| r.resumed_after_ms.is_some_and(|m| m <= 2000))
            .count();
        let share = if affected.is_empty() {
            0.0
        } else {
            quick as f64 / affected.len() as f64
        };
        let detection: Vec<String> = f
            .detection_ms
            .iter()
            .filter(|(w, _)| w.starts_with("region-down"))
            .map(|(w, s)| format!("{w}: detected p50 {} / max {}", ms(s.p50), ms(s.max)))
            .collect();
        out.push(Target {
            name: "region outage: resume".into(),
            goal: "99% of affected users resumed within 2 s of detection".into(),
            measured: format!(
                "{quick} of {} affected users ({:.1}%) within 2 s; {}",
                affected.len(),
                share * 100.0,
                detection.join("; ")
            ),
            met: !affected.is_empty() && share >= 0.99,
        });
        out.push(Target {
            name: "region outage: nothing lost".into(),
            goal: "0 lost, 0 duplicated, 0 out of order".into(),
            measured: loss_line.clone(),
            met: clean,
        });
    }
    if has(|k| matches!(k, FaultKind::Partition { .. })) {
        let heals: Vec<&(String, String, Option<u64>)> = f
            .converged
            .iter()
            .filter(|(_, after, _)| after.starts_with("partition"))
            .collect();
        let worst = heals.iter().map(|(_, _, t)| t.unwrap_or(u64::MAX)).max();
        out.push(Target {
            name: "partition heal: convergence".into(),
            goal: "every room's documents converged within 1 s of the heal".into(),
            measured: match worst {
                Some(u64::MAX) => format!(
                    "{} of {} rooms never converged within the patience",
                    heals.iter().filter(|h| h.2.is_none()).count(),
                    heals.len()
                ),
                Some(t) => format!("slowest of {} rooms: {t} ms", heals.len()),
                None => "no room measured".into(),
            },
            met: worst.is_some_and(|t| t <= 1000),
        });
        let counter_ok = !c.violations.iter().any(|v| v.kind == check::Kind::Counter);
        out.push(Target {
            name: "partition heal: counters".into(),
            goal: "counters equal the acknowledged increments on every node".into(),
            measured: if counter_ok {
                "every counter read within its acknowledged increments, equal on every node".into()
            } else {
                "a counter differs (see the violations)".into()
            },
            met: counter_ok,
        });
    }
    if has(|k| matches!(k, FaultKind::Churn { .. })) {
        out.push(Target {
            name: "churn: delivery".into(),
            goal: "100% of acknowledged messages delivered to every member".into(),
            measured: loss_line.clone(),
            met: counts.lost == 0 && counts.acknowledged > 0,
        });
    }
    if has(|k| matches!(k, FaultKind::Kill { .. })) {
        let first_ok = f
            .writes
            .iter()
            .filter(|w| w.2.starts_with("deploy after kill") && w.3)
            .map(|w| w.4)
            .min();
        out.push(Target {
            name: "kill: deploys accepted again".into(),
            goal: "a deploy accepted within 5 s of the kill".into(),
            measured: first_ok.map_or("no deploy was accepted".into(), |t| {
                format!("{t} ms after the kill")
            }),
            met: first_ok.is_some_and(|t| t <= 5000),
        });
    }
    if has(|k| matches!(k, FaultKind::RollingDeploy { .. })) {
        let dropped = f
            .returns
            .iter()
            .filter(|r| r.why == "edge" || r.why == "silent")
            .count();
        let failed = f.refused.get("handler_failed").copied().unwrap_or(0);
        let deploys = f
            .writes
            .iter()
            .filter(|w| w.2.contains(" in ") && w.3)
            .count();
        out.push(Target {
            name: "rolling deploy".into(),
            goal: "0 connections dropped, 0 handler errors".into(),
            measured: format!(
                "{deploys} deploys accepted; {dropped} connections dropped, {failed} handler errors"
            ),
            met: dropped == 0 && failed == 0 && deploys > 0,
        });
    }
    if has(|k| matches!(k, FaultKind::RollingRestart { .. })) {
        let restarts: Vec<(u64, u64)> = f
            .faults
            .iter()
            .filter(|(l, ..)| l.starts_with("restart "))
            .map(|(_, s, e)| (*s, e.unwrap_or(u64::MAX)))
            .collect();
        let moved: Vec<_> = f
            .returns
            .iter()
            .filter(|r| {
                restarts
                    .iter()
                    .any(|(s, e)| r.dropped_ms >= *s && r.dropped_ms <= *e)
            })
            .collect();
        let slowest = moved.iter().filter_map(|r| r.resumed_after_ms).max();
        let behind = moved
            .iter()
            .filter(|r| r.resumed_after_ms.is_none())
            .count();
        out.push(Target {
            name: "rolling restart".into(),
            goal: "0 lost; every user back within 5 s of its node stopping; none left behind"
                .into(),
            measured: format!(
                "{}; {} users moved, slowest back in {}, {behind} not back",
                loss_line,
                moved.len(),
                slowest.map_or("-".into(), |t| format!("{t} ms"))
            ),
            met: counts.lost == 0 && behind == 0 && slowest.is_some_and(|t| t <= 5000),
        });
    }
    out
}

/// Check the run's history and write `report.json` and `report.html` beside it.
pub fn write(outcome: &Outcome, map: &Map, opts: &Options) -> anyhow::Result<Written> {
    let file = std::fs::File::open(&outcome.history)?;
    let history = history::read(std::io::BufReader::new(file))?;
    let checked = check::check(&history);
    let plan = &outcome.plan;
    let figs = figures(&history, plan, map);
    let targets = targets(plan, &figs, &checked);
    let passed = checked.verdict == Verdict::Pass && !outcome.interrupted;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json = serde_json::json!({
        "scenario": plan.name,
        "seed": plan.seed,
        "quick": plan.quick,
        "verdict": if passed { "pass" } else { "fail" },
        "interrupted": outcome.interrupted,
        "command": opts.command,
        "version": env!("CARGO_PKG_VERSION"),
        "cores": cores,
        "counts": checked.counts,
        "targets": targets,
        "violations": checked.violations.iter().take(SHOWN).collect::<Vec<_>>(),
        "violations_total": checked.violations.len(),
        "converged_ms": checked.converged_ms,
        "plan": {
            "regions": plan.regions(),
            "nodes": plan.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
            "users": plan.users.len(),
            "rooms": plan.rooms.len(),
            "duration_s": plan.duration.as_secs(),
            "faults": plan.faults.iter().map(|f| serde_json::json!({
                "label": f.label, "at_s": f.at.as_secs_f64(), "until_s": f.until.map(|u| u.as_secs_f64()),
            })).collect::<Vec<_>>(),
        },
        "figures": figs,
    });
    std::fs::write(
        opts.out.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let html = html(
        plan, &figs, &checked, &targets, passed, outcome, opts, cores,
    );
    std::fs::write(opts.out.join("report.html"), html)?;
    let missed = targets.iter().filter(|t| !t.met).count();
    let summary = format!(
        "{}: {} acknowledged, {} delivered, {} lost, {} duplicated, {} out of order; {} violation(s); {} of {} targets met; report in {}",
        if passed { "PASS" } else { "FAIL" },
        checked.counts.acknowledged,
        checked.counts.delivered,
        checked.counts.lost,
        checked.counts.duplicated,
        checked.counts.out_of_order,
        checked.violations.len(),
        targets.len() - missed,
        targets.len(),
        opts.out.join("report.html").display()
    );
    if let Some(v) = checked.violations.first() {
        eprintln!("geo-sim: earliest violation at {} ms: {}", v.t_ms, v.what);
        for r in &v.around {
            eprintln!("  {}", serde_json::to_string(r).unwrap_or_default());
        }
    }
    Ok(Written { passed, summary })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const W: u32 = 900;
const H: u32 = 280;

/// The fault timeline as shaded spans (seconds) on a time chart.
fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    faults: &[(String, u64, Option<u64>)],
    end_s: f64,
    y: (f64, f64),
) {
    let spans = faults.iter().map(|(_, s, e)| {
        let s = *s as f64 / 1000.0;
        let e = e.map_or(end_s, |e| e as f64 / 1000.0).max(s + 0.3);
        Rectangle::new([(s, y.0), (e, y.1)], RED.mix(0.12).filled())
    });
    let _ = chart.draw_series(spans);
}

/// A time chart: one line per series over the run, faults shaded. Returns the SVG.
fn time_chart(
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    faults: &[(String, u64, Option<u64>)],
    end_s: f64,
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let top = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..end_s.max(1.0), 0.0..top)
        else {
            return svg_fallback(title);
        };
        let _ = chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw();
        shade(&mut chart, faults, end_s, (0.0, top));
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            if let Ok(s) =
                chart.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        if series.len() > 1 {
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

fn svg_fallback(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"40\"><text x=\"10\" y=\"25\">{}: no data</text></svg>",
        esc(title)
    )
}

/// A CDF of latencies (ms) with a dashed line at the floor.
fn cdf_chart(title: &str, sorted: &[f64], floor: f64) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (290, 200)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let right = sorted.last().copied().unwrap_or(1.0).max(floor) * 1.05 + 1.0;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 13))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(32)
            .build_cartesian_2d(0.0..right, 0.0..1.0)
        else {
            return svg_fallback(title);
        };
        let _ = chart
            .configure_mesh()
            .x_labels(5)
            .y_labels(5)
            .light_line_style(WHITE.mix(0.0))
            .draw();
        let n = sorted.len().max(1) as f64;
        let pts = sorted
            .iter()
            .enumerate()
            .map(|(i, x)| (*x, (i + 1) as f64 / n));
        let _ = chart.draw_series(LineSeries::new(pts, BLUE.stroke_width(2)));
        let _ = chart.draw_series(DashedLineSeries::new(
            vec![(floor, 0.0), (floor, 1.0)],
            4,
            3,
            RED.stroke_width(1),
        ));
        let _ = root.present();
    }
    svg
}

/// The distribution of resume times as CDFs (ms): drops the edge caused, and planned
/// churn (less the time away), each a series.
fn resume_chart(f: &Figures) -> String {
    let series: Vec<(&str, Vec<f64>)> = [("edge failures", false), ("planned churn", true)]
        .into_iter()
        .map(|(name, churn)| {
            let mut t: Vec<f64> = f
                .returns
                .iter()
                .filter(|r| (r.why == "churn") == churn)
                .filter_map(|r| r.resumed_after_ms.map(|m| m as f64))
                .collect();
            t.sort_by(f64::total_cmp);
            (name, t)
        })
        .filter(|(_, t)| !t.is_empty())
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let right = series
            .iter()
            .filter_map(|(_, t)| t.last().copied())
            .fold(1000.0f64, f64::max)
            * 1.05;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption("Resume time after detection (CDF)", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..right, 0.0..1.0)
        else {
            return svg_fallback("resume");
        };
        let _ = chart
            .configure_mesh()
            .x_desc("ms from noticing the drop to being a member again")
            .y_desc("share of drops")
            .light_line_style(WHITE.mix(0.0))
            .draw();
        for (i, (name, times)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let n = times.len() as f64;
            if let Ok(s) = chart.draw_series(LineSeries::new(
                times
                    .iter()
                    .enumerate()
                    .map(|(k, x)| (*x, (k + 1) as f64 / n)),
                color.stroke_width(2),
            )) {
                s.label(format!("{name} (n={})", times.len()))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw();
        let _ = root.present();
    }
    svg
}

#[allow(clippy::too_many_arguments)]
fn html(
    plan: &Plan,
    f: &Figures,
    c: &check::Report,
    targets: &[Target],
    passed: bool,
    outcome: &Outcome,
    opts: &Options,
    cores: usize,
) -> String {
    let end_s = f.connections.last().map_or(1.0, |(s, _)| *s as f64);
    let faults = &f.faults;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>geo-sim: {name}</title><style>\
         body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}\
         .pass{{color:#070}}.fail{{color:#b00}}.grid{{display:flex;flex-wrap:wrap;gap:4px}}code{{background:#f4f4f4;padding:2px 4px}}\
         </style></head><body><h1>geo-sim: {name}</h1>",
        name = esc(&plan.name)
    );
    let _ = write!(
        h,
        "<p>Verdict: <b class=\"{cls}\">{verdict}</b>{int}. Seed {seed}; {mode}; {regions} regions, {nodes} nodes, \
         {users} users in {rooms} rooms; run {dur} s; edgeroom/geo-sim {ver}; {cores} cores.</p>\
         <p>Replay: <code>{cmd}</code></p>",
        cls = if passed { "pass" } else { "fail" },
        verdict = if passed { "PASS" } else { "FAIL" },
        int = if outcome.interrupted {
            " (interrupted)"
        } else {
            ""
        },
        seed = plan.seed,
        mode = if plan.quick { "quick" } else { "full scale" },
        regions = plan.regions().len(),
        nodes = plan.nodes.len(),
        users = plan.users.len(),
        rooms = plan.rooms.len(),
        dur = plan.duration.as_secs(),
        ver = env!("CARGO_PKG_VERSION"),
        cmd = esc(&opts.command),
    );
    h.push_str(
        "<h2>Targets</h2><table><tr><th>target</th><th>goal</th><th>measured</th><th></th></tr>",
    );
    for t in targets {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&t.name),
            esc(&t.goal),
            esc(&t.measured),
            if t.met { "pass" } else { "fail" },
            if t.met { "met" } else { "missed" }
        );
    }
    let n = &c.counts;
    let _ = write!(
        h,
        "</table><h2>Checks</h2><table><tr><th>sent</th><th>acknowledged</th><th>delivered</th><th>lost</th>\
         <th>duplicated</th><th>unexpected</th><th>out of order</th><th>unacknowledged, overtaken after a reconnection</th>\
         <th>skipped</th><th>reported missing</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        n.sent,
        n.acknowledged,
        n.delivered,
        n.lost,
        n.duplicated,
        n.unexpected,
        n.out_of_order,
        n.reordered_unacknowledged,
        n.skipped,
        n.reported_missing
    );
    if !c.violations.is_empty() {
        let _ = write!(
            h,
            "<p class=\"fail\">{} violation(s); the earliest:</p><ul>",
            c.violations.len()
        );
        for v in c.violations.iter().take(SHOWN) {
            let _ = write!(h, "<li>{} ms: {}</li>", v.t_ms, esc(&v.what));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Fault timeline</h2><table><tr><th>fault</th><th>from</th><th>to</th></tr>");
    for (what, s, e) in faults {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
            esc(what),
            *s as f64 / 1000.0,
            e.map_or("-".into(), |e| format!("{:.1} s", e as f64 / 1000.0))
        );
    }
    h.push_str("</table>");
    for (name, t) in &f.phases {
        let _ = write!(
            h,
            "<span>{} at {:.1} s. </span>",
            esc(name),
            *t as f64 / 1000.0
        );
    }

    // Connections per region.
    let regions = plan.regions();
    let series: Vec<(String, Vec<(f64, f64)>)> = regions
        .iter()
        .map(|r| {
            let pts = f
                .connections
                .iter()
                .map(|(s, m)| (*s as f64, m.get(r).copied().unwrap_or(0) as f64))
                .collect();
            (r.clone(), pts)
        })
        .collect();
    chart(
        &mut h,
        "connections",
        &time_chart(
            "Connections per region",
            "users connected",
            &series,
            faults,
            end_s,
        ),
    );
    let thr = vec![(
        "deliveries/s".to_string(),
        f.throughput
            .iter()
            .map(|(s, n)| (*s as f64, *n as f64))
            .collect(),
    )];
    chart(
        &mut h,
        "throughput",
        &time_chart("Deliveries per second", "deliveries/s", &thr, faults, end_s),
    );

    // The leader over time: a step per change, y = the node's place in the plan.
    let index = |l: &Option<String>| {
        l.as_ref()
            .and_then(|l| plan.nodes.iter().position(|n| &n.name == l))
            .map_or(0.0, |i| i as f64 + 1.0)
    };
    let mut steps = Vec::new();
    for (i, (t, l, _)) in f.leaders.iter().enumerate() {
        let s = *t as f64 / 1000.0;
        if i > 0 {
            steps.push((s, steps.last().map_or(0.0, |p: &(f64, f64)| p.1)));
        }
        steps.push((s, index(l)));
    }
    if let Some(last) = steps.last().copied() {
        steps.push((end_s, last.1));
    }
    let legend: Vec<String> = plan
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}={}", i + 1, n.name))
        .collect();
    chart(
        &mut h,
        "leader",
        &time_chart(
            "Control-plane leader (0: none)",
            "leader (node number)",
            &[("leader".into(), steps)],
            faults,
            end_s,
        ),
    );
    let _ = write!(h, "<p>Node numbers: {}.</p>", esc(&legend.join(", ")));
    let terms: BTreeMap<u64, &Option<String>> = f.leaders.iter().map(|(_, l, t)| (*t, l)).collect();
    let _ = write!(
        h,
        "<p>{} leader changes over {} terms.</p>",
        f.leaders.len().saturating_sub(1),
        terms.len()
    );

    // Resume.
    h.push_str("<h2>Resume after a drop</h2>");
    let _ = write!(
        h,
        "<p>Resume times (edge failures, not planned churn): {}. Never came back: {}. Rejoined as new members (resume failed): {}.</p>",
        spread(&f.resume_ms),
        f.never_resumed,
        f.returns.iter().filter(|r| r.rejoined).count()
    );
    for (protocol, s) in &f.resume_by_protocol {
        let _ = write!(
            h,
            "<p>Resume times, {} users ({} of them): {}.</p>",
            esc(protocol),
            f.users_by_protocol.get(protocol).copied().unwrap_or(0),
            spread(s)
        );
    }
    for (what, s) in &f.detection_ms {
        let _ = write!(
            h,
            "<p>Detection after <i>{}</i>: {}.</p>",
            esc(what),
            spread(s)
        );
    }
    match f.returns.iter().any(|r| r.resumed_after_ms.is_some()) {
        true => chart(&mut h, "resume", &resume_chart(f)),
        false => {
            h.push_str("<p>No user came back from a drop (none dropped, or none returned).</p>")
        }
    }

    // Latency per pair.
    h.push_str("<h2>Delivery latency per region pair</h2>");
    let _ = write!(
        h,
        "<p>From the sender deciding to send to the receiver reading it, both through their access links. \
         Floor: access + half the measured round trip + access (red dashes: its median). \
         Calibration with no emulated delay (this machine's own cost): {}.</p>",
        spread(&f.calibration_ms)
    );
    h.push_str("<table><tr><th>from → to</th><th>latency</th><th>floor p50</th><th>above floor p99</th><th>above floor p99 − calibration p99</th></tr>");
    for p in &f.pairs {
        let _ = write!(
            h,
            "<tr><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.from),
            esc(&p.to),
            spread(&p.latency_ms),
            ms(p.floor_ms.p50),
            ms(p.excess_ms.p99),
            ms(p.excess_ms.p99 - f.calibration_ms.p99)
        );
    }
    h.push_str("</table><div class=\"grid\">");
    for p in &f.pairs {
        chart(
            &mut h,
            "latency",
            &cdf_chart(&format!("{} → {}", p.from, p.to), &p.cdf, p.floor_ms.p50),
        );
    }
    h.push_str("</div>");

    if !f.converged.is_empty() {
        h.push_str("<h2>Convergence after heals</h2><table><tr><th>room</th><th>after</th><th>converged</th></tr>");
        for (room, after, t) in &f.converged {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(room),
                esc(after),
                t.map_or("not within 30 s".into(), |t| format!("{t} ms"))
            );
        }
        h.push_str("</table>");
    }
    if !f.writes.is_empty() {
        h.push_str("<h2>Control-plane writes</h2><table><tr><th>at</th><th>via</th><th>what</th><th>ok</th><th>took</th></tr>");
        for (t, via, what, ok, took) in &f.writes {
            let _ = write!(
                h,
                "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{took} ms</td></tr>",
                *t as f64 / 1000.0,
                esc(via),
                esc(what),
                ok
            );
        }
        h.push_str("</table>");
    }
    if !f.refused.is_empty() {
        h.push_str("<h2>Refused sends</h2><ul>");
        for (code, n) in &f.refused {
            let _ = write!(h, "<li>{}: {n}</li>", esc(code));
        }
        h.push_str("</ul>");
    }
    let _ = write!(
        h,
        "<p>Run proper from {:.1} s to {:.1} s. History: <code>{}</code>.</p></body></html>",
        outcome.run_ms.0 as f64 / 1000.0,
        outcome.run_ms.1 as f64 / 1000.0,
        esc(&Path::new(&outcome.history).display().to_string())
    );
    h
}

/// Embed one chart, marked so a browser test can find every one.
fn chart(h: &mut String, kind: &str, svg: &str) {
    let _ = write!(
        h,
        "<figure class=\"chart\" data-chart=\"{kind}\">{svg}</figure>"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_faults_shaded() {
        let faults = vec![("kill x".to_string(), 2000, Some(4000))];
        let svg = time_chart(
            "t",
            "y",
            &[("a".into(), vec![(0.0, 1.0), (5.0, 3.0)])],
            &faults,
            6.0,
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<rect"), "a shaded span");
        assert!(svg.contains("<polyline") || svg.contains("<path"), "a line");
        let cdf = cdf_chart("a → b", &[1.0, 2.0, 3.0], 1.5);
        assert!(cdf.starts_with("<svg"));
    }
}
