//! TLS: `lanyard serve` terminates it itself when given a certificate and
//! key (`[tls]` in the config file, or `--tls-cert` and `--tls-key`).
//!
//! The server is meant to face the internet, and device tokens and audio
//! must not cross it in clear text. Two ways to get there:
//!
//! - **here**: rustls (the `ring` provider, TLS 1.2 and 1.3, ALPN
//!   `http/1.1`), with a PEM certificate chain and a PEM private key
//!   (PKCS#8, PKCS#1 or SEC1), for example from an ACME client. The files
//!   are read once at start; restart to load renewed ones;
//! - **a TLS proxy** in front of a server listening on loopback (nginx,
//!   Caddy, a cloud load balancer); docs/protocol.md ("TLS") has an nginx
//!   block that carries the WebSocket upgrade.
//!
//! The handshake is part of the connection's first header read: a client
//! that opens a socket and never finishes its handshake is closed after
//! `[connections] header_timeout_secs`, counted as `header_timeout`, like
//! one that never finishes its headers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

/// `[tls]`: the certificate chain and key `lanyard serve` terminates TLS with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert_path: PathBuf,
    /// PEM: the certificate's private key.
    pub key_path: PathBuf,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error(
        "[tls] cannot read the certificate chain {path}: {reason}; give a PEM file with the server's certificate first"
    )]
    Certs { path: PathBuf, reason: String },
    #[error("[tls] {path} holds no certificate; give a PEM file with `-----BEGIN CERTIFICATE-----` blocks")]
    NoCert { path: PathBuf },
    #[error("[tls] cannot read the private key {path}: {reason}; give a PEM file with one PKCS#8, PKCS#1 or SEC1 key")]
    Key { path: PathBuf, reason: String },
    #[error("[tls] the key {key} does not go with the certificate {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// Loads the files and builds the acceptor, failing with what to fix.
pub fn acceptor(tls: &TlsSection) -> Result<TlsAcceptor, TlsError> {
    let certs = certs(&tls.cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| TlsError::Key { path: tls.key_path.clone(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch {
            cert: tls.cert_path.clone(),
            key: tls.key_path.clone(),
            reason: e.to_string(),
        })?;
    // HTTP/1.1 only: the WebSocket upgrade is an HTTP/1.1 exchange.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |e: rustls::pki_types::pem::Error| TlsError::Certs { path: path.to_owned(), reason: e.to_string() };
    let certs = CertificateDer::pem_file_iter(path).map_err(bad)?.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: path.to_owned() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key, other) =
            (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("other.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&other, other_key.serialize_pem()).unwrap();
        assert!(acceptor(&TlsSection { cert_path: cert.clone(), key_path: key.clone() }).is_ok());

        let missing = dir.path().join("missing.pem");
        let e = acceptor(&TlsSection { cert_path: missing.clone(), key_path: key.clone() }).err().unwrap();
        assert!(matches!(e, TlsError::Certs { .. }), "{e}");
        // A key where the chain should be: no certificate in it.
        let e = acceptor(&TlsSection { cert_path: key.clone(), key_path: key.clone() }).err().unwrap();
        assert!(matches!(e, TlsError::NoCert { .. }) && e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
        let e = acceptor(&TlsSection { cert_path: cert.clone(), key_path: cert.clone() }).err().unwrap();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        let e = acceptor(&TlsSection { cert_path: cert, key_path: other }).err().unwrap();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    }
}
