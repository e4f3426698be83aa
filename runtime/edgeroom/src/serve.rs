//! `edgeroom serve`: run one node until it is told to stop (SIGTERM or Ctrl-C), then
//! drain it. geo-sim's node processes run the same code.

use std::future::Future;
use std::time::Duration;

use crate::node::start_with_clock;
use edgeroom_host::clock::Clock;
use edgeroom_host::config::NodeConfig;

/// How long a stopping node may take to drain its rooms and clients.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Run a node until SIGTERM or Ctrl-C, then drain it.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    serve_until(config, Clock::system(), wait_for_signal()).await
}

/// Run a node on `clock` until `stop` resolves, then drain it.
pub async fn serve_until(
    config: NodeConfig,
    clock: Clock,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start_with_clock(config, clock).await?;
    stop.await;
    tracing::info!("shutting down");
    running.shutdown(DRAIN).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
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
