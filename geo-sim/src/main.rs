//! The `geo-sim` command line.

/// The node processes geo-sim starts are this binary too (`geo-sim node`): the same
/// allocator as `edgeroom`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use geo_sim::check::{Verdict, check};
use geo_sim::history;
use geo_sim::plan::Plan;
use geo_sim::report;
use geo_sim::run::{self, Options};
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
    /// Run a scenario: a real cluster on an emulated WAN, simulated users, its faults;
    /// writes DIR/history.jsonl, DIR/report.json and DIR/report.html and exits 0 only
    /// when every check held.
    Run {
        scenario: PathBuf,
        /// 3 regions x 1 node, about 200 users, 30 s: under a minute.
        #[arg(long)]
        quick: bool,
        /// The root seed (default: the scenario's, else a random one; printed first).
        #[arg(long)]
        seed: Option<u64>,
        /// Where the history and reports go.
        #[arg(long, default_value = "geo-sim-out")]
        out: PathBuf,
        /// Run the same seed this many times (DIR/run-1 ...) and report how often a
        /// violation showed.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Check a scenario file against the map without running it: exits 0 and
    /// summarises it when it can run, 2 naming the line at fault when it cannot.
    Validate { scenario: PathBuf },
    /// Run one node under geo-sim's control (geo-sim starts these itself).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        config: PathBuf,
    },
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
    let cli = Cli::parse();
    if let Command::Node { config } = &cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,edgeroom=info".into()),
            )
            .init();
        return match geo_sim::emulation::run_node(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("geo-sim node: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(cli) {
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
        Command::Node { .. } => unreachable!("handled before"),
        Command::Run {
            scenario: path,
            quick,
            seed,
            out,
            repeat,
        } => {
            let (scenario, map) = Scenario::load(&path)?;
            let map = Arc::new(map);
            let seed = seed.or(scenario.seed).unwrap_or_else(rand_seed);
            println!("geo-sim: seed {seed}");
            let rt = tokio::runtime::Runtime::new()?;
            let mut failed = 0;
            for k in 1..=repeat.max(1) {
                let dir = match repeat {
                    0 | 1 => out.clone(),
                    _ => out.join(format!("run-{k}")),
                };
                let command = format!(
                    "cargo run --release -p geo-sim -- run {} --seed {seed}{} --out {}",
                    path.display(),
                    if quick { " --quick" } else { "" },
                    dir.display()
                );
                let plan = Plan::new(&scenario, &map, seed, quick);
                let opts = Options {
                    quick,
                    seed,
                    out: dir.clone(),
                    command: command.clone(),
                    progress: std::io::stderr().is_terminal(),
                };
                println!(
                    "geo-sim: {} ({}), {} nodes, {} users, {} s{}",
                    plan.name,
                    if quick { "quick" } else { "full" },
                    plan.nodes.len(),
                    plan.users.len(),
                    plan.run_end().as_secs(),
                    if repeat > 1 {
                        format!(", run {k} of {repeat}")
                    } else {
                        String::new()
                    }
                );
                let outcome = rt.block_on(run::run(plan, map.clone(), &opts))?;
                let written = report::write(&outcome, &map, &opts)?;
                println!("geo-sim: {}", written.summary);
                if !written.passed {
                    failed += 1;
                    eprintln!("geo-sim: replay with: {command}");
                }
                if outcome.interrupted {
                    return Ok(false);
                }
            }
            if repeat > 1 {
                println!("geo-sim: a violation showed in {failed} of {repeat} runs of seed {seed}");
            }
            Ok(failed == 0)
        }
        Command::Validate { scenario: path } => {
            let (s, _) = Scenario::load(&path)?;
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

/// A root seed when none is given.
fn rand_seed() -> u64 {
    rand::random::<u64>() % 1_000_000_000
}
