//! The handler registry: which handler version each app runs.
//!
//! Deploys are validated and compiled before they are recorded, recorded durably before
//! they go live, and published to the app's rooms through a watch channel: each room
//! picks the new version up at its next event, so a deploy drops no connection.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::credential::Verifier;
use crate::metrics::Metrics;
use crate::store::{AppRecord, Store, VersionRecord};
use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::AppName;
use edgeroom_sandbox::{CompiledHandler, RoomApi, Sandbox, sha256_hex};

/// The version of an app's handler that rooms run now.
pub struct LiveHandler<W: 'static> {
    pub version: u64,
    pub compiled: CompiledHandler<W>,
}

/// What rooms watch.
pub type LiveRx<W> = watch::Receiver<Option<Arc<LiveHandler<W>>>>;

struct AppEntry<W: 'static> {
    record: AppRecord,
    settings: Arc<AppSettings>,
    live: watch::Sender<Option<Arc<LiveHandler<W>>>>,
}

/// An app's settings, ready to use.
#[derive(Debug, Default)]
pub struct AppSettings {
    pub config: AppConfig,
    namespaces: Option<regex::Regex>,
    /// Checks its clients' tokens.
    pub credentials: Verifier,
}

impl AppSettings {
    pub fn new(config: AppConfig) -> Result<Self, String> {
        let namespaces = match &config.namespaces {
            Some(p) => Some(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("namespaces is not a valid pattern: {e}"))?,
            ),
            None => None,
        };
        let credentials = Verifier::new(&config.auth)?;
        Ok(Self {
            config,
            namespaces,
            credentials,
        })
    }

    /// Whether Socket.IO clients may connect to namespace `nsp`. The main namespace
    /// always exists, as in Socket.IO.
    pub fn accepts_namespace(&self, nsp: &str) -> bool {
        nsp == "/" || self.namespaces.as_ref().is_none_or(|r| r.is_match(nsp))
    }
}

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Invalid(String),
    #[error("handler is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("storage failed: {0}")]
    Storage(#[from] anyhow::Error),
    /// Deployed with a base version that is no longer live: another deploy won the race.
    #[error("version {current} is live now, not the base this deploy was made against")]
    Conflict { current: u64 },
    /// The cluster could not commit it (no quorum reachable).
    #[error("the cluster cannot commit right now: {0}")]
    Unavailable(String),
}

/// The outcome of a deploy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub app: String,
    pub version: u64,
    pub sha256: String,
    pub size: u64,
    /// The same bytes were already live: nothing changed.
    pub unchanged: bool,
}

impl Deployed {
    fn unchanged(app: &AppName, v: &VersionRecord) -> Self {
        Self {
            app: app.to_string(),
            version: v.version,
            sha256: v.sha256.clone(),
            size: v.size,
            unchanged: true,
        }
    }
}

pub struct Apps<W: 'static> {
    sandbox: Arc<Sandbox<W>>,
    store: Arc<Store>,
    apps: Mutex<HashMap<AppName, AppEntry<W>>>,
    /// Serialises deploys so versions are numbered without gaps.
    deploying: tokio::sync::Mutex<()>,
    max_bytes: usize,
    metrics: Arc<Metrics>,
    /// For deploy dates.
    clock: Clock,
}

impl<W: RoomApi> Apps<W> {
    /// Load every app's live version from the store, compiling what the cache lacks.
    pub fn open(
        sandbox: Arc<Sandbox<W>>,
        store: Arc<Store>,
        max_bytes: usize,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let mut apps = HashMap::new();
        for (name, record) in store.apps()? {
            let live = match record.versions.last() {
                Some(v) => {
                    let wasm = store.blob(&v.sha256)?.ok_or_else(|| {
                        anyhow::anyhow!("handler blob {} of app {name} is missing", v.sha256)
                    })?;
                    let compiled = sandbox.compile(&wasm).map_err(|e| {
                        anyhow::anyhow!("stored handler of app {name} no longer loads: {e}")
                    })?;
                    Some(Arc::new(LiveHandler {
                        version: v.version,
                        compiled,
                    }))
                }
                None => None,
            };
            let settings = AppSettings::new(record.config.clone())
                .map_err(|e| anyhow::anyhow!("stored settings of app {name}: {e}"))?;
            apps.insert(
                name,
                AppEntry {
                    record,
                    settings: Arc::new(settings),
                    live: watch::Sender::new(live),
                },
            );
        }
        Ok(Self {
            sandbox,
            store,
            apps: Mutex::new(apps),
            deploying: tokio::sync::Mutex::new(()),
            max_bytes,
            metrics,
            clock,
        })
    }

    /// Validate, compile, record and publish a new handler for `app` (creating the app).
    pub async fn deploy(&self, app: &AppName, wasm: Vec<u8>) -> Result<Deployed, DeployError> {
        self.check_size(&wasm)?;
        let _one_at_a_time = self.deploying.lock().await;
        let sha256 = sha256_hex(&wasm);
        let current = self.current(app);
        if let Some(v) = current.as_ref().filter(|v| v.sha256 == sha256) {
            return Ok(Deployed::unchanged(app, v));
        }
        let version = current.map_or(1, |v| v.version + 1);
        self.install_locked(app, version, wasm).await
    }

