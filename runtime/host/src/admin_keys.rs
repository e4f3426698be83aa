//! Admin keys: who may deploy, configure and inspect, and what.
//!
//! A key is kept only as a salted hash, by id: in the control plane in a cluster (so it
//! works on every node, and a revocation reaches every node), in the node's store when
//! standalone. A key made through the API reads `erk_<id>_<secret>`, so checking it
//! looks up one record; a key from a node's config (`admin_key`) is recorded as
//! `node:<node>` and found among those. A key is scoped to the whole cluster or to one
//! app. Rotation is a new key, then the old one revoked once its users moved.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::RngCore;

use crate::store::Store;
use edgeroom_cluster::Cluster;
use edgeroom_cluster::control::state::{AdminKey, Command, KeyScope, Response};

/// Keys a node keeps at most (each check of a configured key looks at the `node:` ones).
pub const MAX_KEYS: usize = 1000;
/// The prefix of keys made through the API.
const PREFIX: &str = "erk_";

/// A key as listed: never its secret or hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub name: String,
    /// `"cluster"`, or the app's name.
    pub scope: String,
    pub created_ms: u64,
}

/// A key just made: the only time its secret is shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Made {
    pub id: String,
    pub key: String,
    pub name: String,
    pub scope: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no admin key {0}")]
    Unknown(String),
    #[error("this node keeps at most {MAX_KEYS} admin keys: revoke some first")]
    TooMany,
    #[error("{0}")]
    Unavailable(String),
}

/// Where this node's admin keys live.
#[derive(Clone)]
pub enum AdminKeys {
    Cluster(Arc<Cluster>),
    Local(Arc<Store>),
}

pub fn scope_name(scope: &KeyScope) -> String {
    match scope {
        KeyScope::Cluster => "cluster".into(),
        KeyScope::App(app) => app.to_string(),
    }
}

/// The record `presented` is the key of: by its id for a key made through the API,
/// else among the configured (`node:`) keys.
fn find<'a>(keys: &'a BTreeMap<String, AdminKey>, presented: &str) -> Option<&'a AdminKey> {
    if let Some((id, _)) = presented
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
    {
        return keys.get(id).filter(|k| k.matches(presented));
    }
    keys.range("node:".to_owned().."node;".to_owned())
        .map(|(_, k)| k)
        .find(|k| k.matches(presented))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl AdminKeys {
    fn all(&self) -> Result<BTreeMap<String, AdminKey>, KeyError> {
        match self {
            AdminKeys::Cluster(c) => Ok(c.control.state().admin_keys.clone()),
            AdminKeys::Local(store) => store
                .admin_keys()
                .map_err(|e| KeyError::Unavailable(format!("{e:#}"))),
        }
    }

    /// The scope of `presented`, if it is a live key.
    pub fn check(&self, presented: &str) -> Option<KeyScope> {
        match self {
            AdminKeys::Cluster(c) => {
                find(&c.control.state().admin_keys, presented).map(|k| k.scope.clone())
            }
            AdminKeys::Local(store) => {
                find(&store.admin_keys().ok()?, presented).map(|k| k.scope.clone())
            }
        }
    }

    /// Every key, without secrets.
    pub fn list(&self) -> Result<Vec<Listed>, KeyError> {
        Ok(self
            .all()?
            .into_iter()
            .map(|(id, k)| Listed {
                id,
                name: k.name,
                scope: scope_name(&k.scope),
                created_ms: k.created_ms,
            })
            .collect())
    }

    /// Make a new key; its secret is in the answer and nowhere else.
    pub async fn create(
        &self,
        name: String,
        scope: KeyScope,
        now_ms: u64,
    ) -> Result<Made, KeyError> {
        if self.all()?.len() >= MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        let id = random_hex(8);
        let key = format!("{PREFIX}{id}_{}", random_hex(32));
        let record = AdminKey::new(name.clone(), scope.clone(), &key, random_hex(16), now_ms);
        self.put(id.clone(), record).await?;
        Ok(Made {
            id,
            key,
            name,
            scope: scope_name(&scope),
        })
    }

    /// Record `key` as `id`, replacing any key of that id.
    pub async fn put(&self, id: String, key: AdminKey) -> Result<(), KeyError> {
        match self {
            AdminKeys::Cluster(c) => c
                .control
                .write(Command::PutAdminKey { id, key })
                .await
                .map(|_| ())
                .map_err(|e| KeyError::Unavailable(e.to_string())),
            AdminKeys::Local(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.put_admin_key(&id, &key))
                    .await
                    .map_err(|e| KeyError::Unavailable(e.to_string()))?
                    .map_err(|e| KeyError::Unavailable(format!("{e:#}")))
            }
        }
    }

    /// Revoke the key `id` everywhere.
    pub async fn revoke(&self, id: &str) -> Result<(), KeyError> {
        let removed = match self {
            AdminKeys::Cluster(c) => {
                match c
                    .control
                    .write(Command::RevokeAdminKey { id: id.to_owned() })
                    .await
                {
                    Ok(Response::UnknownKey) => false,
                    Ok(_) => true,
                    Err(e) => return Err(KeyError::Unavailable(e.to_string())),
                }
            }
            AdminKeys::Local(store) => {
                let (store, owned) = (store.clone(), id.to_owned());
                tokio::task::spawn_blocking(move || store.remove_admin_key(&owned))
                    .await
                    .map_err(|e| KeyError::Unavailable(e.to_string()))?
                    .map_err(|e| KeyError::Unavailable(format!("{e:#}")))?
            }
        };
        if removed {
            Ok(())
        } else {
            Err(KeyError::Unknown(id.to_owned()))
        }
    }

    /// On a standalone node: record the configured key as `node:<node>` (in a cluster,
    /// joining the cluster does this).
    pub async fn keep_configured(
        &self,
        node: &str,
        key: Option<&str>,
        now_ms: u64,
    ) -> Result<(), KeyError> {
        let (AdminKeys::Local(_), Some(key)) = (self, key) else {
            return Ok(());
        };
        let id = format!("node:{node}");
        if self.all()?.get(&id).is_some_and(|k| k.matches(key)) {
            return Ok(());
        }
        let record = AdminKey::new(
            format!("configured on {node}"),
            KeyScope::Cluster,
            key,
            random_hex(16),
            now_ms,
        );
        self.put(id, record).await
    }
}
