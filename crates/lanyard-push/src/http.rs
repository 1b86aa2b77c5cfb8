//! The HTTPS client both providers share: hyper 1 over rustls, with the
//! public web roots plus any extra roots a test names, and one deadline per
//! request.
//!
//! Transport failures (no connection, TLS failure, a reset stream, the
//! deadline) are all temporary from the caller's point of view and become
//! [`PushError::Retry`] in the providers; [`TransportError`] keeps the cause
//! for the message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ConfigError;

/// The largest response body read. APNs and FCM answer with a few hundred
/// bytes; a larger body means something else is answering, and reading it
/// all would only cost memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Which HTTP versions a client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    /// APNs speaks only HTTP/2.
    Http2Only,
    /// Google's endpoints take either; HTTP/2 is preferred.
    Http1And2,
}

/// A status, headers and body, read in full.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    #[error("cannot read the response body: {0}")]
    Body(String),
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// Builds a client that trusts the public web roots and the PEM
    /// certificates in `extra_root_certs`.
    pub fn new(versions: Versions, extra_root_certs: &[PathBuf], timeout: Duration) -> Result<Self, ConfigError> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        for path in extra_root_certs {
            let pem = std::fs::read(path).map_err(|source| ConfigError::Unreadable {
                what: "a root certificate",
                path: path.clone(),
                hint: "check the path in extra_root_certs (leave it empty for the real services)",
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::BadRootCert { path: path.clone(), reason: e.to_string() })?;
            if certs.is_empty() {
                return Err(ConfigError::BadRootCert { path: path.clone(), reason: "it holds no certificate".into() });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ConfigError::BadRootCert { path: path.clone(), reason: e.to_string() })?;
            }
        }
        // The provider is named rather than taken from the process default,
        // so that another crate enabling a second rustls backend cannot make
        // this panic.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Notifications are small writes that must leave at once: with Nagle's
        // algorithm on, each waits for the peer's delayed ACK (about 40 ms).
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let connector = match versions {
            Versions::Http2Only => builder.enable_http2().wrap_connector(http),
            Versions::Http1And2 => builder.enable_http1().enable_http2().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(versions == Versions::Http2Only)
            // APNs asks providers to keep connections open rather than
            // reconnect per notification; pings find a dead one before a
            // request is lost to it.
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .pool_idle_timeout(Duration::from_secs(600))
            .build(connector);
        Ok(Self { client, timeout })
    }

    /// Sends `req` and reads the whole response, within the deadline.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response, TransportError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| TransportError::Request(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| TransportError::Body(e.to_string()))?
                .to_bytes();
            Ok(Response { status: parts.status, headers: parts.headers, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        }
    }
}

/// An error with its causes, `a: b: c`; hyper's top-level messages alone
/// ("client error (Connect)") do not say what went wrong.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Reads a `Retry-After` header, in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
