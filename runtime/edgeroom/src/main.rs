//! `edgeroom`: run a node, a local dev node, or deploy a handler.

/// mimalloc: lower memory per idle connection and faster small allocations than the
/// system allocator, for the many small, short-lived buffers a gateway makes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeroom::config::ClusterConfig;
use edgeroom::{NodeConfig, examples};
use edgeroom_proto::ids::{AppName, NodeId};
use edgeroom_transport::ClusterCa;

#[derive(Parser)]
#[command(
    name = "edgeroom",
    version,
    about = "Edgeroom: realtime rooms with WebAssembly handlers at the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster of three regions (127.0.0.1-3, same port) with the example
    /// handlers deployed (the default).
    Dev {
        /// The first region's address; the others use 127.0.0.2 and 127.0.0.3.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where to keep state (default: a directory under the system temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// One node, no cluster (what the gateway benchmarks compare).
        #[arg(long)]
        standalone: bool,
        /// Require this bearer key on the admin API (needed to listen beyond loopback).
        #[arg(long, env = "EDGEROOM_ADMIN_KEY")]
        admin_key: Option<String>,
    },
    /// Run a node from a configuration file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Upload a handler component to a node.
    Deploy {
        #[arg(long)]
        app: String,
        /// The component (.wasm) to deploy.
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Admin key (or EDGEROOM_ADMIN_KEY).
        #[arg(long, env = "EDGEROOM_ADMIN_KEY")]
        key: Option<String>,
    },
    /// Cluster set-up: certificates for the nodes' mutual TLS.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Admin keys: list, create (for the cluster or one app), revoke, rotate.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Admin key (or EDGEROOM_ADMIN_KEY): a cluster-wide one.
        #[arg(long, global = true, env = "EDGEROOM_ADMIN_KEY")]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every admin key: id, name, scope, when made (never a secret).
    List,
    /// Make a key; its secret is printed once and kept nowhere.
    Create {
        #[arg(long)]
        name: String,
        /// The one app the key may manage (deploys, settings, rooms); default: all.
        #[arg(long)]
        app: Option<String>,
    },
    /// Revoke a key on every node.
    Revoke { id: String },
    /// Make a new key with the same name and scope as `id`, print it, then revoke `id`
    /// (give the new key to its users before).
    Rotate { id: String },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Write a new cluster CA and certificates for the first nodes into a directory.
    Init {
        /// Where to write ca.crt, ca.key and NODE.crt / NODE.key for each node.
        #[arg(long)]
        dir: PathBuf,
        /// Node ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// A name for the cluster, written into the CA certificate.
        #[arg(long, default_value = "edgeroom")]
        name: String,
    },
    /// Issue a certificate for one more node from the CA in a directory.
    Cert {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Run a node from its config file, joining a running cluster through `via`.
    Join {
        #[arg(long)]
        config: PathBuf,
        /// Any node of the cluster, `name@host:port` (its peer address).
        #[arg(long)]
        via: String,
        /// Join as a voter (else a learner).
        #[arg(long)]
        voter: bool,
    },
    /// Show the control plane as a node sees it: leader, term, log, each node's lag.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Admin key (or EDGEROOM_ADMIN_KEY).
        #[arg(long, env = "EDGEROOM_ADMIN_KEY")]
        key: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command.unwrap_or(Command::Dev {
        listen: "127.0.0.1:8080".parse()?,
        data_dir: None,
        standalone: false,
        admin_key: std::env::var("EDGEROOM_ADMIN_KEY").ok(),
    }) {
        Command::Dev {
            listen,
            data_dir,
            standalone,
            admin_key,
        } => rt.block_on(dev(listen, data_dir, standalone, admin_key)),
        Command::Serve { config } => rt.block_on(edgeroom::serve::serve(read_config(&config)?)),
        Command::Deploy {
            app,
            file,
            url,
            key,
        } => rt.block_on(deploy(&app, &file, &url, key.as_deref())),
        Command::Cluster { command } => match command {
            ClusterCommand::Init { dir, nodes, name } => cluster_init(&dir, &nodes, &name),
            ClusterCommand::Cert { dir, node } => {
                issue_certs(&ClusterCa::load(&dir)?, &dir, &[node])
            }
            ClusterCommand::Join { config, via, voter } => {
                let mut config = read_config(&config)?;
                let cluster = config.cluster.as_mut().ok_or_else(|| {
                    anyhow::anyhow!("the config has no [cluster] section (peer_listen, tls_dir)")
                })?;
                cluster.voters.clear();
                cluster.join = Some(via);
                cluster.voter = voter;
                config.check()?;
                rt.block_on(edgeroom::serve::serve(config))
            }
            ClusterCommand::Status { url, key } => {
                rt.block_on(cluster_status(&url, key.as_deref()))
            }
        },
        Command::Keys { command, url, key } => rt.block_on(keys(command, &url, key.as_deref())),
    }
}

