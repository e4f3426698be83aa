//! Resume tokens: a session id signed with the node's (later the cluster's) secret.
//!
//! `base64url(claims JSON) "." base64url(HMAC-SHA256(secret, claims))`. A token proves
//! that this deployment issued it for that session; whether the session can still be
//! resumed is the session table's business.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use edgeroom_proto::ids::{AppName, ConnId, NodeId};

/// What a token says. On the wire the fields are one letter (`s`, `a`, `n`) to keep
/// tokens short; a token whose app or node is not a valid name is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The session.
    #[serde(rename = "s")]
    pub session: ConnId,
    /// The app it belongs to.
    #[serde(rename = "a")]
    pub app: AppName,
    /// The node that issued it; Socket.IO's `pid`s name none (written `""`).
    #[serde(rename = "n", with = "node_or_empty")]
    pub node: Option<NodeId>,
    /// Which of the session's tokens this is: each resume issues the next, and the
    /// session table accepts only the latest, so a captured token dies at the owner's
    /// next resume.
    #[serde(rename = "g", default, skip_serializing_if = "is_first")]
    pub generation: u64,
}

/// A session's first token is written without `g`, as tokens were before rotation.
fn is_first(generation: &u64) -> bool {
    *generation == 0
}

/// `Option<NodeId>` as a string that is empty for `None`, as tokens always wrote it.
mod node_or_empty {
    use edgeroom_proto::ids::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(node: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(node.as_ref().map_or("", |n| n.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        NodeId::new(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadToken {
    #[error("resume token is malformed")]
    Malformed,
    #[error("resume token was not issued by this deployment")]
    BadSignature,
}

impl TokenKey {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    pub fn random() -> Self {
        Self::new(Self::random_key().to_vec())
    }

    /// Fresh key material, for a key to be kept.
    pub fn random_key() -> [u8; 32] {
        rand::random()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("hmac accepts any key length"))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, BadToken> {
        if token.len() > 1024 {
            return Err(BadToken::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(BadToken::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| BadToken::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| BadToken::BadSignature)?;
        let claims = B64.decode(body).map_err(|_| BadToken::Malformed)?;
        serde_json::from_slice(&claims).map_err(|_| BadToken::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_refuses_forgeries() {
        let k = TokenKey::new(b"secret".to_vec());
        let c = Claims {
            session: ConnId::from_trusted("abc".into()),
            app: AppName::new("chat").unwrap(),
            node: Some(NodeId::new("n1").unwrap()),
            generation: 3,
        };
        let t = k.sign(&c);
        assert_eq!(k.verify(&t).unwrap(), c);
        assert_eq!(
            TokenKey::new(b"other".to_vec()).verify(&t),
            Err(BadToken::BadSignature)
        );
        assert_eq!(k.verify("nodot"), Err(BadToken::Malformed));
        let (body, sig) = t.split_once('.').unwrap();
        let forged = format!("{}x.{sig}", body);
        assert!(k.verify(&forged).is_err());
    }

    #[test]
    fn reads_the_one_letter_form_and_refuses_bad_names() {
        let k = TokenKey::new(b"secret".to_vec());
        let signed = |json: &str| {
            let body = B64.encode(json);
            let mut mac = k.mac();
            mac.update(body.as_bytes());
            format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
        };
        let c = k
            .verify(&signed(r#"{"s":"abc","a":"chat","n":""}"#))
            .unwrap();
        assert_eq!(c.session.as_str(), "abc");
        assert_eq!(c.node, None);
        assert_eq!(k.sign(&c), signed(r#"{"s":"abc","a":"chat","n":""}"#));
        assert_eq!(
            k.verify(&signed(r#"{"s":"abc","a":"no such app!","n":""}"#)),
            Err(BadToken::Malformed)
        );
    }
}
