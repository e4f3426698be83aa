//! Client credentials: an app's JWT keys, the tokens they verify, and the room
//! capabilities a token grants (docs/auth.md).
//!
//! A token is a JWT signed with one of the app's keys (HS256, EdDSA or ES256). Its
//! `sub` is the member's verified identity, `exp` ends it, and `caps` lists what it
//! may do in which rooms. Without `caps` a token may do everything in its app.
//!
//! Pure: the caller passes the time. The JWT crate checks signatures only; expiry is
//! checked here against the node's clock, so tests drive it with a fake one.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use wildmatch::WildMatch;

use edgeroom_proto::app::{AuthConfig, TokenAlg};
use edgeroom_proto::ids::{RoomId, UserId};

/// Longest token accepted, in bytes: bigger is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 secret an app may set (RFC 7518 §3.2: at least the hash size).
const MIN_SECRET_BYTES: usize = 32;
/// How far in the future a token's `nbf` may lie and still count (issuer clock skew).
const NBF_LEEWAY_MS: u64 = 30_000;

/// What a token may allow in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Become a member.
    Join,
    /// Send events.
    Publish,
    /// Be told who joins and leaves, and their presence.
    Presence,
    /// Get what the room sent while away, on resume or recovery.
    History,
}

impl Capability {
    fn bit(self) -> u8 {
        match self {
            Capability::Join => 1,
            Capability::Publish => 2,
            Capability::Presence => 4,
            Capability::History => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Join => "join",
            Capability::Publish => "publish",
            Capability::Presence => "presence",
            Capability::History => "history",
        }
    }
}

/// One `caps` entry: rooms by name or `*` pattern, and what is allowed in them.
#[derive(Debug)]
struct Grant {
    rooms: Vec<WildMatch>,
    allow: u8,
}

/// Who a client is and what it may do: from a verified token, or anonymous.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The token's `sub`; `None` for an anonymous client.
    pub user: Option<UserId>,
    /// Unix time (ms) from which it no longer counts; `None`: never.
    pub expires_at_ms: Option<u64>,
    /// `None`: everything in the app.
    grants: Option<Arc<[Grant]>>,
}

impl Credential {
    /// A client without a token, where the app allows those: no identity, every capability.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            expires_at_ms: None,
            grants: None,
        }
    }

    pub fn allows(&self, room: &RoomId, cap: Capability) -> bool {
        let Some(grants) = &self.grants else {
            return true;
        };
        grants
            .iter()
            .any(|g| g.allow & cap.bit() != 0 && g.rooms.iter().any(|p| p.matches(room.as_str())))
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| now_ms >= t)
    }
}

/// Why a token was refused. The message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("this app needs a token")]
    Required,
    #[error("token is over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a JWT this app accepts: {0}")]
    Malformed(String),
    #[error("token is signed with a key this app does not have")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
}

/// The claims Edgeroom reads; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    caps: Option<Vec<CapClaim>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapClaim {
    rooms: Vec<String>,
    allow: Vec<String>,
}

fn grant(claim: CapClaim) -> Result<Grant, CredentialError> {
    let mut allow = 0;
    for name in &claim.allow {
        allow |= match name.as_str() {
            "join" => Capability::Join.bit(),
            "publish" => Capability::Publish.bit(),
            "presence" => Capability::Presence.bit(),
            "history" => Capability::History.bit(),
            "*" => 0xf,
            other => {
                return Err(CredentialError::BadClaims(format!(
                    "unknown capability {other:?} (join, publish, presence, history or *)"
                )));
            }
        };
    }
    Ok(Grant {
        rooms: claim.rooms.iter().map(|p| WildMatch::new(p)).collect(),
        allow,
    })
}

struct Key {
    kid: String,
    alg: TokenAlg,
    decoding: DecodingKey,
}

fn algorithm(alg: TokenAlg) -> Algorithm {
    match alg {
        TokenAlg::Hs256 => Algorithm::HS256,
        TokenAlg::EdDsa => Algorithm::EdDSA,
        TokenAlg::Es256 => Algorithm::ES256,
    }
}

