//! The `[responder]` config table, and its checks at start-up.
//!
//! The server reads this from its TOML config. `kind` picks the responder;
//! unknown keys are errors, so a misspelt `timeout_ms` is caught rather than
//! silently defaulted.
//!
//! ```toml
//! # The default: no network, a fixed acknowledgement.
//! [responder]
//! kind = "builtin"
//! ```
//!
//! ```toml
//! [responder]
//! kind = "webhook"
//! url = "https://hooks.example.com/lanyard"
//! secret_env = "LANYARD_WEBHOOK_SECRET"   # or: secret = "…" (at least 16 bytes)
//! timeout_ms = 3000                       # per attempt
//! max_attempts = 3                        # 1 = no retries
//! backoff_base_ms = 200
//! fallback = "builtin"                    # or "fail"
//! ```
//!
//! ```toml
//! [responder]
//! kind = "llm"
//! base_url = "https://api.openai.com/v1"  # POSTs to {base_url}/chat/completions
//! model = "gpt-4o-mini"
//! api_key_env = "OPENAI_API_KEY"          # or: api_key = "…"; omit both for a local server
//! system_prompt = "You are a terse, kind assistant."
//! max_tokens = 120
//! temperature = 0.3
//! title = "Lanyard"
//! max_body_chars = 178
//! timeout_ms = 10000
//! max_attempts = 2
//! backoff_base_ms = 200
//! fallback = "builtin"
//! ```
//!
//! # Secrets
//!
//! A secret can be given two ways, and exactly one must be used:
//!
//! - `secret_env = "VAR"` / `api_key_env = "VAR"`: read from the environment
//!   variable `VAR` when the server starts. Recommended: the config file can
//!   then be committed or shared without the secret.
//! - `secret = "…"` / `api_key = "…"`: inline. Convenient for a local test;
//!   keep such a file readable only by the server's user.
//!
//! Either way the value is held in [`Secret`] (`lanyard_proto`'s, the one
//! credential type of every config), whose `Debug` and `Display` print
//! `<redacted>`, so printing a config never shows it.

use std::time::Duration;

pub use lanyard_proto::Secret;
use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// Which responder answers, and how. See the module docs for examples.
///
/// Deserialized through a private mirror enum, so that `kind = "builtin"`
/// with a stray key is an error like any other unknown key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", from = "RawResponderConfig")]
pub enum ResponderConfig {
    /// The built-in acknowledgement. The default, so a server with no
    /// `[responder]` table still answers.
    #[default]
    Builtin,
    /// The operator's HTTP endpoint, signed with a shared secret.
    Webhook(WebhookConfig),
    /// An OpenAI-compatible chat-completions endpoint.
    Llm(LlmConfig),
}

/// The wire form of [`ResponderConfig`]. Serde's internally tagged unit
/// variants ignore any keys next to the tag; an empty struct that denies
/// unknown fields does not.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum RawResponderConfig {
    Builtin(NoKeys),
    Webhook(WebhookConfig),
    Llm(LlmConfig),
}

/// The built-in responder has nothing to configure.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

impl From<RawResponderConfig> for ResponderConfig {
    fn from(raw: RawResponderConfig) -> Self {
        match raw {
            RawResponderConfig::Builtin(NoKeys {}) => ResponderConfig::Builtin,
            RawResponderConfig::Webhook(c) => ResponderConfig::Webhook(c),
            RawResponderConfig::Llm(c) => ResponderConfig::Llm(c),
        }
    }
}

/// What to do when a remote responder has used all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Answer with the built-in acknowledgement, its data marked
    /// `"fallback": "webhook_failed"` or `"llm_failed"`. The default: the user
    /// learns their words arrived even while the endpoint is down.
    #[default]
    Builtin,
    /// Return the error, so the utterance is recorded as failed and nothing
    /// is sent; for deployments where a canned answer would mislead.
    Fail,
}

/// The shortest webhook secret accepted, in bytes. HMAC-SHA256 is only as
/// strong as its key, and 16 random bytes (128 bits) is beyond guessing.
pub const MIN_SECRET_BYTES: usize = 16;

/// The longest per-attempt timeout accepted: longer and one slow endpoint
/// would hold the utterance well past the point where a reply is useful.
pub const MAX_TIMEOUT_MS: u64 = 120_000;

/// The most attempts accepted: more would only delay the fallback.
pub const MAX_ATTEMPTS: u32 = 10;