    /// Install a version the cluster numbered (see `cluster::registry`). A version at
    /// or below the live one is already here: nothing changes.
    pub async fn install(
        &self,
        app: &AppName,
        version: u64,
        wasm: Vec<u8>,
    ) -> Result<Deployed, DeployError> {
        self.check_size(&wasm)?;
        let _one_at_a_time = self.deploying.lock().await;
        if let Some(v) = self.current(app).filter(|v| v.version >= version) {
            return Ok(Deployed::unchanged(app, &v));
        }
        self.install_locked(app, version, wasm).await
    }

    /// Check that `wasm` would deploy (size, a loadable component), without deploying:
    /// a cluster node checks before it proposes a version to everyone.
    pub async fn validate(&self, wasm: Vec<u8>) -> Result<Vec<u8>, DeployError> {
        self.check_size(&wasm)?;
        let sandbox = self.sandbox.clone();
        let (compiled, wasm) = tokio::task::spawn_blocking(move || (sandbox.compile(&wasm), wasm))
            .await
            .map_err(|e| DeployError::Storage(anyhow::anyhow!("compile task failed: {e}")))?;
        compiled.map_err(DeployError::Invalid)?;
        Ok(wasm)
    }

    fn check_size(&self, wasm: &[u8]) -> Result<(), DeployError> {
        if wasm.len() > self.max_bytes {
            return Err(DeployError::TooLarge {
                size: wasm.len(),
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    fn current(&self, app: &AppName) -> Option<VersionRecord> {
        self.apps
            .lock()
            .get(app)
            .and_then(|e| e.record.versions.last().cloned())
    }

    /// Compile, store and publish `version`; the caller holds `deploying`.
    async fn install_locked(
        &self,
        app: &AppName,
        version: u64,
        wasm: Vec<u8>,
    ) -> Result<Deployed, DeployError> {
        let sha256 = sha256_hex(&wasm);
        let sandbox = self.sandbox.clone();
        let (compiled, wasm) = tokio::task::spawn_blocking(move || (sandbox.compile(&wasm), wasm))
            .await
            .map_err(|e| DeployError::Storage(anyhow::anyhow!("compile task failed: {e}")))?;
        let compiled = compiled.map_err(DeployError::Invalid)?;
        let record = VersionRecord {
            version,
            sha256: sha256.clone(),
            size: wasm.len() as u64,
            deployed_at_ms: self.clock.wall_ms(),
        };
        let store = self.store.clone();
        let (app2, record2) = (app.clone(), record.clone());
        tokio::task::spawn_blocking(move || store.put_version(&app2, &record2, &wasm))
            .await
            .map_err(|e| DeployError::Storage(anyhow::anyhow!("store task failed: {e}")))??;
        let live = Arc::new(LiveHandler {
            version: record.version,
            compiled,
        });
        let mut apps = self.apps.lock();
        let entry = apps.entry(app.clone()).or_insert_with(AppEntry::empty);
        entry.record.versions.push(record.clone());
        entry.live.send_replace(Some(live));
        self.metrics.deploys.inc();
        tracing::info!(app = %app, version = record.version, sha256 = %record.sha256, "deployed");
        Ok(Deployed {
            app: app.to_string(),
            version: record.version,
            sha256,
            size: record.size,
            unchanged: false,
        })
    }

    /// Rooms of `app` watch this; `None` for an unknown app.
    pub fn subscribe(&self, app: &AppName) -> Option<LiveRx<W>> {
        self.apps.lock().get(app).map(|e| e.live.subscribe())
    }

    pub fn exists(&self, app: &AppName) -> bool {
        self.apps.lock().contains_key(app)
    }

    pub fn record(&self, app: &AppName) -> Option<AppRecord> {
        self.apps.lock().get(app).map(|e| e.record.clone())
    }

    pub fn settings(&self, app: &AppName) -> Option<Arc<AppSettings>> {
        self.apps.lock().get(app).map(|e| e.settings.clone())
    }

    /// Change an app's settings (creating the app, with no handler yet).
    pub async fn configure(&self, app: &AppName, config: AppConfig) -> Result<(), DeployError> {
        let settings = AppSettings::new(config.clone()).map_err(DeployError::Invalid)?;
        let _one_at_a_time = self.deploying.lock().await;
        let store = self.store.clone();
        let app2 = app.clone();
        tokio::task::spawn_blocking(move || store.put_config(&app2, &config))
            .await
            .map_err(|e| DeployError::Storage(anyhow::anyhow!("store task failed: {e}")))??;
        let mut apps = self.apps.lock();
        let entry = apps.entry(app.clone()).or_insert_with(AppEntry::empty);
        entry.record.config = settings.config.clone();
        entry.settings = Arc::new(settings);
        Ok(())
    }
}

impl<W> AppEntry<W> {
    fn empty() -> Self {
        Self {
            record: AppRecord::default(),
            settings: Arc::default(),
            live: watch::Sender::new(None),
        }
    }
}
