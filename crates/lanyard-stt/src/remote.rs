//! [`RemoteStt`]: speech-to-text by an OpenAI-compatible HTTP endpoint.
//!
//! # The protocol
//!
//! One `POST {url}/audio/transcriptions` per utterance, `multipart/form-data`
//! with the fields OpenAI documents and every compatible server accepts:
//!
//! - `file`: the utterance as a 16 kHz mono PCM16 WAV (`utterance.wav`);
//! - `model`: [`RemoteConfig::model`];
//! - `response_format`: `json`, so the answer is `{"text": "..."}`;
//! - `language`: only when [`RemoteConfig::language`] is set.
//!
//! with `Authorization: Bearer {api_key}` when a key is configured. OpenAI,
//! Groq, faster-whisper servers (speaches, faster-whisper-server) and another
//! Lanyard server (whose key is one of its device tokens) all speak this.
//! WAV rather than a compressed format because every one of them takes it,
//! and an utterance of a few seconds is a few hundred KiB.
//!
//! # Failures, and which are retried
//!
//! | what happened                         | retried? | error                          |
//! |---------------------------------------|----------|--------------------------------|
//! | no connection, or it broke mid-way    | yes      | [`SttError::RemoteConnect`]     |
//! | HTTP 5xx or 429                       | yes      | [`SttError::RemoteUnavailable`] |
//! | HTTP 401 or 403                       | no       | [`SttError::RemoteAuth`]        |
//! | any other 4xx                         | no       | [`SttError::RemoteRejected`]    |
//! | no answer within the timeout          | no       | [`SttError::RemoteTimeout`]     |
//! | a 2xx that is not `{"text": ...}`     | no       | [`SttError::RemoteResponse`]    |
//!
//! Retries are bounded by [`RemoteConfig::max_attempts`], with a doubling
//! backoff from [`RemoteConfig::backoff_base`] (at most [`MAX_RETRY_AFTER`]), or the server's
//! `Retry-After` when it sends one (at most [`MAX_RETRY_AFTER`]). A timeout
//! is not retried: the far side may still be transcribing, and a second
//! request would double its load while the wearer waits twice as long.
//!
//! # Blocking
//!
//! [`SpeechToText::transcribe`] is blocking, so this uses reqwest's blocking
//! client, which runs its own small runtime on a thread of its own. That
//! client must not be *built* on an async runtime's thread (it panics in
//! debug builds), so [`RemoteStt::new`] builds it on a short-lived plain
//! thread, and the server may call `new` from anywhere.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanyard_proto::Secret;
use lanyard_proto::backoff::Backoff;
use reqwest::blocking::Client;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::{SpeechToText, SttError, Transcript};

/// The path every OpenAI-compatible server serves transcriptions at, below
/// its base URL (which usually ends in `/v1`).
pub const TRANSCRIPTIONS_PATH: &str = "audio/transcriptions";

/// OpenAI's model name. Groq wants e.g. `whisper-large-v3`, faster-whisper
/// servers a model id such as `Systran/faster-whisper-small.en`; a Lanyard
/// server accepts any name and uses the one model it has loaded.
pub const DEFAULT_REMOTE_MODEL: &str = "whisper-1";

/// Per-request timeout: connecting, uploading and waiting for the text. A
/// few seconds of speech take well under a second on any of the services;
/// 60 s leaves room for a loaded faster-whisper box and long utterances.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// Three attempts ride out a restart of the far side or one dropped
/// connection, and bound how long an utterance waits on a dead endpoint.
pub const DEFAULT_REMOTE_ATTEMPTS: u32 = 3;

/// First wait between attempts; later ones double (0.5, 1, 2 s ...).
pub const DEFAULT_REMOTE_BACKOFF: Duration = Duration::from_millis(500);

/// The longest `Retry-After` honoured. A server that asks for more is
/// overloaded beyond what a wearer should wait for; the attempt fails.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Connection set-up never waits longer than this, even under a long
/// request timeout: an endpoint that does not accept in 10 s is down.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Error bodies are quoted in messages up to this many characters.
const MAX_DETAIL_CHARS: usize = 300;

