//! Keeps this node's handlers and app settings in step with the control plane.
//!
//! A deploy commits through Raft; every node then sees the new version in its applied
//! control state and installs it here (compile, store, publish to its rooms). Rooms
//! switch to the new handler on their next event, as with a local deploy.

use std::sync::Arc;

use crate::apps::Apps;
use crate::room::World;
use crate::store::AppConfig;
use edgeroom_proto::ids::AppName;

use super::control::ControlPlane;

/// What the control plane wants live for one app.
struct Wanted {
    app: AppName,
    handler: Option<(u64, Vec<u8>)>,
    config: AppConfig,
}

/// Install what the control plane has and this node lacks, now and after every change,
/// until `stop`.
pub async fn follow(
    control: Arc<ControlPlane>,
    apps: Arc<Apps<World>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = control.applied();
    loop {
        catch_up(&control, &apps).await;
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: everything that differs, installed.
pub async fn catch_up(control: &ControlPlane, apps: &Apps<World>) {
    for wanted in differences(control, apps) {
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

fn differences(control: &ControlPlane, apps: &Apps<World>) -> Vec<Wanted> {
    let state = control.state();
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
        let config_differs = local.as_ref().map(|r| &r.config) != Some(&wanted.config);
        if handler.is_some() || config_differs {
            out.push(Wanted {
                app: app.clone(),
                handler,
                config: wanted.config.clone(),
            });
        }
    }
    out
}
