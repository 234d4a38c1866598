//! The queue's TLS identity: a key made on first start, a self-signed certificate over it,
//! and the SPKI SHA-256 pin that clients configure instead of trusting a CA.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::QueueError;

const KEY_FILE: &str = "tls-key.pem";

/// The server's key and certificate.
pub struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("pin", &self.pin()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the key from `dir`, or makes one there (mode 0600) on first start. The
    /// certificate is issued anew at each start over the same key, so the pin stays.
    pub fn load_or_create(dir: &Path) -> Result<Self, QueueError> {
        let path = dir.join(KEY_FILE);
        let key = if path.exists() {
            let pem = std::fs::read_to_string(&path).map_err(|e| QueueError::io(&path, e))?;
            rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| QueueError::Tls(format!("{}: {e}", path.display())))?
        } else {
            let key = rcgen::KeyPair::generate().map_err(|e| QueueError::Tls(e.to_string()))?;
            write_private(&path, key.serialize_pem().as_bytes())?;
            key
        };
        Self::from_key(key)
    }

    /// A throwaway identity held only in memory (tests, demos).
    pub fn ephemeral() -> Result<Self, QueueError> {
        Self::from_key(rcgen::KeyPair::generate().map_err(|e| QueueError::Tls(e.to_string()))?)
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Self, QueueError> {
        let names = vec!["localhost".to_owned(), "countersign-queue".to_owned()];
        let params =
            rcgen::CertificateParams::new(names).map_err(|e| QueueError::Tls(e.to_string()))?;
        let certificate = params.self_signed(&key).map_err(|e| QueueError::Tls(e.to_string()))?;
        Ok(Self {
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            spki: key.public_key_der(),
        })
    }

    /// `base64(SHA-256(SubjectPublicKeyInfo DER))`, the form clients pin.
    pub fn pin(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&self.spki))
    }

    /// A rustls server configuration: TLS 1.3 only, this identity, the ring provider.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, QueueError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QueueError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| QueueError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The certificate, for tests that need to build a server of their own.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The key, for tests that need to build a server of their own.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| QueueError::io(path, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| QueueError::io(path, e))
}
