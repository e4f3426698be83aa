//! The run's Edgeroom nodes as child processes: each runs `geo-sim node`, which is
//! `edgeroom serve` with its peer socket behind the WAN shim and its links and clock
//! steered over stdin (`emulation`). Being processes, they die the way operators'
//! nodes die: kill -9, SIGSTOP/SIGCONT, SIGTERM with a drain, and restart from their
//! data directories.
//!
//! No node outlives geo-sim: each child is killed when its handle drops, its stdin
//! closing makes it exit, and the kernel kills it if geo-sim's thread dies first
//! (`PR_SET_PDEATHSIG`). Children run in their own process group, so a Ctrl-C at the
//! terminal reaches geo-sim, which then stops them itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

use edgeroom_proto::ids::NodeId;
use edgeroom_transport::ClusterCa;

use crate::emulation::{Control, Link};
use crate::plan::{NodePlan, Plan};

/// How long a node may take to start serving.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How long a SIGTERM-ed node may drain before it is killed.
const DRAIN_PATIENCE: Duration = Duration::from_secs(15);

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Up,
    Paused,
    Down,
}

/// One node process.
pub struct Node {
    pub plan: NodePlan,
    /// Where clients and the admin API reach it.
    pub client: SocketAddr,
    /// Its QUIC address.
    pub peer: SocketAddr,
    pub life: Life,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The last links and clock offset it was given, given again after a restart.
    links: Vec<Link>,
    clock_offset_ms: i64,
    seed: u64,
    starts: u32,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    pub fn pid(&self) -> Option<i32> {
        self.child
            .as_ref()?
            .id()
            .and_then(|p| i32::try_from(p).ok())
    }

    fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow::anyhow!("{} has no process", self.name()))?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(pid, sig) };
        anyhow::ensure!(
            r == 0,
            "signal {sig} to {}: {}",
            self.name(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    async fn control(&mut self, c: &Control) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{} is not running", self.plan.name))?;
        let written = async {
            stdin.write_all(c.line().as_bytes()).await?;
            stdin.flush().await
        };
        if let Err(e) = written.await {
            return Err(match self.exited() {
                Some(status) => anyhow::anyhow!(
                    "{} exited on its own ({status}): see {}",
                    self.plan.name,
                    self.log.display()
                ),
                None => anyhow::anyhow!("steering {}: {e}", self.plan.name),
            });
        }
        Ok(())
    }

    /// How the process ended, if it did though nothing here stopped it.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

/// Every node of a run.
pub struct Fleet {
    pub nodes: Vec<Node>,
    exe: PathBuf,
    http: reqwest::Client,
}

/// A free loopback port for TCP (`udp` false) or UDP.
/// The nodes' nice value. The users stand for clients on machines of their own: sharing
/// this one, they must not wait behind the nodes for a core, or what they record
/// (delivery times above all) is the machine's queue, not the system's. With ten
/// saturated nodes on two cores, geo-sim's threads waited 20 s per 10 s for a core at
/// the nodes' own priority, 8 s at this one.
const NODE_NICE: libc::c_int = 10;

/// A port free now, below the kernel's ephemeral range (from 32768 on Linux): one
/// taken from that range (by binding port 0) may be handed to another socket bound to
/// port 0 — a node started earlier — before the node given it binds it.
fn free_port(udp: bool) -> anyhow::Result<u16> {
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Runs side by side (tests) start apart: scattered by a multiplicative hash,
        // as runs started together have consecutive pids, whose ranges overlapped
        // (both picked a port before either bound it, and one failed to start).
        let scattered = u64::from(std::process::id()) * 2_654_435_761 % u64::from(SPAN);
        let _ = NEXT.compare_exchange(
            0,
            scattered as u16 + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let free = if udp {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        } else {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if free {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between {LOW} and {}", LOW + SPAN)
}

/// The panics in a log: where (the line after "panicked at") and what (the line after).
fn panics_in(log: &str) -> impl Iterator<Item = String> + '_ {
    let mut lines = log.lines();
    std::iter::from_fn(move || {
        let at = lines.find_map(|l| l.split_once(" panicked at ").map(|(_, at)| at))?;
        Some(format!("{at} {}", lines.next().unwrap_or_default()))
    })
}

impl Fleet {
    /// Certificates, ports, data directories and config files for every node of the
    /// plan under `dir`; nothing runs yet.
    pub fn prepare(plan: &Plan, dir: &Path) -> anyhow::Result<Fleet> {
        let certs = dir.join("certs");
        let ca = ClusterCa::generate(&format!("geo-sim-{}", plan.name))?;
        ca.save(&certs)?;
        let mut nodes = Vec::new();
        for (i, n) in plan.nodes.iter().enumerate() {
            ca.issue_into(&certs, &NodeId::new(&n.name)?)?;
            nodes.push(Node {
                plan: n.clone(),
                client: SocketAddr::from(([127, 0, 0, 1], free_port(false)?)),
                peer: SocketAddr::from(([127, 0, 0, 1], free_port(true)?)),
                life: Life::Down,
                config: dir.join(format!("{}.toml", n.name)),
                log: dir.join(format!("{}.log", n.name)),
                child: None,
                stdin: None,
                links: Vec::new(),
                clock_offset_ms: 0,
                seed: plan.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)),
                starts: 0,
            });
        }
        let voters: Vec<String> = nodes
            .iter()
            .filter(|n| n.plan.voter)
            .map(|n| format!("\"{}@{}\"", n.plan.name, n.peer))
            .collect();
        for n in &nodes {
            // Every simulated user comes from this machine's one address: a node may
            // hold them all (after its region's neighbours fail), a few sockets each.
            let mut limits = format!("sockets_per_ip = {}\n", plan.users.len() * 4 + 64);
            if let Some(ms) = plan.node_settings.presence_grace_ms {
                limits.push_str(&format!("presence_grace_ms = {ms}\n"));
            }
            let mut socketio = String::new();
            if let Some(ms) = plan.node_settings.socketio_ping_interval_ms {
                socketio.push_str(&format!("ping_interval_ms = {ms}\n"));
            }
            if let Some(ms) = plan.node_settings.socketio_ping_timeout_ms {
                socketio.push_str(&format!("ping_timeout_ms = {ms}\n"));
            }
            let mut cluster = String::new();
            if n.plan.voter {
                cluster.push_str(&format!("voters = [{}]\n", voters.join(", ")));
            } else {
                // A learner joins through its region's voter.
                let voter = nodes
                    .iter()
                    .find(|v| v.plan.voter && v.plan.region == n.plan.region)
                    .unwrap_or(&nodes[0]);
                cluster.push_str(&format!("join = \"{}@{}\"\n", voter.plan.name, voter.peer));
            }
            if let Some(ms) = plan.node_settings.failure_timeout_ms {
                cluster.push_str(&format!("failure_timeout_ms = {ms}\n"));
            }
            let text = format!(
                "node_id = \"{name}\"\nregion = \"{region}\"\nlisten = \"{client}\"\n\
                 data_dir = {data:?}\ndev = true\n\n[limits]\n{limits}\n[socketio]\n{socketio}\n\
                 [cluster]\npeer_listen = \"{peer}\"\ntls_dir = {certs:?}\n\
                 lat = {lat}\nlon = {lon}\n{cluster}",
                name = n.plan.name,
                region = n.plan.region,
                client = n.client,
                data = dir.join(&n.plan.name),
                peer = n.peer,
                certs = certs,
                lat = n.plan.place.0,
                lon = n.plan.place.1,
            );
            std::fs::write(&n.config, text)?;
        }
        Ok(Fleet {
            nodes,
            exe: std::env::current_exe()?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.peer).collect()
    }

    /// Every panic the nodes' logs show, as (node, where: what): a panic is a defect
    /// even where the node survives it (a room's actor restarts).
    pub fn panics(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let Ok(bytes) = std::fs::read(&n.log) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            out.extend(panics_in(&text).map(|p| (n.plan.name.clone(), p)));
        }
        out
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.plan.name == name)
    }

    /// Start node `i`'s process with its links and clock (does not wait for it).
    pub async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let n = &mut self.nodes[i];
        anyhow::ensure!(n.child.is_none(), "{} is already running", n.plan.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .arg("--config")
            .arg(&n.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,edgeroom=info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: prctl and setpriority in the forked child before exec touch no
        // memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Failing to lower its own priority is no reason not to run.
                libc::setpriority(libc::PRIO_PROCESS, 0, NODE_NICE);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        n.stdin = child.stdin.take();
        n.child = Some(child);
        n.starts += 1;
        let first = Control {
            seed: Some(n.seed.wrapping_add(u64::from(n.starts))),
            links: Some(n.links.clone()),
            clock_offset_ms: Some(n.clock_offset_ms),
        };
        n.control(&first).await?;
        n.life = Life::Up;
        Ok(())
    }

    /// Resolves once node `i` answers `/healthz` with 200.
    pub async fn wait_healthy(&mut self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("{}/healthz", self.nodes[i].url());
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            let n = &mut self.nodes[i];
            if let Some(child) = n.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                n.child = None;
                n.life = Life::Down;
                anyhow::bail!(
                    "{} exited while starting ({status}); see {}",
                    n.plan.name,
                    n.log.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not become healthy within {within:?}; see {}",
                n.plan.name,
                n.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start every node: the voters together (each waits for a quorum), then the
    /// learners, which join through them.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        let voters: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].plan.voter)
            .collect();
        let learners: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].plan.voter)
            .collect();
        for group in [voters, learners] {
            for &i in &group {
                self.spawn(i).await?;
            }
            for &i in &group {
                self.wait_healthy(i, START_PATIENCE).await?;
            }
        }
        Ok(())
    }

    /// kill -9: no drain; peers find out by its silence.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        if let Some(mut child) = n.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        n.stdin = None;
        n.life = Life::Down;
        Ok(())
    }

    /// SIGTERM: the node drains (clients are told to go elsewhere) and exits.
    pub async fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].signal(libc::SIGTERM)?;
        let n = &mut self.nodes[i];
        if let Some(mut child) = n.child.take()
            && tokio::time::timeout(DRAIN_PATIENCE, child.wait())
                .await
                .is_err()
        {
            child.start_kill()?;
            child.wait().await?;
        }
        n.stdin = None;
        n.life = Life::Down;
        Ok(())
    }

    /// SIGSTOP: frozen, sockets open, answering nothing.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].signal(libc::SIGSTOP)?;
        self.nodes[i].life = Life::Paused;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].signal(libc::SIGCONT)?;
        self.nodes[i].life = Life::Up;
        Ok(())
    }

    /// Give node `i` its links (kept for its restarts). A paused or dead node gets
    /// them when it is back: only its own sending is affected.
    pub async fn set_links(&mut self, i: usize, links: Vec<Link>) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        n.links = links;
        if n.life == Life::Down {
            return Ok(());
        }
        let c = Control {
            links: Some(n.links.clone()),
            ..Control::default()
        };
        n.control(&c).await
    }

    pub async fn set_clock(&mut self, i: usize, offset_ms: i64) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        n.clock_offset_ms = offset_ms;
        if n.life == Life::Down {
            return Ok(());
        }
        let c = Control {
            clock_offset_ms: Some(offset_ms),
            ..Control::default()
        };
        n.control(&c).await
    }

    /// Nodes that should be running but whose process ended on its own, and how.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if n.life != Life::Down
                && let Some(status) = n.exited()
            {
                out.push((n.plan.name.clone(), status.to_string()));
            }
        }
        out
    }

    /// Save every running node's `/metrics` next to its log (`NAME.metrics`), for
    /// what the nodes counted (dropped, shed, refused) when a run needs explaining.
    pub async fn save_metrics(&self) {
        for n in self.nodes.iter().filter(|n| n.life == Life::Up) {
            let get = async {
                let r = self.http.get(format!("{}/metrics", n.url())).send().await;
                r.ok()?.text().await.ok()
            };
            if let Ok(Some(text)) = tokio::time::timeout(Duration::from_secs(2), get).await {
                let _ = std::fs::write(n.log.with_extension("metrics"), text);
            }
        }
    }

    /// Stop every node at once (SIGCONT first, so a paused one can die).
    pub async fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].life == Life::Paused {
                let _ = self.resume(i);
            }
            let _ = self.kill(i).await;
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(pid) = n.pid() {
                // SAFETY: signals to our own children; a stopped child must be
                // continued to die promptly, and SIGKILL ends it either way.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_shows_where_and_what_each_panic_was() {
        let log = "\
2026-12-06T16:00:00Z  WARN edgeroom: a line that mentions nothing
thread 'tokio-rt-worker' (6283) panicked at runtime/room/src/core.rs:292:9:
sequence numbers only grow per origin
stack backtrace:
thread 'main' panicked at src/main.rs:1:1:
";
        let found: Vec<String> = panics_in(log).collect();
        assert_eq!(
            found,
            vec![
                "runtime/room/src/core.rs:292:9: sequence numbers only grow per origin",
                "src/main.rs:1:1: ",
            ]
        );
    }
}
