//! What the control plane agrees on, and the pure function that applies a command to it.
//!
//! Every node holds the same `ControlState` once it has applied the same log prefix, so
//! everything here must be deterministic: no clocks, no randomness, no I/O. The
//! Raft storage (`store`) feeds committed commands in; the node reads the result.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use edgeroom_proto::app::AppConfig;
use edgeroom_proto::ids::{AppName, NodeId};

/// A node as the cluster knows it: where it is and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub region: String,
    /// QUIC address other nodes dial.
    pub peer_addr: SocketAddr,
    /// Base URLs clients and operators use (HTTP, WebSocket, Socket.IO).
    pub client_urls: Vec<String>,
    pub lat: f64,
    pub lon: f64,
}

/// An admin key as every node keeps it: never the key, only a salted hash of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminKey {
    /// What the operator called it (shown in listings).
    pub name: String,
    pub scope: KeyScope,
    /// Random, per key (hex), so equal keys hash differently and a table of hashes
    /// cannot be looked up in bulk.
    pub salt: String,
    /// sha256 over the salt and the key (hex).
    pub hash: String,
    /// When it was made (wall clock, ms since the epoch; only shown).
    pub created_ms: u64,
}

/// What an admin key may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyScope {
    /// Everything: every app, the cluster's status, the keys themselves.
    Cluster,
    /// One app's deploys, settings and rooms.
    App(AppName),
}

impl AdminKey {
    /// A record of `key` under a fresh `salt` (16 random bytes or more, hex).
    pub fn new(name: String, scope: KeyScope, key: &str, salt: String, created_ms: u64) -> Self {
        let hash = salted_sha256(&salt, key);
        Self {
            name,
            scope,
            salt,
            hash,
            created_ms,
        }
    }