/// The webhook's per-attempt timeout: a hook should answer from memory or
/// a quick lookup, and the user is waiting.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 3_000;

/// The LLM's per-attempt timeout: generation of a short answer usually takes
/// one to five seconds, and more under load.
pub const DEFAULT_LLM_TIMEOUT_MS: u64 = 10_000;

/// Three tries ride out a restart or a dropped connection without delaying
/// the fallback by much.
pub const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 3;

/// Two tries for the LLM: each can take seconds, and a second attempt
/// covers the common transient 429 or 503.
pub const DEFAULT_LLM_ATTEMPTS: u32 = 2;

/// The first backoff ceiling; later ones double (200, 400, 800 ms, ...).
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 200;

/// The LLM reply's default title.
pub const DEFAULT_LLM_TITLE: &str = "Lanyard";

/// A lock screen shows about this many characters of a notification body
/// (two lines on a phone in portrait), so the LLM's answer is cut to it.
pub const DEFAULT_MAX_BODY_CHARS: usize = 178;

/// A short answer of [`DEFAULT_MAX_BODY_CHARS`] is about 45 tokens; the
/// headroom lets the model finish its sentence instead of being cut off.
pub const DEFAULT_MAX_TOKENS: u32 = 120;

/// Low randomness: answers to spoken requests should be predictable.
pub const DEFAULT_TEMPERATURE: f32 = 0.3;

/// The system prompt when the config gives none. A note asking for brevity
/// is appended to whichever prompt is used (see [`crate::llm`]).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are Lanyard, a voice assistant. The user spoke into a wearable \
pendant; their words were transcribed by speech recognition, which may have misheard some of them. Answer \
what they said helpfully and directly.";

/// The notification body must say something; fewer characters than this
/// cannot, and the value is most likely a typo.
pub const MIN_BODY_CHARS: usize = 20;

/// FCM rejects a message over 4096 bytes; bodies longer than this risk it.
pub const MAX_BODY_CHARS: usize = 1000;

/// Titles longer than this are cut by every lock screen anyway.
pub const MAX_TITLE_CHARS: usize = 100;

/// The `kind = "webhook"` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST each [`crate::ReplyRequest`]; `http://` or `https://`.
    /// Plain `http://` is meant for a hook on the same host or network: the
    /// signature protects integrity, not the transcript's privacy.
    #[serde(default)]
    pub url: String,
    /// The shared secret, inline. Exactly one of `secret` and `secret_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// The environment variable holding the shared secret, read at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// The limit on one attempt, in milliseconds.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in all, the first included; 1 means no retries.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// The first backoff ceiling in milliseconds; see [`crate::retry`].
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// What to answer when every attempt failed.
    #[serde(default)]
    pub fallback: Fallback,
}

