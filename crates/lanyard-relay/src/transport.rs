//! How the relay reaches the server: only over TLS, unless the server is on
//! this machine or the user said `insecure`.
//!
//! The relay sends the device's token with every request and the user's
//! voice on the stream. Over `http://` or `ws://` both cross every network
//! between phone and server in clear text, so [`check_server`] refuses a
//! plain URL whose host is not loopback (`127.0.0.0/8`, `::1`,
//! `localhost`) unless [`crate::HostConfig::insecure`] is set, and says
//! why. TLS uses rustls with the Mozilla roots (`webpki-roots`), plus any
//! CA the config names ([`crate::HostConfig::extra_root_certs`]): a private
//! CA, or the self-signed one a test makes.

use std::path::PathBuf;
use std::sync::Arc;

use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_tungstenite::Connector;

use thiserror::Error;

/// Why the relay will not reach a server.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("server URL {0:?} is not http(s)://host[:port]")]
    BadServerUrl(String),
    #[error(
        "refusing to send the device token and audio in clear text to {0}: use https:// (a server with [tls], or behind a TLS proxy), or pass --insecure (`insecure` in the config) on a network you trust"
    )]
    Insecure(String),
    #[error("cannot trust the certificates in {path}: {reason}; give a PEM file with the CA's certificate")]
    RootCert { path: PathBuf, reason: String },
}

/// Refuses a plain-text server URL whose host is not this machine, unless
/// `insecure`; and any URL that is not `http(s)://host[:port]`.
pub fn check_server(server: &str, insecure: bool) -> Result<(), TransportError> {
    let url = Url::parse(server).map_err(|_| TransportError::BadServerUrl(server.to_string()))?;
    let plain = match url.scheme() {
        "https" => false,
        "http" => true,
        _ => return Err(TransportError::BadServerUrl(server.to_string())),
    };
    let host =
        url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| TransportError::BadServerUrl(server.to_string()))?;
    // An IPv6 host comes bracketed.
    let loopback = match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if plain && !loopback && !insecure {
        return Err(TransportError::Insecure(server.to_string()));
    }
    Ok(())
}

/// The TLS settings of the stream and of HTTP requests, made once.
#[derive(Clone)]
pub struct Transport {
    /// `None`: tokio-tungstenite's own (the Mozilla roots).
    pub(crate) ws: Option<Connector>,
    pub(crate) http: reqwest::Client,
}

impl Transport {
    /// Trusts the Mozilla roots and every certificate in `extra_root_certs`
    /// (PEM files).
    pub fn new(extra_root_certs: &[PathBuf]) -> Result<Self, TransportError> {
        if extra_root_certs.is_empty() {
            return Ok(Self { ws: None, http: reqwest::Client::new() });
        }
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let mut http = reqwest::Client::builder();
        for path in extra_root_certs {
            let bad = |e: String| TransportError::RootCert { path: path.clone(), reason: e };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("it holds no `-----BEGIN CERTIFICATE-----` block".into()));
            }
            for cert in certs {
                http =
                    http.add_root_certificate(reqwest::Certificate::from_der(&cert).map_err(|e| bad(e.to_string()))?);
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = http
            .build()
            .map_err(|e| TransportError::RootCert { path: extra_root_certs[0].clone(), reason: e.to_string() })?;
        Ok(Self { ws: Some(Connector::Rustls(Arc::new(cfg))), http })
    }

    /// The HTTP client with these settings, for the shell's uploads.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_refused_off_this_machine_unless_insecure() {
        for ok in [
            "https://lanyard.example.com",
            "https://10.0.0.5:8443/",
            "http://127.0.0.1:8080",
            "http://127.9.9.9:1",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://[::1]:8080",
        ] {
            assert!(check_server(ok, false).is_ok(), "{ok}");
        }
        for plain in [
            "http://lanyard.example.com",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]:80",
            "http://localhost.evil.com",
        ] {
            let e = check_server(plain, false).unwrap_err();
            assert!(matches!(e, TransportError::Insecure(_)), "{plain}: {e}");
            assert!(e.to_string().contains("--insecure") && e.to_string().contains("clear text"), "{e}");
            assert!(check_server(plain, true).is_ok(), "{plain} with insecure");
        }
        for bad in ["ftp://x", "lanyard.example.com", "http://", "ws://127.0.0.1:8080"] {
            assert!(matches!(check_server(bad, true), Err(TransportError::BadServerUrl(_))), "{bad}");
        }
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Transport::new(&[empty]).err().unwrap();
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
        assert!(Transport::new(&[dir.path().join("missing.pem")]).is_err());
        assert!(Transport::new(&[]).unwrap().ws.is_none());
    }
}
