//! `geo-sim check` on recorded histories: exit 0 when every check held, 1 with the
//! earliest counter-example when one did not, 2 when the history does not parse.

use std::path::PathBuf;
use std::process::Command;

fn write(name: &str, lines: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("geo-sim-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn run(path: &PathBuf) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_geo-sim"))
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SETUP: [&str; 4] = [
    r#"{"t_ms":0,"op":"join","client":"a","room":"lobby"}"#,
    r#"{"t_ms":1,"op":"join","client":"b","room":"lobby"}"#,
    r#"{"t_ms":10,"op":"send","client":"a","room":"lobby","n":1}"#,
    r#"{"t_ms":11,"op":"ack","client":"a","room":"lobby","n":1}"#,
];

#[test]
fn a_clean_history_exits_zero_with_its_counts() {
    let mut lines = SETUP.to_vec();
    lines.push(r#"{"t_ms":15,"op":"deliver","client":"b","room":"lobby","from":"a","n":1}"#);
    let (code, report, _) = run(&write("clean.jsonl", &lines));
    assert_eq!(code, 0);
    assert_eq!(report["verdict"], "pass");
    assert_eq!(report["counts"]["acknowledged"], 1);
    assert_eq!(report["counts"]["delivered"], 1);
    assert_eq!(report["counts"]["lost"], 0);
}

#[test]
fn a_lost_message_fails_with_the_earliest_counter_example() {
    let (code, report, stderr) = run(&write("lost.jsonl", &SETUP));
    assert_eq!(code, 1);
    assert_eq!(report["verdict"], "fail");
    assert_eq!(report["counts"]["lost"], 1);
    assert_eq!(report["violations"][0]["kind"], "lost");
    assert!(stderr.contains("b never got it"), "{stderr}");
}

#[test]
fn a_history_that_does_not_parse_is_an_error_naming_the_line() {
    let (code, _, stderr) = run(&write(
        "bad.jsonl",
        &[SETUP[0], "{\"t_ms\":1,\"op\":\"teleport\"}"],
    ));
    assert_eq!(code, 2);
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn validate_accepts_the_shipped_scenario_and_names_the_line_of_a_bad_one() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/region-outage.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_geo-sim"))
        .args(["validate", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 regions x 2 nodes"));
    let text = std::fs::read_to_string(shipped).unwrap();
    let bad = write("bad.toml", &[&text.replace("at_s = 90", "at_s = 290")]);
    let out = Command::new(env!("CARGO_BIN_EXE_geo-sim"))
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = 1 + text.lines().position(|l| l.contains("at_s = 90")).unwrap();
    assert!(
        stderr.contains(&format!("line {line}")) && stderr.contains("does not fit"),
        "{stderr}"
    );
}

#[test]
fn a_scenario_may_bring_its_own_map_and_a_bad_one_is_named() {
    let dir = std::env::temp_dir().join(format!("geo-sim-it-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("regions.csv"),
        "region,city,lat,lon\nnorth,Oslo,59.9,10.7\nsouth,Madrid,40.4,-3.7\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("rtt.csv"),
        "src,north,south\nnorth,0,48\nsouth,49,0\n",
    )
    .unwrap();
    let scenario = dir.join("mine.toml");
    std::fs::write(
        &scenario,
        "name = \"mine\"\nduration_s = 60\nmap = { regions = \"regions.csv\", rtt = \"rtt.csv\" }\n\
         [topology]\nregions = [\"north\", \"south\"]\nnodes_per_region = 2\n\
         [users]\ncount = 50\nweights = { north = 1, south = 1 }\n",
    )
    .unwrap();
    let validate = || {
        Command::new(env!("CARGO_BIN_EXE_geo-sim"))
            .arg("validate")
            .arg(&scenario)
            .output()
            .unwrap()
    };
    let out = validate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 regions x 2 nodes"));
    // The same regions are not on the shipped map, and a pair missing is refused.
    std::fs::write(dir.join("rtt.csv"), "src,north,south\nnorth,0,48\n").unwrap();
    let out = validate();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no round trip between south and north"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
