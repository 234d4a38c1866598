//! A server-certificate verifier that accepts exactly the servers whose public key is pinned.
//!
//! The pin is `SHA-256(SubjectPublicKeyInfo DER)` of the end-entity certificate, at most two
//! of them (the current key and the next, for rotation), compared in constant time. The
//! certificate's names, issuer and validity dates prove nothing here and are not checked; the
//! handshake signature is still checked, by rustls's own functions, so a server that merely
//! replays the pinned certificate without its key fails the handshake.

use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a pin list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("pin-sha256: give one or two pins")]
    Count,
    #[error("pin-sha256: {0:?} is not the base64 of a 32-byte SHA-256")]
    Shape(String),
}

/// One or two SPKI SHA-256 pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins(Vec<[u8; 32]>);

impl Pins {
    /// Parses pins written as base64 (the form the queue prints after `pin-sha256:`).
    pub fn parse(texts: &[&str]) -> Result<Self, PinError> {
        if texts.is_empty() || texts.len() > 2 {
            return Err(PinError::Count);
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let pins = texts
            .iter()
            .map(|text| {
                let bytes =
                    engine.decode(text.trim()).map_err(|_| PinError::Shape((*text).to_owned()))?;
                <[u8; 32]>::try_from(bytes).map_err(|_| PinError::Shape((*text).to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(pins))
    }

    fn matches(&self, spki_hash: &[u8; 32]) -> bool {
        // Every pin is compared, so the time taken does not tell which one matched.
        self.0.iter().fold(subtle::Choice::from(0), |any, pin| any | pin.ct_eq(spki_hash)).into()
    }
}

/// The verifier handed to rustls.
#[derive(Debug)]
pub struct PinnedVerifier {
    pins: Pins,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pins: Pins, provider: Arc<CryptoProvider>) -> Self {
        Self { pins, provider }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = certificate.subject_public_key_info();
        let hash: [u8; 32] = Sha256::digest(spki.as_ref()).into();
        if self.pins.matches(&hash) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!("the queue's public key matches no configured pin; connection refused");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration: TLS 1.3 only, the pinned verifier, the ring provider.
pub fn client_config(pins: Pins) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedVerifier::new(pins, provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