/// How to reach the endpoint. [`RemoteConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// The API's base URL (`https://api.openai.com/v1`) or the full
    /// `.../audio/transcriptions` URL; `http` or `https`.
    pub url: String,
    /// Sent as `Authorization: Bearer ...`; `None` sends no header (a local
    /// server without authentication). Never logged or put in an error:
    /// a [`Secret`] prints `<redacted>`.
    pub api_key: Option<Secret>,
    /// The `model` field. Default [`DEFAULT_REMOTE_MODEL`].
    pub model: String,
    /// The `language` field (ISO-639-1, e.g. `en`); `None` leaves it out and
    /// lets the server decide.
    pub language: Option<String>,
    /// Per-attempt timeout. Default [`DEFAULT_REMOTE_TIMEOUT`].
    pub timeout: Duration,
    /// Attempts in all, at least 1. Default [`DEFAULT_REMOTE_ATTEMPTS`].
    pub max_attempts: u32,
    /// First backoff. Default [`DEFAULT_REMOTE_BACKOFF`].
    pub backoff_base: Duration,
}

impl RemoteConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            model: DEFAULT_REMOTE_MODEL.to_string(),
            language: None,
            timeout: DEFAULT_REMOTE_TIMEOUT,
            max_attempts: DEFAULT_REMOTE_ATTEMPTS,
            backoff_base: DEFAULT_REMOTE_BACKOFF,
        }
    }
}

/// The transcription endpoint for a configured URL: the URL itself when it
/// already ends in `/audio/transcriptions`, else that path appended.
pub fn endpoint_url(url: &str) -> Result<Url, SttError> {
    let bad = |reason: &str| SttError::RemoteUrl { url: url.to_string(), reason: reason.to_string() };
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut parsed = Url::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    if !path.ends_with(&format!("/{TRANSCRIPTIONS_PATH}")) {
        parsed.set_path(&format!("{path}/{TRANSCRIPTIONS_PATH}"));
    }
    Ok(parsed)
}

/// Speech-to-text by an OpenAI-compatible endpoint. See the module doc.
pub struct RemoteStt {
    client: Client,
    endpoint: Url,
    config: RemoteConfig,
}

impl fmt::Debug for RemoteStt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStt").field("endpoint", &self.endpoint.as_str()).field("config", &self.config).finish()
    }
}

impl RemoteStt {
    /// Checks the URL and builds the HTTP client. Sends nothing: an endpoint
    /// that is down at start-up may be up by the first utterance.
    pub fn new(mut config: RemoteConfig) -> Result<Self, SttError> {
        let endpoint = endpoint_url(&config.url)?;
        config.max_attempts = config.max_attempts.max(1);
        let timeout = config.timeout;
        // See the module doc: never build the blocking client on a runtime thread.
        let client = std::thread::spawn(move || {
            Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
                .user_agent(concat!("lanyard/", env!("CARGO_PKG_VERSION")))
                .build()
        })
        .join()
        .map_err(|_| SttError::RemoteClient { message: "the client builder panicked".into() })?
        .map_err(|e| SttError::RemoteClient { message: e.to_string() })?;
        Ok(Self { client, endpoint, config })
    }

