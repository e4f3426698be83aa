//! The cluster's certificates: one cluster CA, one certificate per node, mutual TLS.
//!
//! `edgeroom cluster init` makes the CA and the first nodes' certificates; `cluster cert`
//! issues one more from the saved CA. A node certificate names its node in a DNS SAN
//! (`<node>.node.edgeroom`): a dialler checks that the peer it reached is the node it
//! meant, and an acceptor learns who called from the certificate, never from a claim.
//! Only certificates the cluster CA signed get through either handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use edgeroom_proto::ids::NodeId;

/// ALPN of the peer protocol; a bump refuses peers that speak another version.
const ALPN: &[u8] = b"edgeroom-peer/1";
const SAN_SUFFIX: &str = ".node.edgeroom";

/// The DNS name a node's certificate carries.
pub fn node_dns_name(node: &NodeId) -> String {
    format!("{}{SAN_SUFFIX}", node.as_str().to_ascii_lowercase())
}

/// The cluster CA: signs node certificates. Its key stays with whoever runs `cluster init`.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl ClusterCa {
    pub fn generate(cluster: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("edgeroom cluster {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A node certificate and key, both PEM.
    pub fn issue(&self, node: &NodeId) -> anyhow::Result<(String, String)> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let mut params = CertificateParams::new(vec![node_dns_name(node)])?;
        params
            .distinguished_name
            .push(DnType::CommonName, node.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node both accepts and dials.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_private(&dir.join("ca.key"), &self.key.serialize_pem())?;
        std::fs::write(dir.join("ca.crt"), &self.cert_pem)?;
        Ok(())
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        Ok(Self {
            cert_pem: read("ca.crt")?,
            key: KeyPair::from_pem(&read("ca.key")?)?,
        })
    }

    /// Issue `node`'s certificate into `dir` as `<node>.crt` / `<node>.key`.
    pub fn issue_into(&self, dir: &Path, node: &NodeId) -> anyhow::Result<PathBuf> {
        let (cert, key) = self.issue(node)?;
        let cert_path = dir.join(format!("{node}.crt"));
        std::fs::write(&cert_path, cert)?;
        write_private(&dir.join(format!("{node}.key")), &key)?;
        Ok(cert_path)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Write a file only its owner may read (keys).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// What a node needs for mutual TLS: the CA it trusts, its own certificate and key.
#[derive(Clone)]
pub struct NodeTls {
    pub node: NodeId,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
}

impl NodeTls {
    pub fn from_pem(
        node: NodeId,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            node,
            ca: one_cert(ca_pem).context("cluster CA certificate")?,
            cert: one_cert(cert_pem).context("node certificate")?,
            key: Arc::new(pkcs8_key(key_pem).context("node key")?),
        })
    }

    /// `ca.crt`, `<node>.crt` and `<node>.key` from a directory `cluster init` wrote.
    pub fn load(dir: &Path, node: NodeId) -> anyhow::Result<Self> {
        let read = |name: String| {
            std::fs::read_to_string(dir.join(&name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let (ca, cert, key) = (
            read("ca.crt".into())?,
            read(format!("{node}.crt"))?,
            read(format!("{node}.key"))?,
        );
        Self::from_pem(node, &ca, &cert, &key)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// Accepting side: clients must present a certificate the cluster CA signed.
    pub fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// The endpoint's stateless-reset and connection-id keys, the same across the node's
    /// restarts. A restarted node then recognises the connection ids its previous life
    /// gave out and answers a peer still sending on one with a reset the peer accepts:
    /// the peer redials at once instead of sending into the dead connection until its
    /// idle timeout. Derived from the node's private key, so only the node has them.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        use ring::hmac;
        let secret = hmac::Key::new(hmac::HMAC_SHA256, self.key.secret_pkcs8_der());
        let derive = |label: &[u8]| hmac::sign(&secret, label);
        let reset = hmac::Key::new(
            hmac::HMAC_SHA256,
            derive(b"edgeroom stateless reset").as_ref(),
        );
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        let cid = derive(b"edgeroom connection ids");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }

    /// Dialling side: the server must be a node of this cluster; we show our certificate.
    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}

/// The server name to dial `node` by: its certificate must carry it.
pub fn server_name(node: &NodeId) -> anyhow::Result<ServerName<'static>> {
    Ok(ServerName::try_from(node_dns_name(node))?)
}

/// The node a verified peer certificate names.
pub fn node_of(cert: &CertificateDer<'_>) -> anyhow::Result<NodeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| anyhow::anyhow!("unreadable peer certificate: {e}"))?;
    let Some(san) = parsed.subject_alternative_name()? else {
        bail!("peer certificate has no subject alternative name");
    };
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name
            && let Some(node) = dns.strip_suffix(SAN_SUFFIX)
        {
            return Ok(NodeId::new(node)?);
        }
    }
    bail!("peer certificate names no node")
}

fn one_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

fn pkcs8_key(pem: &str) -> anyhow::Result<PrivatePkcs8KeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    Ok(PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificate_names_its_node() {
        let ca = ClusterCa::generate("test").unwrap();
        let node = NodeId::new("eu-west-1").unwrap();
        let (cert, key) = ca.issue(&node).unwrap();
        let tls = NodeTls::from_pem(node.clone(), ca.cert_pem(), &cert, &key).unwrap();
        assert_eq!(node_of(&tls.cert).unwrap(), node);
        tls.server_config().unwrap();
        tls.client_config().unwrap();
    }

    #[test]
    fn saved_ca_issues_more_certificates() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::generate("test")
            .unwrap()
            .save(dir.path())
            .unwrap();
        let ca = ClusterCa::load(dir.path()).unwrap();
        let node = NodeId::new("n4").unwrap();
        ca.issue_into(dir.path(), &node).unwrap();
        let tls = NodeTls::load(dir.path(), node.clone()).unwrap();
        assert_eq!(node_of(&tls.cert).unwrap(), node);
    }

    #[test]
    fn garbage_pem_is_an_error() {
        let node = NodeId::new("n1").unwrap();
        assert!(NodeTls::from_pem(node, "not pem", "x", "y").is_err());
    }
}