/// One admin API call about keys: its JSON answer, or why it failed.
async fn keys_call(
    method: reqwest::Method,
    url: &str,
    path: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let endpoint = format!("{}{path}", url.trim_end_matches('/'));
    let mut req = admin_request(method.clone(), &endpoint, key);
    if let Some(body) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {endpoint}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    anyhow::ensure!(status.is_success(), "{endpoint} answered {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("{endpoint} answered {text:?}"))
}

async fn keys(command: KeysCommand, url: &str, key: Option<&str>) -> anyhow::Result<()> {
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let print_made = |made: &serde_json::Value| {
        println!(
            "made {} ({}, scope {}): {}",
            text(&made["id"]),
            text(&made["name"]),
            text(&made["scope"]),
            text(&made["key"])
        );
    };
    let list = || keys_call(reqwest::Method::GET, url, "/v1/keys", key, None);
    let revoke = |id: &str| {
        let path = format!("/v1/keys/{id}");
        let id = id.to_owned();
        async move {
            keys_call(reqwest::Method::DELETE, url, &path, key, None).await?;
            println!("revoked {id}");
            anyhow::Ok(())
        }
    };
    match command {
        KeysCommand::List => {
            for k in list().await?["keys"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\tscope {}\tmade {}",
                    text(&k["id"]),
                    text(&k["name"]),
                    text(&k["scope"]),
                    k["created_ms"]
                );
            }
        }
        KeysCommand::Create { name, app } => {
            let made = keys_call(
                reqwest::Method::POST,
                url,
                "/v1/keys",
                key,
                Some(serde_json::json!({"name": name, "app": app})),
            )
            .await?;
            print_made(&made);
        }
        KeysCommand::Revoke { id } => revoke(&id).await?,
        KeysCommand::Rotate { id } => {
            let all = list().await?;
            let old = all["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|k| k["id"] == id.as_str())
                .ok_or_else(|| anyhow::anyhow!("no admin key {id}"))?;
            let app = match text(&old["scope"]).as_str() {
                "cluster" => None,
                app => Some(app.to_owned()),
            };
            let made = keys_call(
                reqwest::Method::POST,
                url,
                "/v1/keys",
                key,
                Some(serde_json::json!({"name": old["name"], "app": app})),
            )
            .await?;
            print_made(&made);
            revoke(&id).await?;
        }
    }
    Ok(())
}

fn read_config(path: &std::path::Path) -> anyhow::Result<NodeConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    NodeConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))
}

/// A request to a node's admin API, with the bearer key when there is one.
fn admin_request(
    method: reqwest::Method,
    endpoint: &str,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    let req = reqwest::Client::new().request(method, endpoint);
    match key {
        Some(key) => req.bearer_auth(key),
        None => req,
    }
}