    /// Where requests go.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    fn url(&self) -> String {
        self.endpoint.to_string()
    }

    /// One attempt: `Ok` with the text, or what to do about the failure.
    fn attempt(&self, content_type: &str, body: &[u8]) -> Result<String, Failure> {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, content_type)
            .header(ACCEPT, "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.body(body.to_vec()).send().map_err(|e| self.transport(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().map_err(|e| self.transport(e))?;
        if status.is_success() {
            return serde_json::from_str::<Answer>(&text).map(|a| a.text.trim().to_string()).map_err(|e| {
                Failure::Final(SttError::RemoteResponse {
                    url: self.url(),
                    message: format!("{e}: {}", excerpt(&text)),
                })
            });
        }
        let detail = detail(&text);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Failure::Final(SttError::RemoteAuth { url: self.url(), status: status.as_u16(), detail })
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Failure::Retry { status: Some(s.as_u16()), message: detail, retry_after }
            }
            s => Failure::Final(SttError::RemoteRejected { url: self.url(), status: s.as_u16(), detail }),
        })
    }

    fn transport(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() && !e.is_connect() {
            return Failure::Final(SttError::RemoteTimeout {
                url: self.url(),
                secs: self.config.timeout.as_secs().max(1),
            });
        }
        // Connection refused, reset, DNS, TLS: transient as far as we can tell.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        Failure::Retry { status: None, message, retry_after: None }
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt: `status` is `None` for a transport error.
    Retry { status: Option<u16>, message: String, retry_after: Option<Duration> },
    /// Not worth another attempt.
    Final(SttError),
}

/// The one field of the answer that is used; others (`language`,
/// `duration`, `segments`, ...) are ignored.
#[derive(Deserialize)]
struct Answer {
    text: String,
}

impl SpeechToText for RemoteStt {
    fn transcribe(&self, pcm16k: &[f32]) -> Result<Transcript, SttError> {
        if let Some((index, &value)) = pcm16k.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(SttError::InvalidAudio { index, value });
        }
        let started = Instant::now();
        let wav = wav_bytes(pcm16k);
        let boundary = boundary();
        let mut fields = vec![("model", self.config.model.as_str()), ("response_format", "json")];
        if let Some(language) = &self.config.language {
            fields.push(("language", language.as_str()));
        }
        let body = multipart_body(&boundary, &wav, &fields);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let mut attempt = 1;
        let text = loop {
            match self.attempt(&content_type, &body) {
                Ok(text) => break text,
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry { status, message, retry_after }) => {
                    // The longest wait a server may ask for is also the longest backoff.
                    let backoff = Backoff::new(self.config.backoff_base, MAX_RETRY_AFTER).ceiling(attempt - 1);
                    let wait = match retry_after {
                        Some(w) if w > MAX_RETRY_AFTER => None,
                        Some(w) => Some(w.max(backoff)),
                        None => Some(backoff),
                    };
                    let (Some(wait), true) = (wait, attempt < self.config.max_attempts) else {
                        return Err(match status {
                            Some(status) => SttError::RemoteUnavailable {
                                url: self.url(),
                                status,
                                attempts: attempt,
                                detail: message,
                            },
                            None => SttError::RemoteConnect { url: self.url(), attempts: attempt, message },
                        });
                    };
                    tracing::warn!(endpoint = %self.endpoint, attempt, ?status, error = %message, ?wait, "remote speech-to-text failed; retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
            }
        };
        Ok(Transcript::untimed(
            text,
            pcm16k.len() as f32 / crate::EXPECTED_SAMPLING_RATE as f32,
            started.elapsed().as_secs_f32(),
        ))
    }

    fn name(&self) -> &str {
        "remote"
    }
}

/// 16 kHz mono PCM16 WAV of samples in [-1, 1] (clipped beyond).
fn wav_bytes(pcm16k: &[f32]) -> Vec<u8> {
    let bytes: Vec<u8> =
        pcm16k.iter().flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes()).collect();
    lanyard_proto::wav::write([bytes.as_slice()])
}

/// A boundary that cannot plausibly occur in the WAV: 128 bits from the
/// clock and a counter, behind a fixed prefix.
fn boundary() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("lanyard-{nanos:016x}{:016x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()))
}

