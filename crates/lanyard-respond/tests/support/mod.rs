//! A real HTTP server on `127.0.0.1:0` for the responder tests.
//!
//! Nothing is mocked below HTTP: the responders under test open real TCP
//! connections to it. Every request is recorded (method, path, headers, raw
//! body) for the test to check, and a handler decides each answer, so a test
//! can script "500, 500, 200", hang, or refuse a bad signature.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Reply with this status and body.
    Send(u16, String),
    /// Never reply (until the test ends): the client's timeout must fire.
    Hang,
}

impl Answer {
    pub fn ok(json: serde_json::Value) -> Self {
        Answer::Send(200, json.to_string())
    }

    pub fn status(code: u16) -> Self {
        Answer::Send(code, format!("scripted {code}"))
    }
}

/// The handler: given a request and its 0-based index, decide the answer.
type Handler = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

/// A running server. It stops with the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    /// Answers request `i` with `script[i]`, repeating the last entry after the end.
    pub async fn scripted(script: Vec<Answer>) -> Self {
        assert!(!script.is_empty());
        Self::start(move |_, i| script[i.min(script.len() - 1)].clone()).await
    }

    /// Answers every request with `handler(request, index)`.
    pub async fn start(handler: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (log, handler) = (log.clone(), handler.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (log, handler) = (log.clone(), handler.clone());
                        async move { Ok::<_, Infallible>(answer(req, &log, &*handler).await) }
                    });
                    // Errors here are the client hanging up (e.g. on its timeout): expected.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        TestServer { addr, seen }
    }

    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(req: Request<Incoming>, log: &Mutex<Vec<Seen>>, handler: &Handler) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen =
        Seen { method: parts.method.to_string(), path: parts.uri.path().to_string(), headers: parts.headers, body };
    let index = {
        let mut log = log.lock().unwrap();
        log.push(seen.clone());
        log.len() - 1
    };
    match handler(&seen, index) {
        Answer::Send(status, body) => Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Full::new(Bytes::new()))
        }
    }
}

/// A `127.0.0.1` port with nothing listening: bound, then closed.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hook")
}
