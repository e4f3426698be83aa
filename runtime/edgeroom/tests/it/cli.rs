//! The `edgeroom` binary as an operator uses it: `serve --config`, `deploy`, SIGTERM.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_edgeroom");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A standalone `edgeroom serve` node's config in `dir` (admin key `k3y`), on `port`.
fn standalone_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"cli-1\"\nregion = \"eu-west\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ncompile_cache_dir = {:?}\nadmin_key = \"k3y\"\n[sandbox]\nmax_instances = 16\n",
            dir.join("data"),
            common::compile_cache(),
        ),
    )
    .unwrap();
    config
}

/// Start `edgeroom serve --config` and wait until it answers at `url`.
async fn serve(config: &std::path::Path, url: &str) -> std::process::Child {
    let node = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_deploy_and_stop_a_node_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = standalone_config(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let mut node = serve(&config, &url).await;

    let wasm = dir.path().join("echo.wasm");
    std::fs::write(&wasm, edgeroom::examples::ECHO).unwrap();
    let deploy = |key: &str| {
        Command::new(BIN)
            .args(["deploy", "--app", "hello", "--url", &url, "--key", key])
            .arg(&wasm)
            .output()
            .unwrap()
    };
    let refused = deploy("wrong");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let ok = deploy("k3y");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(out["version"], 1);

    let mut c = Client::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "hello",
        "json",
    )
    .await;
    assert_eq!(c.welcome["region"], "eu-west");
    c.join("r", json!(null)).await;
    assert_eq!(c.emit("r", "echo", json!("hi")).await["data"], "hi");

    // SIGTERM: clients are told to go elsewhere, the process exits cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let closed = c.next_of("closed").await;
    assert!(
        closed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("shutting down"),
        "{closed}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_config_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "node_id = \"x\"\ndata_dir = \"/tmp/x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin_key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_examples_and_says_how_to_try_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut node = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    for app in ["echo", "chat", "counter"] {
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/v1/apps/{app}")).await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "{app} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap(), "chat", "json").await;
    assert_eq!(c.join("lobby", json!({"user": "ann"})).await["ok"], true);
    // Three regions on 127.0.0.1-3, one control plane; every region serves the apps.
    let status = Command::new(BIN)
        .args(["cluster", "status", "--url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for node in ["us-east-1", "eu-west-1", "ap-south-1"] {
        assert!(text.contains(node), "{text}");
    }
    assert!(text.contains("leader"), "{text}");
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let r = reqwest::get(format!("http://{ip}:{port}/v1/apps/chat"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(node.stdout.as_mut().unwrap(), &mut s).unwrap();
        (node.wait().unwrap(), s)
    })
    .await
    .unwrap();
    assert!(out.0.success());
    assert!(
        out.1
            .contains(&format!("ws://127.0.0.1:{port}/v1/ws?app=chat")),
        "{}",
        out.1
    );
}

/// `cluster init` and `cluster cert` write certificates that real nodes handshake with.
#[tokio::test]
async fn cluster_init_writes_certificates_nodes_can_use() {
    use edgeroom_proto::ids::NodeId;
    use edgeroom_transport::{Endpoint, NodeTls, Timing};

    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["cluster", "init", "--nodes", "us-east-1,eu-west-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init would orphan every certificate issued so far.
    let again = run(&["cluster", "init", "--nodes", "x"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));
    let out = run(&["cluster", "cert", "--node", "ap-south-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_mode = std::fs::metadata(dir.path().join("ca.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);

    let endpoint = |name: &str| {
        let tls = NodeTls::load(dir.path(), NodeId::new(name).unwrap()).unwrap();
        Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            None,
            Timing::default(),
        )
        .unwrap()
    };
    let (first, added) = (endpoint("us-east-1"), endpoint("ap-south-1"));
    let addr = first.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let peer = first.arrival().await.unwrap().handshake().await.unwrap();
        peer.node().clone()
    });
    let peer = added
        .connect(&NodeId::new("us-east-1").unwrap(), addr)
        .await
        .unwrap();
    assert_eq!(accept.await.unwrap().as_str(), "ap-south-1");
    drop(peer);
}