impl WebhookConfig {
    /// A webhook config with an inline secret and every default.
    pub fn new(url: impl Into<String>, secret: impl Into<Secret>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: Some(secret.into()),
            secret_env: None,
            timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            max_attempts: DEFAULT_WEBHOOK_ATTEMPTS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            fallback: Fallback::Builtin,
        }
    }

    /// Checks the table and reads the secret; `env` looks up environment variables.
    pub(crate) fn resolve(&self, env: &Env) -> Result<ResolvedWebhook, ConfigError> {
        let url = http_url("url", &self.url, "the URL to POST each transcript to")?;
        let secret = secret("secret", self.secret.as_ref(), "secret_env", self.secret_env.as_deref(), env)?
            .ok_or_else(|| {
                invalid(
                    "secret",
                    format!(
                        "the webhook signs every request, so it needs a shared secret: set \
                         secret_env = \"VAR\" (recommended) or secret = \"...\" (at least \
                         {MIN_SECRET_BYTES} bytes, e.g. from `openssl rand -hex 32`)"
                    ),
                )
            })?;
        let len = secret.expose().len();
        if len < MIN_SECRET_BYTES {
            return Err(invalid(
                "secret",
                format!(
                    "the secret is {len} bytes; use at least {MIN_SECRET_BYTES} random bytes \
                     (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        let retry = retry_policy(self.timeout_ms, self.max_attempts, self.backoff_base_ms)?;
        Ok(ResolvedWebhook { url, secret, retry, fallback: self.fallback })
    }
}

/// The `kind = "llm"` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The API root, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:11434/v1` (Ollama); the responder POSTs to
    /// `{base_url}/chat/completions`.
    #[serde(default)]
    pub base_url: String,
    /// The model to ask, as the endpoint names it.
    #[serde(default)]
    pub model: String,
    /// The API key, inline, sent as `Authorization: Bearer …`. At most one of
    /// `api_key` and `api_key_env`; neither for a server that needs no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// The environment variable holding the API key, read at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Replaces [`DEFAULT_SYSTEM_PROMPT`]. A note asking for brevity is appended either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// The most tokens the model may generate; bounds cost and latency.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature, 0 to 2.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// The notification's title; the model writes only the body.
    #[serde(default = "default_llm_title")]
    pub title: String,
    /// The body is cut to this many characters, at a word, with an ellipsis.
    #[serde(default = "default_max_body_chars")]
    pub max_body_chars: usize,
    /// The limit on one attempt, in milliseconds.
    #[serde(default = "default_llm_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in all, the first included; 1 means no retries.
    #[serde(default = "default_llm_attempts")]
    pub max_attempts: u32,
    /// The first backoff ceiling in milliseconds; see [`crate::retry`].
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// What to answer when every attempt failed.
    #[serde(default)]
    pub fallback: Fallback,
}

impl LlmConfig {
    /// An LLM config with no API key and every default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            api_key_env: None,
            system_prompt: None,
            max_tokens: DEFAULT_MAX_TOKENS,
            temperature: DEFAULT_TEMPERATURE,
            title: DEFAULT_LLM_TITLE.to_string(),
            max_body_chars: DEFAULT_MAX_BODY_CHARS,
            timeout_ms: DEFAULT_LLM_TIMEOUT_MS,
            max_attempts: DEFAULT_LLM_ATTEMPTS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            fallback: Fallback::Builtin,
        }
    }

    /// Checks the table and reads the API key; `env` looks up environment variables.
    pub(crate) fn resolve(&self, env: &Env) -> Result<ResolvedLlm, ConfigError> {
        let base = http_url("base_url", &self.base_url, "the API root, e.g. https://api.openai.com/v1")?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid(
                "base_url",
                "remove the query string or fragment; /chat/completions is appended to the path",
            ));
        }
        let endpoint = reqwest::Url::parse(&format!("{}/chat/completions", base.as_str().trim_end_matches('/')))
            .map_err(|e| invalid("base_url", format!("appending /chat/completions gave an invalid URL: {e}")))?;
        let model = self.model.trim();
        if model.is_empty() {
            return Err(invalid("model", "name the model to ask, e.g. model = \"gpt-4o-mini\""));
        }
        let api_key = secret("api_key", self.api_key.as_ref(), "api_key_env", self.api_key_env.as_deref(), env)?;
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", format!("must be above 0 (the default is {DEFAULT_MAX_TOKENS})")));
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return Err(invalid(
                "temperature",
                format!("must be between 0 and 2 (the default is {DEFAULT_TEMPERATURE})"),
            ));
        }
        let title = self.title.trim();
        if title.is_empty() {
            return Err(invalid("title", format!("must not be empty (the default is \"{DEFAULT_LLM_TITLE}\")")));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(invalid("title", format!("must be at most {MAX_TITLE_CHARS} characters")));
        }
        if !(MIN_BODY_CHARS..=MAX_BODY_CHARS).contains(&self.max_body_chars) {
            return Err(invalid(
                "max_body_chars",
                format!(
                    "must be between {MIN_BODY_CHARS} and {MAX_BODY_CHARS} \
                     (the default, {DEFAULT_MAX_BODY_CHARS}, fits a lock screen)"
                ),
            ));
        }
        let retry = retry_policy(self.timeout_ms, self.max_attempts, self.backoff_base_ms)?;
        Ok(ResolvedLlm {
            endpoint,
            model: model.to_string(),
            api_key,
            system_prompt: self.system_prompt.clone().unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            title: title.to_string(),
            max_body_chars: self.max_body_chars,
            retry,
            fallback: self.fallback,
        })
    }
}

/// A config that cannot work, with the `responder.*` key to fix and how.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value the responder cannot use.
    #[error("responder.{key}: {fix}")]
    Invalid {
        /// The key in the `[responder]` table.
        key: &'static str,
        /// What is wrong and what to do instead.
        fix: String,
    },
    /// The HTTP client could not be set up (the TLS roots, usually).
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

fn invalid(key: &'static str, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, fix: fix.into() }
}

