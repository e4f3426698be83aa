//! The `geo-sim` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use geo_sim::check::{Verdict, check};
use geo_sim::geo::Map;
use geo_sim::history;
use geo_sim::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "geo-sim",
    about = "Rehearse region failures against a real Edgeroom cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a scenario file against the map without running it: exits 0 and
    /// summarises it when it can run, 2 naming the line at fault when it cannot.
    Validate { scenario: PathBuf },
    /// Check a recorded history (JSONL) again; prints the report as JSON and exits 0 only
    /// when every check held.
    Check {
        history: PathBuf,
        /// Also write the report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("geo-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether every check held.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Validate { scenario: path } => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let s = Scenario::parse(&text, &Map::shipped())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let t = &s.topology;
            println!(
                "{}: {} s, {} regions x {} nodes, {} users, {} faults",
                s.name,
                s.duration_s.get_ref(),
                t.regions.get_ref().len(),
                t.nodes_per_region.get_ref(),
                s.users.count,
                s.faults.len()
            );
            Ok(true)
        }
        Command::Check { history: path, out } => {
            let file = std::fs::File::open(&path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            let records = history::read(std::io::BufReader::new(file))?;
            let report = check(&records);
            let json = serde_json::to_string_pretty(&report)?;
            if let Some(out) = out {
                std::fs::write(&out, &json)?;
            }
            println!("{json}");
            if let Some(first) = report.violations.first() {
                eprintln!(
                    "geo-sim: {} violation(s); the earliest, at {} ms: {}",
                    report.violations.len(),
                    first.t_ms,
                    first.what
                );
            }
            Ok(report.verdict == Verdict::Pass)
        }
    }
}