    /// Whether `key` is this key. Compared in constant time.
    pub fn matches(&self, key: &str) -> bool {
        let given = salted_sha256(&self.salt, key);
        given.len() == self.hash.len()
            && given
                .bytes()
                .zip(self.hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn salted_sha256(salt: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// One deployed handler version of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: u64,
    pub sha256: String,
    pub size: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// Every version ever deployed, oldest first; the last is live.
    pub versions: Vec<Version>,
    pub config: AppConfig,
}

impl AppState {
    pub fn current(&self) -> Option<&Version> {
        self.versions.last()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub apps: BTreeMap<AppName, AppState>,
    /// Handler components by sha256: a version names its bytes, equal bytes are stored once.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// Admin keys by id (salted hashes; the keys themselves are never stored).
    pub admin_keys: BTreeMap<String, AdminKey>,
    /// Signs resume tokens, so a token from one node verifies on every other (hex).
    pub secret: Option<String>,
    /// A running digest of every log entry applied so far (see [`chain`]): two nodes
    /// that applied the same index with different digests applied different logs.
    pub log_digest: [u8; 32],
}

/// The next running digest: sha256 over the previous one and the applied entry's
/// bytes. Every node computes the same chain from the same log.
pub fn chain(previous: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(entry);
    h.finalize().into()
}

/// A change to the control state; committed through Raft, applied on every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node joined or changed its addresses.
    PutNode(NodeId, NodeInfo),
    RemoveNode(NodeId),
    /// A new handler version. With `base`, only if the live version is still `base`
    /// (0 = none): a deploy that raced another reports the conflict.
    Deploy {
        app: AppName,
        wasm: Vec<u8>,
        base: Option<u64>,
    },
    Configure {
        app: AppName,
        config: AppConfig,
    },
    /// Add an admin key, or replace the one of that id (a node's configured key is
    /// kept as `node:<node>`, put again when the config changes it).
    PutAdminKey {
        id: String,
        key: AdminKey,
    },
    /// Revoke an admin key: it stops working on every node as they apply this.
    RevokeAdminKey {
        id: String,
    },
    /// Set once, when the cluster is created; later attempts keep the first.
    InitSecret(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Deployed {
        version: u64,
        sha256: String,
        /// The bytes were the live version already: nothing changed.
        unchanged: bool,
    },
    /// `Deploy { base }` lost a race: the live version is `current`.
    Conflict {
        current: u64,
    },
    UnknownApp,
    UnknownKey,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ControlState {
    /// Apply one committed command.
    pub fn apply(&mut self, command: Command) -> Response {
        match command {
            Command::PutNode(id, info) => {
                self.nodes.insert(id, info);
                Response::Done
            }
            Command::RemoveNode(id) => {
                self.nodes.remove(&id);
                Response::Done
            }
            Command::Deploy { app, wasm, base } => self.deploy(app, wasm, base),
            // Like a deploy, configuring creates the app (with no handler yet).
            Command::Configure { app, config } => {
                self.apps.entry(app).or_default().config = config;
                Response::Done
            }
            Command::PutAdminKey { id, key } => {
                self.admin_keys.insert(id, key);
                Response::Done
            }
            Command::RevokeAdminKey { id } => match self.admin_keys.remove(&id) {
                Some(_) => Response::Done,
                None => Response::UnknownKey,
            },
            Command::InitSecret(secret) => {
                self.secret.get_or_insert(secret);
                Response::Done
            }
        }
    }

    fn deploy(&mut self, app: AppName, wasm: Vec<u8>, base: Option<u64>) -> Response {
        let sha256 = sha256_hex(&wasm);
        let state = self.apps.entry(app).or_default();
        let live = state.current().map_or(0, |v| v.version);
        if let Some(current) = state.current()
            && current.sha256 == sha256
        {
            return Response::Deployed {
                version: current.version,
                sha256,
                unchanged: true,
            };
        }
        if let Some(base) = base
            && base != live
        {
            return Response::Conflict { current: live };
        }
        let version = live + 1;
        state.versions.push(Version {
            version,
            sha256: sha256.clone(),
            size: wasm.len(),
        });
        self.blobs.entry(sha256.clone()).or_insert(wasm);
        Response::Deployed {
            version,
            sha256,
            unchanged: false,
        }
    }

    /// The live handler of an app: its version and bytes.
    pub fn live_handler(&self, app: &AppName) -> Option<(&Version, &[u8])> {
        let version = self.apps.get(app)?.current()?;
        Some((version, self.blobs.get(&version.sha256)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> AppName {
        AppName::new(name).unwrap()
    }

    fn deploy(state: &mut ControlState, wasm: &[u8], base: Option<u64>) -> Response {
        state.apply(Command::Deploy {
            app: app("chat"),
            wasm: wasm.to_vec(),
            base,
        })
    }

    #[test]
    fn deploys_are_versioned_and_content_addressed() {
        let mut s = ControlState::default();
        let Response::Deployed { version: 1, .. } = deploy(&mut s, b"one", None) else {
            panic!()
        };
        let Response::Deployed {
            version: 1,
            unchanged: true,
            ..
        } = deploy(&mut s, b"one", None)
        else {
            panic!("same bytes again must not make a version")
        };
        let Response::Deployed { version: 2, .. } = deploy(&mut s, b"two", None) else {
            panic!()
        };
        // Back to the first bytes: a new version, the blob stored once.
        let Response::Deployed { version: 3, .. } = deploy(&mut s, b"one", None) else {
            panic!()
        };
        assert_eq!(s.blobs.len(), 2);
        assert_eq!(s.live_handler(&app("chat")).unwrap().1, b"one");
    }

    #[test]
    fn a_deploy_from_a_stale_base_is_a_conflict() {
        let mut s = ControlState::default();
        deploy(&mut s, b"one", Some(0));
        assert_eq!(
            deploy(&mut s, b"two", Some(0)),
            Response::Conflict { current: 1 }
        );
        let Response::Deployed { version: 2, .. } = deploy(&mut s, b"two", Some(1)) else {
            panic!()
        };
    }

    #[test]
    fn the_first_secret_stays() {
        let mut s = ControlState::default();
        s.apply(Command::InitSecret("aa".into()));
        s.apply(Command::InitSecret("bb".into()));
        assert_eq!(s.secret.as_deref(), Some("aa"));
    }

    #[test]
    fn admin_keys_are_salted_and_revocable() {
        let a = AdminKey::new("a".into(), KeyScope::Cluster, "k", "01".into(), 0);
        let b = AdminKey::new("b".into(), KeyScope::Cluster, "k", "02".into(), 0);
        assert_ne!(
            a.hash, b.hash,
            "equal keys under different salts hash apart"
        );
        assert!(a.matches("k") && b.matches("k"));
        assert!(!a.matches("K") && !a.matches("") && !a.matches("kk"));
        let mut s = ControlState::default();
        s.apply(Command::PutAdminKey {
            id: "x".into(),
            key: a,
        });
        assert!(s.admin_keys.contains_key("x"));
        let revoke = || Command::RevokeAdminKey { id: "x".into() };
        assert_eq!(s.apply(revoke()), Response::Done);
        assert_eq!(s.apply(revoke()), Response::UnknownKey);
        assert!(s.admin_keys.is_empty());
    }

    #[test]
    fn configuring_creates_the_app() {
        let mut s = ControlState::default();
        let config = AppConfig {
            namespaces: Some("^/game-\\d+$".into()),
            recovery: false,
            ..AppConfig::default()
        };
        let r = s.apply(Command::Configure {
            app: app("new"),
            config: config.clone(),
        });
        assert_eq!(r, Response::Done);
        assert_eq!(s.apps[&app("new")].config, config);
        assert!(s.live_handler(&app("new")).is_none());
    }
}
