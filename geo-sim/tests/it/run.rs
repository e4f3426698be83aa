//! `geo-sim run --quick` end to end: real node processes on an emulated WAN, simulated
//! users, faults, the checker, the report — and the report opened in Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

/// Run a scenario's quick form with a fixed seed; the exit status, report.json, and
/// the output directory.
fn quick(name: &str, seed: u64) -> (i32, Value, PathBuf, String) {
    let out = std::env::temp_dir().join(format!("geo-sim-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_geo-sim"))
        .arg("run")
        .arg(scenario(name))
        .args(["--quick", "--seed", &seed.to_string(), "--out"])
        .arg(&out)
        .output()
        .expect("geo-sim runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (run.status.code().unwrap_or(-1), report, out, said)
}

/// The run passed the checker, with traffic, and its report says so in the promised
/// shape.
fn assert_passed(name: &str, seed: u64, code: i32, report: &Value, said: &str) {
    assert_eq!(code, 0, "{name} failed:\n{said}");
    assert!(
        said.starts_with(&format!("geo-sim: seed {seed}\n")),
        "the seed comes first:\n{said}"
    );
    assert_eq!(report["scenario"], name);
    assert_eq!(report["seed"], seed);
    assert_eq!(report["verdict"], "pass");
    let counts = &report["counts"];
    for field in [
        "acknowledged",
        "delivered",
        "lost",
        "duplicated",
        "unexpected",
        "out_of_order",
    ] {
        assert!(counts[field].is_u64(), "counts.{field} in {counts}");
    }
    assert!(counts["acknowledged"].as_u64() > Some(100), "{counts}");
    assert!(counts["delivered"].as_u64() > Some(1000), "{counts}");
    assert_eq!(counts["lost"], 0);
    assert_eq!(counts["duplicated"], 0);
    assert_eq!(counts["out_of_order"], 0);
}

#[test]
fn quick_region_outage_passes_the_checker_and_its_users_resume_elsewhere() {
    let (code, report, out, said) = quick("region-outage", 13);
    assert_passed("region-outage", 13, code, &report, &said);
    let returns = report["figures"]["returns"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let moved = returns.iter().filter(|r| r["why"] == "edge").count();
    assert!(moved > 20, "the region's users lost their edge: {moved}");
    assert_eq!(report["figures"]["never_resumed"], 0, "{returns:?}");
    // Its nodes came back and the rooms' documents agree with the others again.
    let converged = report["figures"]["converged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !converged.is_empty() && converged.iter().all(|c| c[2].is_u64()),
        "{converged:?}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn quick_partition_heal_passes_the_checker_and_converges() {
    let (code, report, out, said) = quick("partition-heal", 11);
    assert_passed("partition-heal", 11, code, &report, &said);
    let converged = report["figures"]["converged"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !converged.is_empty(),
        "convergence was measured after the heal"
    );
    assert!(
        converged.iter().all(|c| c[2].is_u64()),
        "every room converged: {converged:?}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn quick_churn_passes_the_checker_and_its_report_renders_in_chromium() {
    let (code, report, out, said) = quick("churn", 12);
    assert_passed("churn", 12, code, &report, &said);
    let churned = report["figures"]["returns"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["why"] == "churn").count());
    assert!(churned > 100, "users were churned: {churned}");

    // Every chart drew its data, and the page fetched nothing.
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "this test opens the report in Debian's chromium (apt-get install chromium)"
    );
    let seen = Command::new("node")
        .current_dir(&browser)
        .arg("charts.mjs")
        .arg(out.join("report.html"))
        .output()
        .expect("node runs the browser check (npm ci --prefix geo-sim/tests/browser)");
    assert!(
        seen.status.success(),
        "{}",
        String::from_utf8_lossy(&seen.stderr)
    );
    let seen: Value = serde_json::from_slice(&seen.stdout).expect("one JSON line");
    assert_eq!(seen["fetched"], Value::Array(vec![]), "self-contained");
    let charts = seen["charts"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = charts.iter().filter_map(|c| c["kind"].as_str()).collect();
    for kind in ["connections", "throughput", "leader", "resume", "latency"] {
        assert!(kinds.contains(&kind), "no {kind} chart in {kinds:?}");
    }
    for c in &charts {
        assert!(
            c["width"].as_f64() > Some(100.0) && c["height"].as_f64() > Some(100.0),
            "{c}"
        );
        assert!(
            c["series"].as_u64() >= Some(1),
            "a chart without its data: {c}"
        );
    }
    let _ = std::fs::remove_dir_all(out);
}

/// Node processes of runs whose output goes to `out`, by their command lines.
fn nodes_of(out: &Path) -> Vec<String> {
    let needle = out.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" node ") && c.contains(&needle))
        .collect()
}

#[test]
fn ctrl_c_ends_a_run_keeps_its_history_writes_a_report_and_leaves_no_node_behind() {
    let out = std::env::temp_dir().join(format!("geo-sim-it-ctrl-c-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let said = out.with_extension("stderr");
    let mut run = Command::new(env!("CARGO_BIN_EXE_geo-sim"))
        .arg("run")
        .arg(scenario("churn"))
        .args(["--quick", "--seed", "3", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&said).expect("a file for what it says"))
        .spawn()
        .expect("geo-sim runs");
    // Interrupt once users are sending.
    let history = out.join("history.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while std::fs::read_to_string(&history).map_or(0, |h| h.matches("\"ack\"").count()) < 20 {
        if let Ok(Some(status)) = run.try_wait() {
            let said = std::fs::read_to_string(&said).unwrap_or_default();
            panic!("the run ended before it got going ({status}): {said}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got going"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!nodes_of(&out).is_empty(), "its nodes run as processes");
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let status = run.wait().expect("geo-sim ends");
    assert_eq!(status.code(), Some(1), "an interrupted run is no pass");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["verdict"], "fail");
    assert!(
        report["counts"]["acknowledged"].as_u64() >= Some(20),
        "{}",
        report["counts"]
    );
    assert!(out.join("report.html").exists());
    assert!(
        nodes_of(&out).is_empty(),
        "left behind: {:?}",
        nodes_of(&out)
    );
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_file(said);
}
