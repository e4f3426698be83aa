//! The `edgeroom` binary as an operator uses it: `serve --config`, `deploy`, SIGTERM.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_deploy_and_stop_a_node_process() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"cli-1\"\nregion = \"eu-west\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ncompile_cache_dir = {:?}\nadmin_key = \"k3y\"\n[sandbox]\nmax_instances = 16\n",
            dir.path().join("data"),
            common::compile_cache(),
        ),
    )
    .unwrap();
    let mut node = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "node did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    use edgeroom::ids::NodeId;
    use edgeroom::transport::{Endpoint, NodeTls, Timing};

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
        let peer = first.accept().await.unwrap().unwrap();
        peer.node().clone()
    });
    let peer = added
        .connect(&NodeId::new("us-east-1").unwrap(), addr)
        .await
        .unwrap();
    assert_eq!(accept.await.unwrap().as_str(), "ap-south-1");
    drop(peer);
}

/// Three `edgeroom serve` processes form a cluster; the Raft leader's process is killed
/// with SIGKILL: another leader takes over, deploys keep working, and the killed node
/// comes back from its disk and serves what was deployed while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_survives_kill_9_of_its_leader() {
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
    let configs: Vec<std::path::PathBuf> = names
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
    let spawn = |i: usize| {
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&configs[i])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut procs: Vec<std::process::Child> = (0..3).map(spawn).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let http = reqwest::Client::new();
    let cluster = |i: usize| {
        let request = http
            .get(format!("{}/v1/cluster", url(i)))
            .bearer_auth("k-p-east")
            .send();
        async move {
            let r = request.await.ok()?;
            serde_json::from_str::<serde_json::Value>(&r.text().await.ok()?).ok()
        }
    };
    let leader_index = |c: &serde_json::Value| {
        let leader = c["cluster"]["leader"].as_str()?;
        names.iter().position(|n| *n == leader)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(l) = cluster(0).await.as_ref().and_then(leader_index) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deploy = |i: usize, wasm: &'static [u8]| {
        http.put(format!("{}/v1/apps/app/handler", url(i)))
            .bearer_auth("k-p-east")
            .body(wasm)
            .send()
    };
    let r = deploy(leader, edgeroom::examples::ECHO).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // kill -9 the leader: no goodbye, whatever it had in memory is gone.
    procs[leader].kill().unwrap();
    procs[leader].wait().unwrap();
    let killed = Instant::now();
    let other = (leader + 1) % 3;
    let new_leader = loop {
        if let Some(l) = cluster(other).await.as_ref().and_then(leader_index)
            && l != leader
        {
            break l;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new_leader, leader);
    let r = deploy(other, edgeroom::examples::CHAT).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Back from its disk: it rejoins and serves version 2.
    procs[leader] = spawn(leader);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let version = async {
            let r = http
                .get(format!("{}/v1/apps/app", url(leader)))
                .bearer_auth("k-p-east")
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
            v["version"].as_u64()
        }
        .await;
        if version == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node never served v2: {version:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &mut procs {
        let _ = p.kill();
        let _ = p.wait();
    }
}