/// A `multipart/form-data` body: the WAV as `file`, then the text fields.
fn multipart_body(boundary: &str, wav: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(wav.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"utterance.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wav);
    body.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// The useful part of an error body: OpenAI's `error.message`, a Lanyard
/// server's `message`, FastAPI's `detail`, or the text itself, shortened.
fn detail(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let found = v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("detail"));
        if let Some(s) = found.and_then(|m| m.as_str()) {
            return excerpt(s);
        }
    }
    excerpt(body)
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted HTTP peer on 127.0.0.1: real sockets, real reqwest.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the peer saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    /// A peer that answers the n-th request with `script[n]` (the last entry
    /// repeats); `None` accepts and never answers. It stops with the test
    /// process; every test uses short timeouts.
    fn peer(script: Vec<Option<(u16, &'static str)>>) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let reply = script[n.min(script.len() - 1)];
                let log = log.clone();
                std::thread::spawn(move || serve_one(stream, reply, &log));
            }
        });
        (url, seen)
    }

    fn serve_one(mut stream: TcpStream, reply: Option<(u16, &str)>, log: &Mutex<Vec<Seen>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        log.lock().unwrap().push(Seen { head, body });
        match reply {
            Some((status, text)) => {
                let extra = if status == 503 { "Retry-After: 0\r\n" } else { "" };
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            }
            None => std::thread::sleep(Duration::from_secs(5)),
        }
    }

    fn config(url: &str) -> RemoteConfig {
        RemoteConfig {
            api_key: Some(Secret::new("sk-test-secret")),
            timeout: Duration::from_millis(1500),
            backoff_base: Duration::from_millis(20),
            ..RemoteConfig::new(url)
        }
    }

    /// A text field of a multipart body.
    fn field(body: &[u8], name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(body);
        let start = text.find(&format!("name=\"{name}\"\r\n\r\n"))? + name.len() + 11;
        Some(text[start..].split("\r\n").next()?.to_string())
    }

    #[test]
    fn sends_the_openai_request_and_reads_the_text() {
        let (url, seen) = peer(vec![Some((200, r#"{"text": "  Hello there. ", "language": "en"}"#))]);
        let stt = RemoteStt::new(RemoteConfig { language: Some("en".into()), ..config(&url) }).unwrap();
        let pcm: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let t = stt.transcribe(&pcm).unwrap();
        assert_eq!(t.text, "Hello there.");
        assert_eq!(t.audio_secs, 1.0);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let head = seen[0].head.to_ascii_lowercase();
        assert!(head.starts_with("post /v1/audio/transcriptions http/1.1"), "{head}");
        assert!(head.contains("authorization: bearer sk-test-secret"), "{head}");
        assert!(head.contains("content-type: multipart/form-data; boundary="), "{head}");
        let body = &seen[0].body;
        assert_eq!(field(body, "model").as_deref(), Some(DEFAULT_REMOTE_MODEL));
        assert_eq!(field(body, "response_format").as_deref(), Some("json"));
        assert_eq!(field(body, "language").as_deref(), Some("en"));
        // The file part is a 16 kHz PCM16 WAV of the samples.
        let start = body.windows(4).position(|w| w == b"RIFF").unwrap();
        let wav_len = 44 + 2 * pcm.len();
        let frames = lanyard_proto::wav::read(&body[start..start + wav_len]).unwrap();
        let samples: Vec<u8> = frames.concat();
        assert_eq!(samples.len(), 2 * pcm.len());
        let s100 = i16::from_le_bytes([samples[200], samples[201]]);
        assert_eq!(s100, (pcm[100] * 32767.0).round() as i16);
        assert!(String::from_utf8_lossy(&body[..start]).contains("filename=\"utterance.wav\""));
    }

    #[test]
    fn server_errors_are_retried_a_bounded_number_of_times() {
        let (url, seen) = peer(vec![
            Some((500, "{}")),
            Some((503, r#"{"detail": "model loading"}"#)),
            Some((200, r#"{"text": "ok"}"#)),
        ]);
        let stt = RemoteStt::new(config(&url)).unwrap();
        assert_eq!(stt.transcribe(&[0.0; 1600]).unwrap().text, "ok");
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (url, seen) = peer(vec![Some((503, r#"{"detail": "model loading"}"#))]);
        let stt = RemoteStt::new(RemoteConfig { max_attempts: 2, ..config(&url) }).unwrap();
        let e = stt.transcribe(&[0.0; 1600]).unwrap_err();
        assert!(matches!(e, SttError::RemoteUnavailable { status: 503, attempts: 2, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("model loading") && msg.contains("max_attempts"), "{msg}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_refused_key_fails_at_once_and_says_which_setting() {
        let (url, seen) = peer(vec![Some((401, r#"{"error": {"message": "Invalid API key"}}"#))]);
        let stt = RemoteStt::new(config(&url)).unwrap();
        let e = stt.transcribe(&[0.0; 1600]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SttError::RemoteAuth { status: 401, .. }), "{e:?}");
        assert!(msg.contains("Invalid API key") && msg.contains("api_key_env"), "{msg}");
        assert!(!msg.contains("sk-test-secret"), "the key leaked: {msg}");
        assert!(!format!("{stt:?}").contains("sk-test-secret"));
        assert_eq!(seen.lock().unwrap().len(), 1, "401 is not retried");

        let (url, _) = peer(vec![Some((400, r#"{"code": "bad_request", "message": "no file field"}"#))]);
        let e = RemoteStt::new(config(&url)).unwrap().transcribe(&[0.0; 1600]).unwrap_err();
        assert!(
            matches!(e, SttError::RemoteRejected { status: 400, .. }) && e.to_string().contains("no file field"),
            "{e}"
        );

        let (url, _) = peer(vec![Some((200, "<html>hi</html>"))]);
        let e = RemoteStt::new(config(&url)).unwrap().transcribe(&[0.0; 1600]).unwrap_err();
        assert!(matches!(e, SttError::RemoteResponse { .. }) && e.to_string().contains("<html>"), "{e}");
    }

    #[test]
    fn a_silent_endpoint_times_out_without_a_retry() {
        let (url, seen) = peer(vec![None]);
        let stt = RemoteStt::new(RemoteConfig { timeout: Duration::from_millis(400), ..config(&url) }).unwrap();
        let started = Instant::now();
        let e = stt.transcribe(&[0.0; 1600]).unwrap_err();
        assert!(matches!(e, SttError::RemoteTimeout { .. }), "{e:?}");
        assert!(e.to_string().contains("timeout_secs"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn an_unreachable_endpoint_is_retried_then_reported() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stt = RemoteStt::new(config(&format!("http://127.0.0.1:{port}/v1"))).unwrap();
        let e = stt.transcribe(&[0.0; 1600]).unwrap_err();
        assert!(matches!(e, SttError::RemoteConnect { attempts: 3, .. }), "{e:?}");
        assert!(e.to_string().contains("is that server running"), "{e}");
        assert!(matches!(stt.transcribe(&[f32::NAN]), Err(SttError::InvalidAudio { index: 0, .. })));
    }

    #[test]
    fn urls_are_checked_and_completed() {
        let ok = |u: &str| endpoint_url(u).unwrap().to_string();
        assert_eq!(ok("https://api.openai.com/v1"), "https://api.openai.com/v1/audio/transcriptions");
        assert_eq!(ok("https://api.groq.com/openai/v1/"), "https://api.groq.com/openai/v1/audio/transcriptions");
        assert_eq!(ok("http://10.0.0.2:8080/v1/audio/transcriptions"), "http://10.0.0.2:8080/v1/audio/transcriptions");
        assert_eq!(ok("http://localhost:8000"), "http://localhost:8000/audio/transcriptions");
        for bad in ["", "api.openai.com/v1", "ftp://h/v1", "http://h/v1?x=1", "http://"] {
            let e = endpoint_url(bad).unwrap_err();
            assert!(matches!(e, SttError::RemoteUrl { .. }) && e.to_string().contains("base URL"), "{bad}: {e}");
        }
        assert!(RemoteStt::new(RemoteConfig::new("nope")).is_err());
    }
}