/// An app's token keys, parsed once when its settings change.
pub struct Verifier {
    keys: Vec<Key>,
    anonymous: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| k.kid.as_str()).collect();
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            anonymous: true,
        }
    }
}

impl Verifier {
    /// Parse an app's keys; the error says which key is wrong and why.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let mut keys: Vec<Key> = Vec::with_capacity(config.keys.len());
        for k in &config.keys {
            if k.kid.is_empty() || keys.iter().any(|o| o.kid == k.kid) {
                return Err(format!("key ids must be unique and not empty: {:?}", k.kid));
            }
            let decoding = match k.alg {
                TokenAlg::Hs256 if k.key.len() < MIN_SECRET_BYTES => {
                    return Err(format!(
                        "key {}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes",
                        k.kid
                    ));
                }
                TokenAlg::Hs256 => DecodingKey::from_secret(k.key.as_bytes()),
                TokenAlg::EdDsa => DecodingKey::from_ed_pem(k.key.as_bytes()),
                TokenAlg::Es256 => DecodingKey::from_ec_pem(k.key.as_bytes()),
            }
            .map_err(|e| format!("key {}: {e}", k.kid))?;
            keys.push(Key {
                kid: k.kid.clone(),
                alg: k.alg,
                decoding,
            });
        }
        Ok(Self {
            keys,
            anonymous: config.allows_anonymous(),
        })
    }

    /// What a client without a token gets: `Err(Required)` where the app wants one.
    pub fn anonymous(&self) -> Result<Credential, CredentialError> {
        if self.anonymous {
            Ok(Credential::anonymous())
        } else {
            Err(CredentialError::Required)
        }
    }

    /// A client's token, or none.
    pub fn check(&self, token: Option<&str>, now_ms: u64) -> Result<Credential, CredentialError> {
        match token {
            Some(t) => self.verify(t, now_ms),
            None => self.anonymous(),
        }
    }

    /// Verify a token at `now_ms` (Unix ms).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Credential, CredentialError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(CredentialError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| CredentialError::Malformed(e.to_string()))?;
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| algorithm(k.alg) == header.alg)
            .filter(|k| header.kid.as_ref().is_none_or(|kid| *kid == k.kid))
            .collect();
        if candidates.is_empty() {
            return Err(CredentialError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        // Time is checked below, against the node's clock; audiences are not used.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut last = CredentialError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => return credential(data.claims, now_ms),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => CredentialError::BadSignature,
                        ErrorKind::Json(_) => CredentialError::BadClaims(e.to_string()),
                        _ => CredentialError::Malformed(e.to_string()),
                    };
                }
            }
        }
        Err(last)
    }
}

