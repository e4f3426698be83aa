//! App settings kept at rest with their shared secrets sealed (an HS256 token key is
//! a secret; public keys are not): in the control plane's log and in the store, the
//! key is `sealed:v1:...` when the node has a secrets key (see
//! `edgeroom_transport::seal`); in memory, where tokens are checked, it is open.
//! Each secret is bound to its app and key id, so it cannot be moved to another.

use edgeroom_proto::app::{AppConfig, TokenAlg};
use edgeroom_proto::ids::AppName;
use edgeroom_transport::Sealer;
use edgeroom_transport::seal::{is_sealed, reveal};

fn purpose(app: &AppName, kid: &str) -> String {
    format!("app {app} token key {kid}")
}

/// `config` as it is kept: shared secrets sealed (with a sealer; as they are without).
pub fn seal_config(
    app: &AppName,
    config: &AppConfig,
    sealer: Option<&Sealer>,
) -> anyhow::Result<AppConfig> {
    let mut out = config.clone();
    let Some(sealer) = sealer else {
        return Ok(out);
    };
    for key in &mut out.auth.keys {
        if key.alg == TokenAlg::Hs256 && !is_sealed(&key.key) {
            key.key = sealer.seal(&purpose(app, &key.kid), key.key.as_bytes())?;
        }
    }
    Ok(out)
}

/// `config` as kept, with its shared secrets opened for use.
pub fn open_config(
    app: &AppName,
    config: &AppConfig,
    sealer: Option<&Sealer>,
) -> anyhow::Result<AppConfig> {
    let mut out = config.clone();
    for key in &mut out.auth.keys {
        if is_sealed(&key.key) {
            let secret = reveal(sealer, &purpose(app, &key.kid), &key.key)?;
            key.key = String::from_utf8(secret)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeroom_proto::app::TokenKey;

    #[test]
    fn shared_secrets_are_sealed_and_public_keys_are_not() {
        let sealer = Sealer::from_hex(&Sealer::generate_hex()).unwrap();
        let app = AppName::new("chat").unwrap();
        let mut config = AppConfig::default();
        config.auth.keys = vec![
            TokenKey {
                kid: "k1".into(),
                alg: TokenAlg::Hs256,
                key: "a shared secret of thirty-two bytes".into(),
            },
            TokenKey {
                kid: "k2".into(),
                alg: TokenAlg::EdDsa,
                key: "-----BEGIN PUBLIC KEY-----".into(),
            },
        ];
        let kept = seal_config(&app, &config, Some(&sealer)).unwrap();
        assert!(is_sealed(&kept.auth.keys[0].key));
        assert_eq!(kept.auth.keys[1], config.auth.keys[1]);
        assert_eq!(
            seal_config(&app, &kept, Some(&sealer)).unwrap(),
            kept,
            "sealed once"
        );
        assert_eq!(open_config(&app, &kept, Some(&sealer)).unwrap(), config);
        let other = AppName::new("other").unwrap();
        assert!(
            open_config(&other, &kept, Some(&sealer)).is_err(),
            "bound to its app"
        );
        assert!(open_config(&app, &kept, None).is_err());
        assert_eq!(seal_config(&app, &config, None).unwrap(), config);
    }
}