async fn cluster_status(url: &str, key: Option<&str>) -> anyhow::Result<()> {
    let endpoint = format!("{}/v1/cluster", url.trim_end_matches('/'));
    let resp = admin_request(reqwest::Method::GET, &endpoint, key)
        .send()
        .await
        .with_context(|| format!("GET {endpoint}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    let body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{endpoint} answered {text:?}"))?;
    anyhow::ensure!(status.is_success(), "{endpoint} answered {status}: {body}");
    let c = &body["cluster"];
    if c.is_null() {
        println!("{} is a standalone node (no cluster)", body["node"]);
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!(
        "asked {} ({}): leader {}, term {}, last log index {}, applied {}",
        text(&body["node"]),
        text(&c["role"]),
        text(&c["leader"]),
        c["term"],
        c["last_log_index"],
        c["applied_index"]
    );
    let voters: Vec<String> = c["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    for n in body["nodes"].as_array().into_iter().flatten() {
        let name = text(&n["node"]);
        let role = if voters.contains(&name) {
            "voter"
        } else {
            "learner"
        };
        let lag = c["lag"]
            .get(&name)
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        println!(
            "  {name:<16} {role:<8} region {:<12} lag {lag:<6} {}",
            text(&n["region"]),
            text(&n["client_urls"][0])
        );
    }
    Ok(())
}

fn cluster_init(dir: &std::path::Path, nodes: &[String], name: &str) -> anyhow::Result<()> {
    if dir.join("ca.key").exists() {
        anyhow::bail!(
            "{} already holds a cluster CA; use `edgeroom cluster cert` to add a node",
            dir.display()
        );
    }
    let ca = ClusterCa::generate(name)?;
    ca.save(dir)?;
    println!("cluster CA: {}", dir.join("ca.crt").display());
    let key = dir.join("secrets.key");
    edgeroom_transport::tls::write_private(&key, &edgeroom_transport::Sealer::generate_hex())?;
    println!(
        "secrets key (secrets_key_file, on every node): {}",
        key.display()
    );
    issue_certs(&ca, dir, nodes)
}

fn issue_certs(ca: &ClusterCa, dir: &std::path::Path, nodes: &[String]) -> anyhow::Result<()> {
    for node in nodes {
        let node = NodeId::new(node)?;
        let cert = ca.issue_into(dir, &node)?;
        println!("node {node}: {}", cert.display());
    }
    Ok(())
}

/// The dev cluster's regions: (node id, region, lat, lon), from the geo data.
const DEV_REGIONS: [(&str, &str, f64, f64); 3] = [
    ("us-east-1", "us-east", 37.37, -79.82),
    ("eu-west-1", "eu-west", 52.37, 4.90),
    ("ap-south-1", "ap-south", 18.52, 73.86),
];

async fn dev(
    listen: std::net::SocketAddr,
    data_dir: Option<PathBuf>,
    standalone: bool,
    admin_key: Option<String>,
) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(|| std::env::temp_dir().join("edgeroom-dev"));
    let configs = if standalone {
        let mut config = NodeConfig::new(NodeId::new("dev-1")?, data_dir.clone());
        config.listen = listen;
        config.region = "local".into();
        std::fs::create_dir_all(&data_dir)?;
        config.secrets_key_file = Some(dev_secrets_key(&data_dir)?);
        vec![config]
    } else {
        dev_cluster(listen, &data_dir)?
    };
    let starting = configs.into_iter().map(|mut config| {
        config.dev = true;
        config.admin_key = admin_key.clone();
        config.default_app = Some(AppName::new("echo")?);
        Ok(edgeroom::start(config))
    });
    // Together: each voter waits for a quorum of the others.
    let nodes =
        futures_util::future::try_join_all(starting.collect::<anyhow::Result<Vec<_>>>()?).await?;
    let first = &nodes[0].node;
    for (name, wasm) in examples::ALL {
        let app = AppName::new(name)?;
        let deployed = match &first.gateway.cluster {
            Some(cluster) => {
                edgeroom_host::registry::deploy(
                    cluster,
                    &first.gateway.apps,
                    &app,
                    wasm.to_vec(),
                    None,
                )
                .await
            }
            None => first.gateway.apps.deploy(&app, wasm.to_vec()).await,
        };
        deployed.map_err(|e| anyhow::anyhow!("deploying {name}: {e}"))?;
    }
    let addr = nodes[0].addr;
    let regions: String = nodes
        .iter()
        .map(|n| format!("  {:<10} http://{}\n", n.node.gateway.config.region, n.addr))
        .collect();
    println!(
        "\nEdgeroom dev {} (state in {})\n{regions}\
         Apps deployed: echo, chat, counter.\n\n\
         Try it:\n  \
         npx wscat -c 'ws://{addr}/v1/ws?app=chat'\n  \
         > {{\"type\":\"join\",\"room\":\"lobby\",\"auth\":{{\"user\":\"ann\"}},\"ref\":1}}\n  \
         > {{\"type\":\"emit\",\"room\":\"lobby\",\"event\":\"message\",\"data\":{{\"text\":\"hello\"}},\"ref\":2}}\n\n\
         Look inside:  curl http://{addr}/v1/apps/chat/rooms/lobby\n\
         Cluster:      curl http://{addr}/v1/cluster\n\
         Metrics:      curl http://{addr}/metrics\n\
         Deploy yours: edgeroom deploy --app mine target/wasm32-wasip2/release/mine.wasm\n",
        if nodes.len() > 1 {
            "cluster of three regions"
        } else {
            "node"
        },
        data_dir.display()
    );
    edgeroom::serve::wait_for_signal().await;
    for node in nodes {
        node.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// Configs for the dev cluster: certificates made on first use, one data directory per
/// region. A different address than last time starts the cluster afresh (its Raft
/// membership names the old addresses); apps are redeployed anyway.
/// The dev node's secrets key under `dir` (made the first time).
fn dev_secrets_key(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("secrets.key");
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        edgeroom_transport::tls::write_private(&path, &edgeroom_transport::Sealer::generate_hex())?;
    }
    Ok(path)
}

fn dev_cluster(
    listen: std::net::SocketAddr,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<NodeConfig>> {
    let std::net::IpAddr::V4(ip) = listen.ip() else {
        anyhow::bail!("dev wants an IPv4 loopback address, such as 127.0.0.1:8080");
    };
    let [a, b, c, d] = ip.octets();
    anyhow::ensure!(
        a == 127 && d <= 253,
        "dev puts its regions on {ip} and the next two 127.x addresses: use a 127.0.0.x address"
    );
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|i| std::net::SocketAddr::from(([a, b, c, d + i], listen.port())))
        .collect();
    let peers: Vec<String> = DEV_REGIONS
        .iter()
        .zip(&addrs)
        .map(|((id, ..), addr)| format!("{id}@{addr}"))
        .collect();
    std::fs::create_dir_all(data_dir)?;
    let marker = data_dir.join("dev-cluster.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(peers.join(",").as_str()) {
        for (id, ..) in DEV_REGIONS {
            let _ = std::fs::remove_dir_all(data_dir.join(id).join("raft"));
        }
        std::fs::write(&marker, peers.join(","))?;
    }
    let certs = data_dir.join("certs");
    if !certs.join("ca.key").exists() {
        let ca = ClusterCa::generate("dev")?;
        ca.save(&certs)?;
        for (id, ..) in DEV_REGIONS {
            ca.issue_into(&certs, &NodeId::new(id)?)?;
        }
    }
    let secrets = dev_secrets_key(&certs)?;
    DEV_REGIONS
        .iter()
        .zip(addrs)
        .map(|(&(id, region, lat, lon), addr)| {
            let mut config = NodeConfig::new(NodeId::new(id)?, data_dir.join(id));
            config.listen = addr;
            config.region = region.into();
            config.secrets_key_file = Some(secrets.clone());
            let mut cluster = ClusterConfig::new(addr, certs.clone());
            cluster.voters = peers.clone();
            (cluster.lat, cluster.lon) = (lat, lon);
            config.cluster = Some(cluster);
            Ok(config)
        })
        .collect()
}

async fn deploy(app: &str, file: &PathBuf, url: &str, key: Option<&str>) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let endpoint = format!("{}/v1/apps/{app}/handler", url.trim_end_matches('/'));
    let resp = admin_request(reqwest::Method::PUT, &endpoint, key)
        .body(wasm)
        .send()
        .await
        .with_context(|| format!("PUT {endpoint}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("deploy refused ({status}): {body}");
    }
    println!("{body}");
    Ok(())
}