/// Looks up an environment variable; tests pass a fake one.
pub(crate) type Env = dyn Fn(&str) -> Result<String, std::env::VarError>;

/// The process environment.
pub(crate) fn process_env(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
}

/// The webhook table, checked, with its secret read.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedWebhook {
    pub url: reqwest::Url,
    pub secret: Secret,
    pub retry: RetryPolicy,
    pub fallback: Fallback,
}

/// The LLM table, checked, with its key read.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedLlm {
    pub endpoint: reqwest::Url,
    pub model: String,
    pub api_key: Option<Secret>,
    pub system_prompt: String,
    pub max_tokens: u32,
    pub temperature: f32,
    pub title: String,
    pub max_body_chars: usize,
    pub retry: RetryPolicy,
    pub fallback: Fallback,
}

/// Parses an `http(s)://` URL without credentials in it. Error messages do
/// not repeat the URL, whose query string may hold a token.
fn http_url(key: &'static str, raw: &str, what: &str) -> Result<reqwest::Url, ConfigError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(invalid(key, format!("set {key} to {what}")));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| invalid(key, format!("not a valid URL ({e}); give {what}")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(key, format!("the scheme is `{other}`; use an http:// or https:// URL"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "remove the credentials from the URL; the secret belongs in its own key"));
    }
    if url.scheme() == "http" && !is_local(&url) {
        tracing::warn!(
            key,
            host = url.host_str(),
            "plain http to a non-local host: transcripts travel unencrypted; prefer https"
        );
    }
    Ok(url)
}

/// Whether a URL points at this machine, where plain http is reasonable.
fn is_local(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// Reads a secret given inline (`key`) or by environment variable (`env_key`).
/// `Ok(None)` when neither is given; the caller decides whether that is fine.
fn secret(
    key: &'static str,
    inline: Option<&Secret>,
    env_key: &'static str,
    var: Option<&str>,
    env: &Env,
) -> Result<Option<Secret>, ConfigError> {
    let value = match (inline, var) {
        (Some(_), Some(_)) => {
            return Err(invalid(env_key, format!("give either {key} or {env_key}, not both")));
        }
        (None, None) => return Ok(None),
        (Some(inline), None) => {
            if inline.expose().is_empty() {
                return Err(invalid(key, format!("is empty; set it, or use {env_key} = \"VAR\"")));
            }
            inline.clone()
        }
        (None, Some(var)) => {
            if var.trim().is_empty() {
                return Err(invalid(env_key, "name the environment variable that holds the secret"));
            }
            match env(var) {
                Ok(value) if !value.is_empty() => Secret::new(value),
                Ok(_) | Err(std::env::VarError::NotPresent) => {
                    return Err(invalid(
                        env_key,
                        format!(
                            "the environment variable `{var}` is not set or empty; export it before starting the server"
                        ),
                    ));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(invalid(env_key, format!("the environment variable `{var}` is not valid UTF-8")));
                }
            }
        }
    };
    if value.expose().trim() != value.expose() {
        return Err(invalid(
            key,
            "the secret starts or ends with whitespace (a stray newline?); remove it, since both sides must use exactly the same bytes",
        ));
    }
    Ok(Some(value))
}

fn retry_policy(timeout_ms: u64, max_attempts: u32, backoff_base_ms: u64) -> Result<RetryPolicy, ConfigError> {
    if timeout_ms == 0 {
        return Err(invalid("timeout_ms", "must be above 0; it limits each attempt, in milliseconds"));
    }
    if timeout_ms > MAX_TIMEOUT_MS {
        return Err(invalid(
            "timeout_ms",
            format!("must be at most {MAX_TIMEOUT_MS}; the user is waiting for the reply"),
        ));
    }
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(invalid("max_attempts", format!("must be between 1 (no retries) and {MAX_ATTEMPTS}")));
    }
    if backoff_base_ms > MAX_TIMEOUT_MS {
        return Err(invalid("backoff_base_ms", format!("must be at most {MAX_TIMEOUT_MS}")));
    }
    Ok(RetryPolicy {
        timeout: Duration::from_millis(timeout_ms),
        max_attempts,
        backoff_base: Duration::from_millis(backoff_base_ms),
    })
}

