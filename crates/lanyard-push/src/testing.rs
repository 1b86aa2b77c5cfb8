//! Test peers that speak APNs and FCM on loopback and check every request
//! the way the real services would (feature `test-peers`).
//!
//! - [`ApnsPeer`]: HTTP/2 over TLS, verifies the ES256 provider token with
//!   the key's public half, every header, and the payload; answers with a
//!   script; records every request.
//! - [`FcmPeer`]: an OAuth token endpoint that verifies the RS256 assertion
//!   and issues access tokens, and the HTTP v1 `messages:send` endpoint that
//!   checks the bearer token, the project and the message's shape; answers
//!   with a script; records every request.
//! - [`TestApnsKey`] and [`TestServiceAccount`]: fresh credentials, written
//!   where a provider's configuration can name them.
//!
//! Each peer listens on `127.0.0.1:0` with its own self-signed certificate
//! (rcgen); [`ApnsPeer::write_cert`] and [`FcmPeer::write_cert`] write it
//! where the provider's `extra_root_certs` can trust it. The peers read time
//! from a [`Clock`], so a test that moves a [`crate::ManualClock`] moves the
//! providers and the peers together.
//!
//! A request the real service would refuse is answered as it would answer
//! (`403 InvalidProviderToken`, `400 MissingTopic`, `413 PayloadTooLarge`,
//! FCM's `401 UNAUTHENTICATED`...); checks that the real service does not
//! make but Lanyard promises (a collapse id on every notification, an alert
//! in every payload) are answered `400` with a reason starting `Peer:`.
//! Every record says what was answered, so a test can assert that nothing
//! was refused.

mod apns;
mod fcm;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use apns::{ApnsPeer, ApnsPeerConfig, ApnsScript, PeerReply, ReceivedPush};
pub use fcm::{FcmPeer, FcmPeerConfig, FcmReply, FcmScript, ReceivedMessage, TokenRequest};

use crate::Clock;

/// An APNs signing key made for a test, as Apple would hand it out.
#[derive(Debug, Clone)]
pub struct TestApnsKey {
    /// The `.p8` contents: EC P-256, PKCS#8 PEM.
    pub private_key_pem: String,
    /// The public half, SPKI PEM, for the peer to verify with.
    pub public_key_pem: String,
    pub key_id: String,
    pub team_id: String,
}

impl TestApnsKey {
    /// A fresh P-256 key with key id `KEYID12345` and team id `TEAMID6789`.
    pub fn generate() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ring generates P-256 keys");
        Self {
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
            key_id: "KEYID12345".into(),
            team_id: "TEAMID6789".into(),
        }
    }

    /// Writes the `.p8` file into `dir`, named as Apple names it.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_file(dir, &format!("AuthKey_{}.p8", self.key_id), &self.private_key_pem)
    }
}

/// A Google service account made for a test.
#[derive(Debug, Clone)]
pub struct TestServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key_id: String,
    /// RSA 2048, PKCS#8 PEM, as in Google's JSON files.
    pub private_key_pem: String,
    /// The public half, SPKI PEM, for the peer to verify with.
    pub public_key_pem: String,
}

impl TestServiceAccount {
    /// An account of project `project_id`. The RSA key is made once per
    /// process (2048-bit generation is slow) and shared by every account.
    pub fn generate(project_id: &str) -> Self {
        let (private_key_pem, public_key_pem) = test_rsa_key().clone();
        Self {
            project_id: project_id.into(),
            client_email: format!("lanyard-push@{project_id}.iam.gserviceaccount.com"),
            private_key_id: "0123456789abcdef0123456789abcdef01234567".into(),
            private_key_pem,
            public_key_pem,
        }
    }

    /// The service-account JSON, as the Firebase console writes it, with
    /// `token_uri` as given.
    pub fn json(&self, token_uri: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "123456789012345678901",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        })
    }

    /// Writes the JSON file into `dir` and returns its path.
    pub fn write(&self, dir: &Path, token_uri: &str) -> PathBuf {
        let text = serde_json::to_string_pretty(&self.json(token_uri)).expect("JSON serializes");
        write_file(dir, &format!("{}-service-account.json", self.project_id), &text)
    }
}

/// The process's test RSA key: (private PKCS#8 PEM, public SPKI PEM).
fn test_rsa_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 encoding").to_string();
        let public = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("SPKI encoding");
        (private, public)
    })
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A self-signed certificate for `127.0.0.1` and `localhost`.
struct Identity {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Identity {
    fn generate() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("rcgen makes a certificate");
        Self { cert_pem: ck.cert.pem(), cert_der: ck.cert.der().clone(), key_der: ck.key_pair.serialize_der() }
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .expect("rcgen's key matches its certificate");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(cfg))
    }
}

/// What a peer does with one request, its body read in full. Handling is
/// synchronous: checking a request is computation only.
trait Endpoint: Send + Sync + 'static {
    fn handle(&self, req: Request<Bytes>) -> Response<Full<Bytes>>;
}

/// A listening peer: its address, its certificate, and the task that
/// serves it (aborted on drop, and with it every connection).
struct Server {
    addr: SocketAddr,
    cert_pem: String,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Binds `127.0.0.1:0` and serves `endpoint` over TLS, offering `alpn`;
    /// `http2_only` refuses HTTP/1 as APNs does.
    async fn start(endpoint: Arc<dyn Endpoint>, alpn: &[&[u8]], http2_only: bool) -> std::io::Result<Self> {
        let identity = Identity::generate();
        let acceptor = identity.acceptor(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // Like APNs, answer without waiting on Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let endpoint = endpoint.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let endpoint = endpoint.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok::<_, Infallible>(endpoint.handle(Request::from_parts(parts, bytes)))
                        }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if http2_only {
                        builder = builder.http2_only();
                    }
                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        Ok(Self { addr, cert_pem: identity.cert_pem, task })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        // A `%` needs two hex digits after it; otherwise it stands for itself.
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(hi), Some(lo)) => {
                            out.push((hi * 16 + lo) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The peer's clock when none is given: the system's.
fn system_clock() -> Arc<dyn Clock> {
    Arc::new(crate::SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let f = parse_form(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b-c_d&x=1+2&bad=%zz&end=%4",
        );
        assert_eq!(f[0], ("grant_type".into(), "urn:ietf:params:oauth:grant-type:jwt-bearer".into()));
        assert_eq!(f[1], ("assertion".into(), "a.b-c_d".into()));
        assert_eq!(f[2], ("x".into(), "1 2".into()));
        assert_eq!(f[3], ("bad".into(), "%zz".into()));
        assert_eq!(f[4], ("end".into(), "%4".into()));
    }
}
