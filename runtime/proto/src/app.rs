//! An app's settings: what its operator sets through the admin API and the control
//! plane agrees on (the same JSON in both).

use serde::{Deserialize, Serialize};

/// An app's settings, set through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Socket.IO namespaces (besides `/`) clients may connect to: a regular expression
    /// the whole name must match. `None` accepts any.
    pub namespaces: Option<String>,
    /// Socket.IO connection state recovery (`pid` and offsets).
    pub recovery: bool,
    /// Client credentials: the keys tokens are checked with, and whether clients
    /// without a token may connect.
    pub auth: AuthConfig,
}

/// How an app's clients prove who they are (docs/auth.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a client without a token may connect. Unset: yes while `keys` is
    /// empty (so a new or dev app works at once), no as soon as a key is set.
    pub anonymous: Option<bool>,
    /// The keys a token may be signed with. A rotation lists the old and the new key
    /// together until the old tokens have expired. A token's `kid` header picks its
    /// key; a token without one is tried against every key of its algorithm.
    pub keys: Vec<TokenKey>,
}

impl AuthConfig {
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.unwrap_or(self.keys.is_empty())
    }

    /// The settings with shared secrets replaced by a fingerprint, for showing.
    pub fn redacted(&self) -> Self {
        let keys = self
            .keys
            .iter()
            .map(|k| TokenKey {
                key: match k.alg {
                    TokenAlg::Hs256 => "(secret)".into(),
                    TokenAlg::EdDsa | TokenAlg::Es256 => k.key.clone(),
                },
                ..k.clone()
            })
            .collect();
        Self {
            anonymous: self.anonymous,
            keys,
        }
    }
}

/// One key tokens may be signed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    /// The key's id, matched against a token's `kid` header.
    pub kid: String,
    pub alg: TokenAlg,
    /// HS256: the shared secret (UTF-8, at least 32 bytes). EdDSA and ES256: the public
    /// key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub key: String,
}

/// The JWT algorithms an app may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenAlg {
    #[serde(rename = "HS256")]
    Hs256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// ECDSA over P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
}

impl AppConfig {
    /// The settings as the admin API shows them: no shared secret.
    pub fn redacted(&self) -> Self {
        Self {
            auth: self.auth.redacted(),
            ..self.clone()
        }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            namespaces: None,
            recovery: true,
            auth: AuthConfig::default(),
        }
    }
}
