//! `edgeroom`: run a node, a local dev node, or deploy a handler.

/// mimalloc: lower memory per idle connection and faster small allocations than the
/// system allocator, for the many small, short-lived buffers a gateway makes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeroom::ids::{AppName, NodeId};
use edgeroom::transport::ClusterCa;
use edgeroom::{NodeConfig, examples};

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
    /// Run a local node on 127.0.0.1:8080 with the example handlers deployed (the default).
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where to keep state (default: a directory under the system temp dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
    }) {
        Command::Dev { listen, data_dir } => rt.block_on(dev(listen, data_dir)),
        Command::Serve { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config =
                NodeConfig::from_toml(&text).with_context(|| format!("in {}", config.display()))?;
            rt.block_on(serve(config))
        }
        Command::Deploy {
            app,
            file,
            url,
            key,
        } => rt.block_on(deploy(&app, &file, &url, key.as_deref())),
        Command::Cluster { command } => cluster(command),
    }
}

fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let (ca, dir, nodes) = match command {
        ClusterCommand::Init { dir, nodes, name } => {
            if dir.join("ca.key").exists() {
                anyhow::bail!(
                    "{} already holds a cluster CA; use `edgeroom cluster cert` to add a node",
                    dir.display()
                );
            }
            let ca = ClusterCa::generate(&name)?;
            ca.save(&dir)?;
            println!("cluster CA: {}", dir.join("ca.crt").display());
            (ca, dir, nodes)
        }
        ClusterCommand::Cert { dir, node } => (ClusterCa::load(&dir)?, dir, vec![node]),
    };
    for node in nodes {
        let node = NodeId::new(&node)?;
        let cert = ca.issue_into(&dir, &node)?;
        println!("node {node}: {}", cert.display());
    }
    Ok(())
}

async fn dev(listen: std::net::SocketAddr, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(|| std::env::temp_dir().join("edgeroom-dev"));
    let mut config = NodeConfig::new(NodeId::new("dev-1")?, data_dir.clone());
    config.listen = listen;
    config.dev = true;
    config.region = "local".into();
    config.default_app = Some(AppName::new("echo")?);
    let running = edgeroom::start(config).await?;
    for (name, wasm) in examples::ALL {
        running
            .node
            .apps
            .deploy(&AppName::new(name)?, wasm.to_vec())
            .await
            .map_err(|e| anyhow::anyhow!("deploying {name}: {e}"))?;
    }
    let addr = running.addr;
    println!(
        "\nEdgeroom dev node on http://{addr}  (state in {})\n\
         Apps deployed: echo, chat, counter.\n\n\
         Try it:\n  \
         npx wscat -c 'ws://{addr}/v1/ws?app=chat'\n  \
         > {{\"type\":\"join\",\"room\":\"lobby\",\"auth\":{{\"user\":\"ann\"}},\"ref\":1}}\n  \
         > {{\"type\":\"emit\",\"room\":\"lobby\",\"event\":\"message\",\"data\":{{\"text\":\"hello\"}},\"ref\":2}}\n\n\
         Look inside:  curl http://{addr}/v1/apps/chat/rooms/lobby\n\
         Metrics:      curl http://{addr}/metrics\n\
         Deploy yours: edgeroom deploy --app mine target/wasm32-wasip2/release/mine.wasm\n",
        data_dir.display()
    );
    wait_for_signal().await;
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let running = edgeroom::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn deploy(app: &str, file: &PathBuf, url: &str, key: Option<&str>) -> anyhow::Result<()> {
    let wasm = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let endpoint = format!("{}/v1/apps/{app}/handler", url.trim_end_matches('/'));
    let mut req = reqwest::Client::new().put(&endpoint).body(wasm);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req
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