fn default_webhook_timeout_ms() -> u64 {
    DEFAULT_WEBHOOK_TIMEOUT_MS
}
fn default_llm_timeout_ms() -> u64 {
    DEFAULT_LLM_TIMEOUT_MS
}
fn default_webhook_attempts() -> u32 {
    DEFAULT_WEBHOOK_ATTEMPTS
}
fn default_llm_attempts() -> u32 {
    DEFAULT_LLM_ATTEMPTS
}
fn default_backoff_base_ms() -> u64 {
    DEFAULT_BACKOFF_BASE_MS
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}
fn default_temperature() -> f32 {
    DEFAULT_TEMPERATURE
}
fn default_llm_title() -> String {
    DEFAULT_LLM_TITLE.to_string()
}
fn default_max_body_chars() -> usize {
    DEFAULT_MAX_BODY_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::env::VarError;

    const GOOD_SECRET: &str = "0123456789abcdef0123";

    fn fake_env(name: &str) -> Result<String, VarError> {
        match name {
            "HOOK_SECRET" => Ok(GOOD_SECRET.to_string()),
            "SHORT_SECRET" => Ok("short".to_string()),
            "NEWLINE_SECRET" => Ok(format!("{GOOD_SECRET}\n")),
            "EMPTY" => Ok(String::new()),
            "API_KEY" => Ok("sk-test".to_string()),
            _ => Err(VarError::NotPresent),
        }
    }

    fn webhook_error(cfg: &WebhookConfig) -> String {
        cfg.resolve(&fake_env).unwrap_err().to_string()
    }

    fn llm_error(cfg: &LlmConfig) -> String {
        cfg.resolve(&fake_env).unwrap_err().to_string()
    }

    #[test]
    fn secret_from_the_environment() {
        let cfg = WebhookConfig {
            secret: None,
            secret_env: Some("HOOK_SECRET".into()),
            ..WebhookConfig::new("https://h.example/x", "")
        };
        let resolved = cfg.resolve(&fake_env).unwrap();
        assert_eq!(resolved.secret.expose(), GOOD_SECRET);
        assert_eq!(resolved.retry.timeout, Duration::from_secs(3));
        assert_eq!(resolved.retry.max_attempts, 3);
        assert_eq!(resolved.retry.backoff_base, Duration::from_millis(200));
    }

    #[test]
    fn secret_problems_say_what_to_fix() {
        let env_cfg = |var: &str| WebhookConfig {
            secret: None,
            secret_env: Some(var.into()),
            ..WebhookConfig::new("https://h.example/x", "")
        };
        let e = webhook_error(&env_cfg("MISSING"));
        assert!(e.contains("responder.secret_env") && e.contains("`MISSING` is not set"), "{e}");
        let e = webhook_error(&env_cfg("EMPTY"));
        assert!(e.contains("is not set or empty"), "{e}");
        let e = webhook_error(&env_cfg("SHORT_SECRET"));
        assert!(e.contains("responder.secret") && e.contains("5 bytes") && e.contains("at least 16"), "{e}");
        assert!(!e.contains("short"), "the secret leaked into the message: {e}");
        let e = webhook_error(&env_cfg("NEWLINE_SECRET"));
        assert!(e.contains("whitespace"), "{e}");
        let e = webhook_error(&WebhookConfig { secret: None, ..WebhookConfig::new("https://h.example/x", "") });
        assert!(e.contains("needs a shared secret") && e.contains("secret_env"), "{e}");
        let e = webhook_error(&WebhookConfig::new("https://h.example/x", ""));
        assert!(e.contains("responder.secret: is empty"), "{e}");
        let e = webhook_error(&WebhookConfig {
            secret_env: Some("HOOK_SECRET".into()),
            ..WebhookConfig::new("https://h.example/x", GOOD_SECRET)
        });
        assert!(e.contains("either secret or secret_env"), "{e}");
    }

    #[test]
    fn url_problems_say_what_to_fix() {
        let e = webhook_error(&WebhookConfig::new("", GOOD_SECRET));
        assert!(e.contains("responder.url: set url"), "{e}");
        let e = webhook_error(&WebhookConfig::new("ftp://h.example/x", GOOD_SECRET));
        assert!(e.contains("scheme is `ftp`") && e.contains("http://"), "{e}");
        let e = webhook_error(&WebhookConfig::new("h.example/x", GOOD_SECRET));
        assert!(e.contains("not a valid URL"), "{e}");
        let e = webhook_error(&WebhookConfig::new("https://user:pw@h.example/x", GOOD_SECRET));
        assert!(e.contains("credentials") && !e.contains("pw"), "{e}");
        let e = webhook_error(&WebhookConfig::new("ftp://h.example/x?token=tok123", GOOD_SECRET));
        assert!(!e.contains("tok123"), "the URL's token leaked into the message: {e}");
    }

    #[test]
    fn retry_limits_say_what_to_fix() {
        let base = WebhookConfig::new("https://h.example/x", GOOD_SECRET);
        let e = webhook_error(&WebhookConfig { timeout_ms: 0, ..base.clone() });
        assert!(e.contains("responder.timeout_ms: must be above 0"), "{e}");
        let e = webhook_error(&WebhookConfig { timeout_ms: 10 * 60 * 1000, ..base.clone() });
        assert!(e.contains("responder.timeout_ms: must be at most"), "{e}");
        let e = webhook_error(&WebhookConfig { max_attempts: 0, ..base.clone() });
        assert!(e.contains("responder.max_attempts"), "{e}");
        let e = webhook_error(&WebhookConfig { max_attempts: 11, ..base.clone() });
        assert!(e.contains("responder.max_attempts"), "{e}");
        assert!(WebhookConfig { max_attempts: 1, backoff_base_ms: 0, ..base }.resolve(&fake_env).is_ok());
    }

    #[test]
    fn llm_problems_say_what_to_fix() {
        let base = LlmConfig::new("https://api.example/v1", "small");
        let resolved = base.resolve(&fake_env).unwrap();
        assert_eq!(resolved.endpoint.as_str(), "https://api.example/v1/chat/completions");
        assert!(resolved.api_key.is_none());
        let slash = LlmConfig::new("http://127.0.0.1:11434/v1/", "small").resolve(&fake_env).unwrap();
        assert_eq!(slash.endpoint.as_str(), "http://127.0.0.1:11434/v1/chat/completions");

        let e = llm_error(&LlmConfig::new("https://api.example/v1", " "));
        assert!(e.contains("responder.model: name the model"), "{e}");
        let e = llm_error(&LlmConfig::new("", "small"));
        assert!(e.contains("responder.base_url"), "{e}");
        let e = llm_error(&LlmConfig::new("https://api.example/v1?x=1", "small"));
        assert!(e.contains("query string"), "{e}");
        let e = llm_error(&LlmConfig { max_tokens: 0, ..base.clone() });
        assert!(e.contains("responder.max_tokens"), "{e}");
        let e = llm_error(&LlmConfig { temperature: 3.0, ..base.clone() });
        assert!(e.contains("responder.temperature"), "{e}");
        let e = llm_error(&LlmConfig { temperature: f32::NAN, ..base.clone() });
        assert!(e.contains("responder.temperature"), "{e}");
        let e = llm_error(&LlmConfig { title: "  ".into(), ..base.clone() });
        assert!(e.contains("responder.title"), "{e}");
        let e = llm_error(&LlmConfig { max_body_chars: 5, ..base.clone() });
        assert!(e.contains("responder.max_body_chars"), "{e}");
        let e = llm_error(&LlmConfig { timeout_ms: 0, ..base.clone() });
        assert!(e.contains("responder.timeout_ms"), "{e}");
        let e = llm_error(&LlmConfig { api_key_env: Some("NOPE".into()), ..base.clone() });
        assert!(e.contains("responder.api_key_env") && e.contains("`NOPE`"), "{e}");
        let keyed = LlmConfig { api_key_env: Some("API_KEY".into()), ..base }.resolve(&fake_env).unwrap();
        assert_eq!(keyed.api_key.unwrap().expose(), "sk-test");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cfg = WebhookConfig::new("https://h.example/x", GOOD_SECRET);
        let shown = format!("{cfg:?} {:?}", cfg.resolve(&fake_env).unwrap());
        assert!(!shown.contains(GOOD_SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let llm = LlmConfig { api_key: Some("sk-very-secret".into()), ..LlmConfig::new("https://a.example/v1", "m") };
        let shown = format!("{llm:?} {:?}", llm.resolve(&fake_env).unwrap());
        assert!(!shown.contains("sk-very-secret"), "{shown}");
    }

    #[test]
    fn local_hosts_are_recognised() {
        let local = |u: &str| is_local(&reqwest::Url::parse(u).unwrap());
        assert!(local("http://127.0.0.1:8080/x"));
        assert!(local("http://[::1]:8080/x"));
        assert!(local("http://localhost/x"));
        assert!(!local("http://hooks.example.com/x"));
        assert!(!local("http://10.0.0.1/x"));
    }
}
