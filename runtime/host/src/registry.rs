//! Handlers and app settings through the control plane: deploys and settings
//! changes commit through Raft ([`deploy`], [`configure`]), and every node keeps its
//! handlers in step with what was committed ([`follow`]).
//!
//! A deploy commits through Raft; every node then sees the new version in its applied
//! control state and installs it here (compile, store, publish to its rooms). Rooms
//! switch to the new handler on their next event, as with a local deploy.

use std::sync::Arc;

use crate::apps::{AppSettings, Apps, DeployError, Deployed};
use crate::room::World;
use edgeroom_cluster::Cluster;
use edgeroom_cluster::control::state::{Command, Response};
use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::AppName;

/// What the control plane wants live for one app.
struct Wanted {
    app: AppName,
    handler: Option<(u64, Vec<u8>)>,
    config: AppConfig,
}

/// Deploy through the control plane: checked here, committed through Raft, installed
/// here before this returns and on every other node as it applies the log.
pub async fn deploy(
    cluster: &Cluster,
    apps: &Apps<World>,
    app: &AppName,
    wasm: Vec<u8>,
    base: Option<u64>,
) -> Result<Deployed, DeployError> {
    let wasm = apps.validate(wasm).await?;
    let command = Command::Deploy {
        app: app.clone(),
        wasm,
        base,
    };
    match cluster.control.write(command).await {
        Ok(Response::Deployed {
            version, unchanged, ..
        }) => {
            let wasm = cluster
                .control
                .state()
                .live_handler(app)
                .filter(|(v, _)| v.version == version)
                .map(|(_, bytes)| bytes.to_vec());
            match wasm {
                // This node's registry follower may have installed it already:
                // whether anything changed is the control plane's answer.
                Some(wasm) => apps.install(app, version, wasm).await.map(|mut d| {
                    d.unchanged = unchanged;
                    d
                }),
                // Another deploy followed at once; it is being installed instead.
                None => Err(DeployError::Conflict { current: version }),
            }
        }
        Ok(Response::Conflict { current }) => Err(DeployError::Conflict { current }),
        Ok(other) => Err(DeployError::Unavailable(format!("unexpected {other:?}"))),
        Err(e) => Err(DeployError::Unavailable(e.to_string())),
    }
}

/// Change an app's settings everywhere.
pub async fn configure(
    cluster: &Cluster,
    apps: &Apps<World>,
    app: &AppName,
    config: AppConfig,
) -> Result<(), DeployError> {
    AppSettings::new(config.clone()).map_err(DeployError::Invalid)?;
    // Its shared secrets go into the log sealed.
    let config = crate::sealed::seal_config(app, &config, cluster.sealer())
        .map_err(|e| DeployError::Unavailable(format!("sealing the app's secrets: {e:#}")))?;
    let command = Command::Configure {
        app: app.clone(),
        config,
    };
    cluster
        .control
        .write(command)
        .await
        .map_err(|e| DeployError::Unavailable(e.to_string()))?;
    catch_up(cluster, apps).await;
    Ok(())
}

/// Install what the control plane has and this node lacks, now and after every change,
/// until `stop`.
pub async fn follow(
    cluster: Arc<Cluster>,
    apps: Arc<Apps<World>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = cluster.control.applied();
    loop {
        catch_up(&cluster, &apps).await;
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: everything that differs, installed.
pub async fn catch_up(cluster: &Cluster, apps: &Apps<World>) {
    for wanted in differences(cluster, apps) {
        if let Some((version, wasm)) = wanted.handler
            && let Err(e) = apps.install(&wanted.app, version, wasm).await
        {
            // The node that proposed it compiled it; failing here is this node's
            // problem (disk, cache), logged and retried on the next change.
            tracing::error!(app = %wanted.app, version, "installing a replicated handler failed: {e}");
        }
        if apps.record(&wanted.app).map(|r| r.config) != Some(wanted.config.clone())
            && let Err(e) = apps.configure(&wanted.app, wanted.config).await
        {
            tracing::error!(app = %wanted.app, "applying replicated app settings failed: {e}");
        }
    }
}

fn differences(cluster: &Cluster, apps: &Apps<World>) -> Vec<Wanted> {
    let state = cluster.control.state();
    let mut out = Vec::new();
    for (app, wanted) in &state.apps {
        let local = apps.record(app);
        let local_version = local
            .as_ref()
            .and_then(|r| r.versions.last())
            .map(|v| v.version);
        let handler = state
            .live_handler(app)
            .filter(|(v, _)| Some(v.version) != local_version)
            .map(|(v, bytes)| (v.version, bytes.to_vec()));
        // Kept sealed in the log; open here, where tokens are checked.
        let config = match crate::sealed::open_config(app, &wanted.config, cluster.sealer()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%app, "cannot open the app's settings: {e:#}");
                continue;
            }
        };
        let config_differs = local.as_ref().map(|r| &r.config) != Some(&config);
        if handler.is_some() || config_differs {
            out.push(Wanted {
                app: app.clone(),
                handler,
                config,
            });
        }
    }
    out
}