/// Three `edgeroom serve` processes forming a cluster on loopback, each with its own
/// config, data directory and certificate.
struct Processes {
    dir: tempfile::TempDir,
    names: [&'static str; 3],
    ports: Vec<u16>,
    configs: Vec<std::path::PathBuf>,
    procs: Vec<std::process::Child>,
    http: reqwest::Client,
}

impl Processes {
    fn start() -> Self {
        let mut this = Self::prepare();
        this.procs = (0..3).map(|i| this.spawn(i)).collect();
        this
    }

    /// Certificates, configs and data directories for three nodes; nothing started.
    fn prepare() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names = ["p-east", "p-west", "p-south"];
        let out = Command::new(BIN)
            .args(["cluster", "init", "--nodes", &names.join(","), "--dir"])
            .arg(dir.path().join("certs"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // HTTP on TCP and QUIC on UDP may share a port number.
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let voters: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(n, p)| format!("\"{n}@127.0.0.1:{p}\""))
            .collect();
        let configs = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let path = dir.path().join(format!("{name}.toml"));
                std::fs::write(
                    &path,
                    format!(
                        "node_id = \"{name}\"\nregion = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n\
                         data_dir = {:?}\ncompile_cache_dir = {:?}\nadmin_key = \"k-{name}\"\n\
                         [sandbox]\nmax_instances = 16\n\
                         [cluster]\npeer_listen = \"127.0.0.1:{port}\"\ntls_dir = {:?}\n\
                         voters = [{}]\nraft_heartbeat_ms = 100\nraft_election_ms = 500\n",
                        dir.path().join(name),
                        common::compile_cache(),
                        dir.path().join("certs"),
                        voters.join(", "),
                    ),
                )
                .unwrap();
                path
            })
            .collect();
        Self {
            dir,
            names,
            ports,
            configs,
            procs: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// What `socketio-js/procs.mjs` needs to run this cluster itself.
    fn js_env(&self, cmd: &mut tokio::process::Command) {
        let join = |v: Vec<String>| v.join(",");
        let echo = self.dir.path().join("echo.wasm");
        std::fs::write(&echo, edgeroom::examples::ECHO).unwrap();
        cmd.env("EDGEROOM_BIN", BIN)
            .env(
                "EDGEROOM_CONFIGS",
                join(
                    self.configs
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect(),
                ),
            )
            .env("EDGEROOM_URLS", join((0..3).map(|i| self.url(i)).collect()))
            .env(
                "EDGEROOM_NAMES",
                join(self.names.iter().map(|n| n.to_string()).collect()),
            )
            .env("EDGEROOM_KEY", "k-p-east")
            .env("EDGEROOM_ECHO", echo);
    }

    /// Started, with `echo` deployed as app `app` and live on every node.
    async fn with_echo() -> Self {
        let p = Self::start();
        let leader = p.wait_leader(0, None, Duration::from_secs(60)).await;
        let r = p.deploy(leader, "app", edgeroom::examples::ECHO).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        for i in 0..3 {
            p.wait_version(i, "app", 1).await;
        }
        p
    }

    fn spawn(&self, i: usize) -> std::process::Child {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.configs[i])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn addr(&self, i: usize) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.ports[i]).parse().unwrap()
    }

    async fn get(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url(i)))
            .bearer_auth("k-p-east")
            .send()
            .await
            .ok()?;
        serde_json::from_str(&r.text().await.ok()?).ok()
    }

    /// Which node node `i` says leads the control plane.
    async fn leader(&self, i: usize) -> Option<usize> {
        let c = self.get(i, "/v1/cluster").await?;
        let leader = c["cluster"]["leader"].as_str()?;
        self.names.iter().position(|n| *n == leader)
    }

    async fn wait_leader(&self, asking: usize, not: Option<usize>, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader(asking).await
                && Some(l) != not
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn deploy(&self, i: usize, app: &str, wasm: &'static [u8]) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/apps/{app}/handler", self.url(i)))
            .bearer_auth("k-p-east")
            .body(wasm)
            .send()
            .await
            .unwrap()
    }

    async fn wait_version(&self, i: usize, app: &str, version: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(i, &format!("/v1/apps/{app}")).await;
            if v.as_ref().and_then(|v| v["version"].as_u64()) == Some(version) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never served {app} v{version}: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.procs[i].id().to_string()])
            .status();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = &self.dir;
    }
}