fn credential(claims: Claims, now_ms: u64) -> Result<Credential, CredentialError> {
    let user = UserId::new(&claims.sub).map_err(|e| CredentialError::BadClaims(e.to_string()))?;
    let expires_at_ms = claims.exp.map(|s| s.saturating_mul(1000));
    if expires_at_ms.is_some_and(|t| now_ms >= t) {
        return Err(CredentialError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|s| s.saturating_mul(1000) > now_ms.saturating_add(NBF_LEEWAY_MS))
    {
        return Err(CredentialError::NotYetValid);
    }
    let grants = match claims.caps {
        None => None,
        Some(caps) => Some(
            caps.into_iter()
                .map(grant)
                .collect::<Result<Arc<[_]>, _>>()?,
        ),
    };
    Ok(Credential {
        user: Some(user),
        expires_at_ms,
        grants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroom_proto::app::TokenKey;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a shared secret of thirty-two bytes+";
    const NOW_MS: u64 = 1_800_000_000_000;

    fn hs(kid: &str, secret: &str) -> TokenKey {
        TokenKey {
            kid: kid.into(),
            alg: TokenAlg::Hs256,
            key: secret.into(),
        }
    }

    fn verifier(keys: Vec<TokenKey>) -> Verifier {
        Verifier::new(&AuthConfig {
            anonymous: None,
            keys,
        })
        .unwrap()
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: serde_json::Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn hs_token(kid: Option<&str>, secret: &str, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        sign(Algorithm::HS256, kid, &key, claims)
    }

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    #[test]
    fn an_hs256_token_names_its_user_and_expiry() {
        let v = verifier(vec![hs("k1", SECRET)]);
        let t = hs_token(
            Some("k1"),
            SECRET,
            json!({"sub": "alice", "exp": NOW_MS / 1000 + 60}),
        );
        let c = v.verify(&t, NOW_MS).unwrap();
        assert_eq!(c.user.as_ref().map(UserId::as_str), Some("alice"));
        assert_eq!(c.expires_at_ms, Some(NOW_MS + 60_000));
        assert!(!c.expired(NOW_MS + 59_999));
        assert!(c.expired(NOW_MS + 60_000));
        assert!(
            c.allows(&room("any"), Capability::Publish),
            "no caps: everything"
        );
        assert_eq!(
            v.verify(&t, NOW_MS + 60_000).unwrap_err(),
            CredentialError::Expired
        );
    }

    #[test]
    fn forged_unknown_and_malformed_tokens_are_refused() {
        let v = verifier(vec![hs("k1", SECRET)]);
        let other = "another secret, also thirty-two bytes";
        let forged = hs_token(Some("k1"), other, json!({"sub": "alice"}));
        assert_eq!(
            v.verify(&forged, NOW_MS).unwrap_err(),
            CredentialError::BadSignature
        );
        let unknown = hs_token(Some("k9"), SECRET, json!({"sub": "alice"}));
        assert_eq!(
            v.verify(&unknown, NOW_MS).unwrap_err(),
            CredentialError::UnknownKey
        );
        assert!(matches!(
            v.verify("not.a.jwt", NOW_MS),
            Err(CredentialError::Malformed(_))
        ));
        assert!(matches!(
            v.verify("", NOW_MS),
            Err(CredentialError::Malformed(_))
        ));
        let no_sub = hs_token(None, SECRET, json!({"name": "alice"}));
        assert!(matches!(
            v.verify(&no_sub, NOW_MS),
            Err(CredentialError::BadClaims(_))
        ));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            v.verify(&long, NOW_MS).unwrap_err(),
            CredentialError::TooLarge
        );
        let future = hs_token(
            None,
            SECRET,
            json!({"sub": "a", "nbf": NOW_MS / 1000 + 3600}),
        );
        assert_eq!(
            v.verify(&future, NOW_MS).unwrap_err(),
            CredentialError::NotYetValid
        );
    }

    #[test]
    fn an_hmac_token_cannot_pass_as_an_asymmetric_one() {
        // The classic confusion: an attacker signs HS256 with the public key as secret.
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = pair.public_key_pem();
        let v = verifier(vec![TokenKey {
            kid: "ec".into(),
            alg: TokenAlg::Es256,
            key: public.clone(),
        }]);
        let t = hs_token(Some("ec"), &public, json!({"sub": "mallory"}));
        assert_eq!(
            v.verify(&t, NOW_MS).unwrap_err(),
            CredentialError::UnknownKey
        );
    }

    #[test]
    fn ed25519_and_es256_tokens_verify_with_public_keys() {
        for (rc, alg, jwt_alg) in [
            (&rcgen::PKCS_ED25519, TokenAlg::EdDsa, Algorithm::EdDSA),
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                TokenAlg::Es256,
                Algorithm::ES256,
            ),
        ] {
            let pair = rcgen::KeyPair::generate_for(rc).unwrap();
            let v = verifier(vec![TokenKey {
                kid: "pk".into(),
                alg,
                key: pair.public_key_pem(),
            }]);
            let private = pair.serialize_pem();
            let key = match alg {
                TokenAlg::EdDsa => EncodingKey::from_ed_pem(private.as_bytes()),
                _ => EncodingKey::from_ec_pem(private.as_bytes()),
            }
            .unwrap();
            let t = sign(jwt_alg, None, &key, json!({"sub": "bob"}));
            let c = v.verify(&t, NOW_MS).unwrap();
            assert_eq!(c.user.unwrap().as_str(), "bob", "{alg:?}");
            let mut tampered = t.clone();
            tampered.replace_range(t.len() - 4.., "AAAA");
            assert!(v.verify(&tampered, NOW_MS).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn during_a_rotation_both_keys_verify() {
        let new_secret = "the new secret, thirty-two bytes long";
        let v = verifier(vec![hs("old", SECRET), hs("new", new_secret)]);
        for (kid, secret) in [("old", SECRET), ("new", new_secret)] {
            let with_kid = hs_token(Some(kid), secret, json!({"sub": kid}));
            assert!(v.verify(&with_kid, NOW_MS).is_ok(), "{kid}");
            let without = hs_token(None, secret, json!({"sub": kid}));
            assert!(v.verify(&without, NOW_MS).is_ok(), "{kid} without kid");
        }
        let after = verifier(vec![hs("new", new_secret)]);
        let old = hs_token(Some("old"), SECRET, json!({"sub": "old"}));
        assert!(after.verify(&old, NOW_MS).is_err());
    }

    #[test]
    fn caps_grant_capabilities_by_room_name_or_pattern() {
        let v = verifier(vec![hs("k", SECRET)]);
        let t = hs_token(
            None,
            SECRET,
            json!({"sub": "u", "caps": [
                {"rooms": ["/lobby", "game:*"], "allow": ["join", "presence"]},
                {"rooms": ["game:42"], "allow": ["publish"]},
                {"rooms": ["*"], "allow": ["history"]},
            ]}),
        );
        let c = v.verify(&t, NOW_MS).unwrap();
        assert!(c.allows(&room("/lobby"), Capability::Join));
        assert!(!c.allows(&room("/lobby"), Capability::Publish));
        assert!(c.allows(&room("game:7"), Capability::Presence));
        assert!(!c.allows(&room("game:7"), Capability::Publish));
        assert!(c.allows(&room("game:42"), Capability::Publish));
        assert!(!c.allows(&room("/other"), Capability::Join));
        assert!(c.allows(&room("/other"), Capability::History));
        let bad = hs_token(
            None,
            SECRET,
            json!({"sub": "u", "caps": [{"rooms": ["*"], "allow": ["admin"]}]}),
        );
        assert!(matches!(
            v.verify(&bad, NOW_MS),
            Err(CredentialError::BadClaims(_))
        ));
    }

    #[test]
    fn anonymous_clients_are_allowed_until_a_key_is_set_unless_the_app_says() {
        assert!(verifier(vec![]).anonymous().is_ok());
        assert_eq!(
            verifier(vec![hs("k", SECRET)]).anonymous().unwrap_err(),
            CredentialError::Required
        );
        let open = Verifier::new(&AuthConfig {
            anonymous: Some(true),
            keys: vec![hs("k", SECRET)],
        })
        .unwrap();
        assert!(open.check(None, NOW_MS).is_ok());
        let closed = Verifier::new(&AuthConfig {
            anonymous: Some(false),
            keys: vec![],
        })
        .unwrap();
        assert!(closed.check(None, NOW_MS).is_err());
    }

    #[test]
    fn bad_keys_are_refused_when_configured() {
        let short = Verifier::new(&AuthConfig {
            anonymous: None,
            keys: vec![hs("k", "short")],
        });
        assert!(short.unwrap_err().contains("32 bytes"));
        let pem = Verifier::new(&AuthConfig {
            anonymous: None,
            keys: vec![TokenKey {
                kid: "e".into(),
                alg: TokenAlg::EdDsa,
                key: "not a pem".into(),
            }],
        });
        assert!(pem.is_err());
        let twice = Verifier::new(&AuthConfig {
            anonymous: None,
            keys: vec![hs("k", SECRET), hs("k", SECRET)],
        });
        assert!(twice.is_err());
    }
}
