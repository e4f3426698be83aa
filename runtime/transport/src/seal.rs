//! Secrets at rest: sealed with a key from a file only the cluster's nodes hold
//! (ChaCha20-Poly1305, by ring), so a copy of a node's data directory — its Raft log,
//! its store — does not give away the secret that signs resume tokens.
//!
//! A sealed value is text, `sealed:v1:` and the hex of a random nonce, the ciphertext
//! and its tag; the purpose it was sealed for is bound in as associated data, so a
//! value cannot be moved to another use. Every node of a cluster has the same key
//! file (`edgeroom cluster init` writes one), like the CA certificate.

use std::path::Path;

use anyhow::Context;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";
const NONCE: usize = 12;

/// The key secrets are sealed with.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// Whether `value` was sealed (else it is stored as it is).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

impl Sealer {
    /// A key of 32 bytes, written as 64 hex digits (whitespace around is ignored).
    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        let bytes = hex::decode(text.trim()).context("a secrets key is 64 hex digits")?;
        anyhow::ensure!(
            bytes.len() == 32,
            "a secrets key is 32 bytes (64 hex digits)"
        );
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| anyhow::anyhow!("unusable secrets key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secrets key {}", path.display()))?;
        Self::from_hex(&text).with_context(|| format!("in {}", path.display()))
    }

    /// A fresh key, as its file holds it.
    pub fn generate_hex() -> String {
        let key: [u8; 32] = rand::random();
        hex::encode(key)
    }

    /// `secret` sealed for `purpose`.
    pub fn seal(&self, purpose: &str, secret: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut data = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut data,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", hex::encode(&out)))
    }

    /// The secret in `sealed`, if this key sealed it for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let hex = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow::anyhow!("not a sealed value"))?;
        let bytes = hex::decode(hex).context("a sealed value is hex")?;
        anyhow::ensure!(bytes.len() > NONCE, "a sealed value is too short");
        let (nonce, data) = bytes.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().context("nonce")?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut data,
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the value was sealed with another secrets key (or for another use)"
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// A stored secret as the node uses it: opened with `sealer` if it is sealed, as it is
/// otherwise; a sealed value without a key is an error that says so.
pub fn reveal(sealer: Option<&Sealer>, purpose: &str, stored: &str) -> anyhow::Result<Vec<u8>> {
    match (is_sealed(stored), sealer) {
        (false, _) => Ok(stored.as_bytes().to_vec()),
        (true, Some(s)) => s.open(purpose, stored),
        (true, None) => anyhow::bail!(
            "the {purpose} is sealed, and this node has no secrets_key_file to open it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_purpose() {
        let k = Sealer::from_hex(&Sealer::generate_hex()).unwrap();
        let sealed = k.seal("resume secret", b"s3cret").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("s3cret"));
        assert_ne!(
            sealed,
            k.seal("resume secret", b"s3cret").unwrap(),
            "fresh nonces"
        );
        assert_eq!(k.open("resume secret", &sealed).unwrap(), b"s3cret");
        assert!(
            k.open("app secret", &sealed).is_err(),
            "bound to its purpose"
        );
        let other = Sealer::from_hex(&Sealer::generate_hex()).unwrap();
        assert!(other.open("resume secret", &sealed).is_err());
        // The last hex digit changed (to another one: a '0' replaced by '0' would be
        // no tampering at all).
        let mut tampered = sealed.clone();
        let last = tampered.pop();
        tampered.push(if last == Some('0') { '1' } else { '0' });
        assert!(k.open("resume secret", &tampered).is_err());
        assert_eq!(reveal(None, "x", "plain").unwrap(), b"plain");
        assert!(reveal(None, "resume secret", &sealed).is_err());
        assert!(Sealer::from_hex("abcd").is_err());
    }
}