/// An acknowledged state change survives kill -9 of a standalone node: the change is
/// on its disk before the answer goes out (before, the answer preceded a save up to a
/// second later, and a kill right after it took the change back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_state_survives_kill_9_of_a_standalone_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = standalone_config(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut node = serve(&config, &url).await;
    let r = http
        .put(format!("{url}/v1/apps/counter/handler"))
        .bearer_auth("k3y")
        .body(edgeroom::examples::COUNTER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Client::connect(addr, "counter", "json").await;
    assert_eq!(c.join("c", json!(null)).await["ok"], true);
    const N: i64 = 40;
    for i in 1..=N {
        let r = c.emit("c", "incr", json!({"by": 1})).await;
        assert_eq!(r["data"]["count"], i, "{r}");
    }
    let token = c.token();
    node.kill().unwrap();
    node.wait().unwrap();

    let mut node = serve(&config, &url).await;
    let room: serde_json::Value = http
        .get(format!("{url}/v1/apps/counter/rooms/c"))
        .bearer_auth("k3y")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(room["state"]["count"], N, "{room}");
    // The node's resume-token key outlived it, and so did the session (its room's
    // journal keeps its members): the token resumes it.
    let mut again = Client::connect(addr, "counter", "json").await;
    let r = again
        .request(json!({"type": "resume", "token": token, "cursors": {"c": ""}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    node.kill().unwrap();
    node.wait().unwrap();
}

/// Three `edgeroom serve` processes form a cluster; the Raft leader's process is killed
/// with SIGKILL: another leader takes over, deploys keep working, and the killed node
/// comes back from its disk and serves what was deployed while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_survives_kill_9_of_its_leader() {
    let mut p = Processes::start();
    let leader = p.wait_leader(0, None, Duration::from_secs(60)).await;
    let r = p.deploy(leader, "app", edgeroom::examples::ECHO).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // kill -9 the leader: no goodbye, whatever it had in memory is gone.
    p.procs[leader].kill().unwrap();
    p.procs[leader].wait().unwrap();
    let other = (leader + 1) % 3;
    let new_leader = p
        .wait_leader(other, Some(leader), Duration::from_secs(10))
        .await;
    assert_ne!(new_leader, leader);
    let r = p.deploy(other, "app", edgeroom::examples::CHAT).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Back from its disk: it rejoins and serves version 2.
    p.procs[leader] = p.spawn(leader);
    p.wait_version(leader, "app", 2).await;
}

/// Broadcast `i` to room `r`; false if the connection closed before the ack.
async fn broadcast(c: &mut Client, i: i64) -> bool {
    let frame = json!({"type": "emit", "room": "r", "event": "broadcast", "data": {"i": i}});
    c.try_request(frame)
        .await
        .is_some_and(|r| r["error"].is_null())
}

/// A reader whose node process is killed with SIGKILL resumes on another process with
/// its token and cursor and misses nothing; then the sender's process is stopped with
/// SIGTERM mid-stream, and every event it acknowledged before it went reaches the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_across_kill_9_and_a_drain_loses_nothing() {
    let p = Processes::with_echo().await;
    let mut sender = Client::connect(p.addr(0), "app", "json").await;
    assert!(sender.join("r", json!({})).await["error"].is_null());
    let mut reader = Client::connect(p.addr(1), "app", "json").await;
    assert!(reader.join("r", json!({})).await["error"].is_null());
    let token = reader.token();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p
        .get(0, "/v1/apps/app/rooms/r")
        .await
        .map_or(0, |v| v["members"].as_array().map_or(0, Vec::len))
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the reader never showed on the sender's node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20 {
        assert!(broadcast(&mut sender, i).await);
    }
    let (got, cursor) = reader.numbered(20).await;
    assert_eq!(got, (0..20).collect::<Vec<_>>());

    let mut p = p;
    p.procs[1].kill().unwrap();
    p.procs[1].wait().unwrap();
    let killed = Instant::now();
    for i in 20..50 {
        assert!(broadcast(&mut sender, i).await);
    }
    reader.abort();
    let mut back = Client::connect(p.addr(2), "app", "json").await;
    let r = back
        .request(json!({"type": "resume", "token": token, "cursors": {"r": cursor}}))
        .await;
    assert!(r["error"].is_null(), "{r}");
    let (got, _) = back.numbered(30).await;
    println!(
        "kill -9 to every missed event replayed on another node: {:?}",
        killed.elapsed()
    );
    assert_eq!(got, (20..50).collect::<Vec<_>>());
    // No ghosts: once the killed node is declared dead, nobody lists a member there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = p.get(0, "/v1/apps/app/rooms/r").await.unwrap_or_default();
        let on = |node: &str| {
            view["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["node"] == node).count())
        };
        if on("p-west") == 0 && on("p-east") == 1 && on("p-south") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "members after the kill: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM the sender's node while it is sending: what it acknowledged arrives.
    let sending = tokio::spawn(async move {
        let mut acked = 49;
        for i in 50..10_000 {
            if !broadcast(&mut sender, i).await {
                break;
            }
            acked = i;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal(0, "-TERM");
    let acked = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("the sender's connection was never closed")
        .unwrap();
    assert!(acked > 50, "the drain started before anything was sent");
    let (got, _) = back.numbered((acked - 49) as usize).await;
    assert_eq!(got, (50..=acked).collect::<Vec<_>>());
    let status = p.procs[0].wait().unwrap();
    assert!(status.success(), "the drained node exited with {status}");
}

/// socket.io-client members of a cluster of processes whose nodes restart (SIGTERM and
/// start again; kill -9 and start again after the failure timeout): a member recovering
/// on its restarted node gets everything it missed, traffic flows both ways with the
/// restarted node at once, nobody is told of a gap that is not there, and a node with
/// no members of a room shows them on every node (`socketio-js/restart.test.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_members_lose_nothing_when_their_node_restarts() {
    let p = Processes::prepare();
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(common::tests_dir("socketio-js")).args([
        "--test",
        "--test-reporter=spec",
        "--test-timeout=100000",
        "restart.test.mjs",
    ]);
    p.js_env(&mut cmd);
    common::run_client(cmd, "socket.io-client restart test").await;
}

/// Benchmark (run by `bench/restart-failover.sh`, not by the test suite): socket.io-client
/// members and publishers behind regional front doors while nodes are killed and
/// restarted, then restarted in turn with SIGTERM (`socketio-js/bench-restart.mjs`).
/// Prints one JSON line per scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/restart-failover.sh runs it"]
async fn bench_restart_failover() {
    let p = Processes::prepare();
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(common::tests_dir("socketio-js"))
        .arg("bench-restart.mjs");
    p.js_env(&mut cmd);
    common::run_client(cmd, "the restart benchmark").await;
}

/// Benchmark (run by `bench/resume-after-kill.sh`, not by the test suite): many readers
/// on one node process, a sender on another broadcasting; the readers' node is killed
/// with SIGKILL and each reader resumes at once on one of the two others with its
/// token and cursor. Prints one JSON line: the time from the kill until each reader
/// was resumed and until it had every event it missed, and whether any was lost,
/// duplicated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/resume-after-kill.sh runs it"]
async fn bench_resume_after_kill_9() {
    let readers_n: usize = std::env::var("READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut p = Processes::with_echo().await;
    let mut sender = Client::connect(p.addr(0), "app", "json").await;
    assert!(sender.join("r", json!({})).await["error"].is_null());
    let mut readers = Vec::new();
    for _ in 0..readers_n {
        let mut c = Client::connect(p.addr(1), "app", "json").await;
        assert!(c.join("r", json!({})).await["error"].is_null());
        readers.push(c);
    }
    // The sender broadcasts at 100/s until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The last event the sender had acknowledged.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let sending = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(broadcast(&mut sender, i).await);
                acked.store(i, std::sync::atomic::Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (kill_tx, kill_rx) = tokio::sync::watch::channel(None::<Instant>);
    let addrs = [p.addr(0), p.addr(2)];
    let tasks: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let mut kill_rx = kill_rx.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let token = c.token();
                // Read until the node dies under us.
                let (mut seen, cursor) = c.numbered_until_closed().await;
                let killed = kill_rx.wait_for(Option::is_some).await.unwrap().unwrap();
                let mut back = Client::connect(addrs[k % 2], "app", "json").await;
                let r = back
                    .request(json!({"type": "resume", "token": token, "cursors": {"r": cursor}}))
                    .await;
                assert!(r["error"].is_null(), "{r}");
                let resumed = killed.elapsed();
                // Caught up: it has everything the sender had sent when it resumed.
                let latest = acked.load(std::sync::atomic::Ordering::Relaxed);
                let mut caught_up = None;
                while seen.last().is_none_or(|i| *i < latest + 100) {
                    let f = back.next_of("event").await;
                    let i = f["data"]["i"].as_i64().unwrap();
                    seen.push(i);
                    if caught_up.is_none() && i >= latest {
                        caught_up = Some(killed.elapsed());
                    }
                }
                (resumed, caught_up.unwrap_or(killed.elapsed()), seen)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.procs[1].kill().unwrap();
    let _ = kill_tx.send(Some(Instant::now()));
    p.procs[1].wait().unwrap();
    let mut resumed = Vec::new();
    let mut caught = Vec::new();
    let (mut lost, mut dup, mut reordered) = (0, 0, 0);
    for t in tasks {
        let (r, c, seen) = t.await.unwrap();
        resumed.push(r.as_secs_f64() * 1000.0);
        caught.push(c.as_secs_f64() * 1000.0);
        let first = seen[0];
        for w in seen.windows(2) {
            match w[1] - w[0] {
                1 => {}
                d if d <= 0 => {
                    if seen.iter().filter(|x| **x == w[1]).count() > 1 {
                        dup += 1
                    } else {
                        reordered += 1
                    }
                }
                d => lost += d - 1,
            }
        }
        assert_eq!(first, 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sending.await;
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    println!(
        "{}",
        json!({
            "bench": "resume_after_kill_9", "readers": readers_n,
            "resumed_ms": {"p50": q(&mut resumed, 0.5), "p99": q(&mut resumed, 0.99), "max": q(&mut resumed, 1.0)},
            "caught_up_ms": {"p50": q(&mut caught, 0.5), "p99": q(&mut caught, 0.99), "max": q(&mut caught, 1.0)},
            "lost": lost, "duplicates": dup, "reordered": reordered,
        })
    );
}

/// Admin keys through `edgeroom keys` against a standalone `edgeroom serve`: a key
/// scoped to one app manages that app only and cannot manage keys; a rotated key stops
/// working and its successor works; keys and revocations outlive a restart, and the
/// node's disk holds no key in the clear (before: one configured key, unsalted hashes
/// in a cluster, nothing to list, scope or revoke).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_are_scoped_listed_rotated_and_revoked_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = standalone_config(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let mut node = serve(&config, &url).await;
    let keys = |args: &[&str], key: &str| {
        let out = Command::new(BIN)
            .arg("keys")
            .args(args)
            .args(["--url", &url, "--key", key])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // "made <id> (<name>, scope <scope>): <key>"
    let made = |out: &str| -> (String, String) {
        let line = out.lines().find(|l| l.starts_with("made ")).unwrap();
        let id = line.split_whitespace().nth(1).unwrap().to_owned();
        let key = line.rsplit(": ").next().unwrap().trim().to_owned();
        (id, key)
    };
    let http = reqwest::Client::new();
    let deploy = |app: &str, key: &str| {
        http.put(format!("{url}/v1/apps/{app}/handler"))
            .bearer_auth(key.to_owned())
            .body(edgeroom::examples::ECHO)
            .send()
    };

    let (ok, out) = keys(&["create", "--name", "echo-ci", "--app", "echo"], "k3y");
    assert!(ok, "{out}");
    let (echo_id, echo_key) = made(&out);
    assert!(echo_key.starts_with("erk_"), "{out}");
    assert_eq!(deploy("echo", &echo_key).await.unwrap().status(), 200);
    assert_eq!(deploy("counter", &echo_key).await.unwrap().status(), 403);
    let (ok, out) = keys(&["list"], &echo_key);
    assert!(!ok && out.contains("403"), "an app key listed keys: {out}");

    let (ok, out) = keys(&["list"], "k3y");
    assert!(ok, "{out}");
    assert!(
        out.contains(&echo_id) && out.contains("scope echo"),
        "{out}"
    );
    assert!(
        out.contains("node:cli-1"),
        "the configured key is listed: {out}"
    );
    assert!(!out.contains(&echo_key), "a listing showed a secret: {out}");

    let (ok, out) = keys(&["rotate", &echo_id], "k3y");
    assert!(ok, "{out}");
    let (new_id, new_key) = made(&out);
    assert_ne!(new_id, echo_id);
    assert_eq!(deploy("echo", &echo_key).await.unwrap().status(), 401);
    assert_eq!(deploy("echo", &new_key).await.unwrap().status(), 200);
    let (ok, out) = keys(&["revoke", "nope"], "k3y");
    assert!(!ok && out.contains("404"), "{out}");

    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = serve(&config, &url).await;
    assert_eq!(deploy("echo", &new_key).await.unwrap().status(), 200);
    assert_eq!(deploy("echo", &echo_key).await.unwrap().status(), 401);
    node.kill().unwrap();
    node.wait().unwrap();
    // Only salted hashes on disk: neither the made key nor the configured one.
    let mut disk = Vec::new();
    for entry in walk(&dir.path().join("data")) {
        disk.extend(std::fs::read(entry).unwrap());
    }
    let contains = |needle: &str| disk.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(&new_key), "a key is on disk in the clear");
    assert!(
        !contains("k3y"),
        "the configured key is on disk in the clear"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A standalone node killed with SIGKILL and started again keeps what it acknowledged
/// beyond its state: a member resumes with its token and cursor and gets, once and in
/// order, the events it had not read; an emit retried with its id gets its first answer
/// without running again; a pending timer fires after the restart. (Before: resume
/// failed, the history was gone, a retry ran again and timers were forgotten.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_sessions_ids_and_timers_survive_kill_9_of_a_standalone_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = standalone_config(dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = reqwest::Client::new();
    let mut node = serve(&config, &url).await;
    for (app, wasm) in [
        ("echo", edgeroom::examples::ECHO),
        ("counter", edgeroom::examples::COUNTER),
        ("fixture", common::FIXTURE),
    ] {
        let r = http
            .put(format!("{url}/v1/apps/{app}/handler"))
            .bearer_auth("k3y")
            .body(wasm)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{app}");
    }
    let ticks = || async {
        let room: serde_json::Value = reqwest::Client::new()
            .get(format!("{url}/v1/apps/fixture/rooms/tick"))
            .bearer_auth("k3y")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        room["state"]["ticks"].as_i64().unwrap_or(0)
    };

    // Events: b reads 10 of the 20 a broadcasts.
    let mut a = Client::connect(addr, "echo", "json").await;
    let mut b = Client::connect(addr, "echo", "json").await;
    assert_eq!(a.join("r", json!(null)).await["ok"], true);
    assert_eq!(b.join("r", json!(null)).await["ok"], true);
    for i in 0..20 {
        assert_eq!(a.emit("r", "broadcast", json!({"i": i})).await["ok"], true);
    }
    let (first, cursor) = b.numbered(10).await;
    assert_eq!(first, (0..10).collect::<Vec<i64>>());
    // An idempotent emit, answered.
    let mut c = Client::connect(addr, "counter", "json").await;
    assert_eq!(c.join("n", json!(null)).await["ok"], true);
    let incr =
        json!({"type": "emit", "room": "n", "event": "incr", "data": {"by": 1}, "id": "once"});
    let answered = c.request(incr.clone()).await;
    assert_eq!(answered["data"]["count"], 1, "{answered}");
    // A timer that re-arms itself, counting its runs.
    let mut t = Client::connect(addr, "fixture", "json").await;
    assert_eq!(t.join("tick", json!(null)).await["ok"], true);
    t.emit("tick", "rearm", json!(null)).await;
    while ticks().await < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    node.kill().unwrap();
    node.wait().unwrap();
    let mut node = serve(&config, &url).await;

    // b takes its session back from its cursor: the 10 it missed, once, in order.
    let mut b2 = Client::connect(addr, "echo", "json").await;
    let r = b2
        .request(json!({"type": "resume", "token": b.token(), "cursors": {"r": cursor}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let (rest, _) = b2.numbered(10).await;
    assert_eq!(rest, (10..20).collect::<Vec<i64>>());
    while let Some(f) = b2.try_recv(Duration::from_millis(300)).await {
        assert_ne!(f["type"], "event", "an event came twice: {f}");
        assert_ne!(f["type"], "error", "{f}");
    }
    // c's retry (its session resumed, so the same session) gets the first answer.
    let mut c2 = Client::connect(addr, "counter", "json").await;
    let r = c2
        .request(json!({"type": "resume", "token": c.token(), "cursors": {"n": ""}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let again = c2.request(incr).await;
    assert_eq!(again["data"], answered["data"], "{again}");
    let get = c2
        .request(json!({"type": "emit", "room": "n", "event": "get"}))
        .await;
    assert_eq!(get["data"]["count"], 1, "the retry ran again: {get}");
    // The timer runs on with nobody connected to its room.
    let after_restart = ticks().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ticks().await < after_restart + 3 {
        assert!(
            Instant::now() < deadline,
            "the timer did not fire after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.kill().unwrap();
    node.wait().unwrap();
}

/// socket.io-client against a standalone `edgeroom serve` killed with SIGKILL and
/// started again: a member whose connection had dropped recovers (`recovered`) with
/// every event acknowledged meanwhile, once and in order
/// (`socketio-js/standalone-restart.test.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_recovery_survives_kill_9_of_a_standalone_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = standalone_config(dir.path(), port);
    let echo = dir.path().join("echo.wasm");
    std::fs::write(&echo, edgeroom::examples::ECHO).unwrap();
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(common::tests_dir("socketio-js"))
        .args([
            "--test",
            "--test-reporter=spec",
            "standalone-restart.test.mjs",
        ])
        .env("EDGEROOM_BIN", BIN)
        .env("EDGEROOM_CONFIG", &config)
        .env("EDGEROOM_URL", format!("http://127.0.0.1:{port}"))
        .env("EDGEROOM_KEY", "k3y")
        .env("EDGEROOM_ECHO", &echo);
    common::run_client(cmd, "socket.io-client standalone restart test").await;
}
