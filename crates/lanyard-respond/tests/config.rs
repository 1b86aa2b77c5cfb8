//! The `[responder]` table as the server reads it: TOML in, a checked responder out.

use lanyard_respond::config::{
    DEFAULT_BACKOFF_BASE_MS, DEFAULT_LLM_ATTEMPTS, DEFAULT_LLM_TIMEOUT_MS, DEFAULT_MAX_BODY_CHARS,
    DEFAULT_WEBHOOK_ATTEMPTS, DEFAULT_WEBHOOK_TIMEOUT_MS,
};
use lanyard_respond::{Fallback, LlmConfig, ResponderConfig, Secret, WebhookConfig, build};
use serde::Deserialize;

/// The server's config file, reduced to the part this crate owns.
#[derive(Debug, Deserialize)]
struct ServerConfig {
    #[serde(default)]
    responder: ResponderConfig,
}

fn parse(toml_text: &str) -> Result<ResponderConfig, String> {
    toml::from_str::<ServerConfig>(toml_text).map(|c| c.responder).map_err(|e| e.to_string())
}

fn build_error(cfg: &ResponderConfig) -> String {
    match build(cfg) {
        Ok(r) => panic!("expected an error, built {}", r.name()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn no_table_means_builtin() {
    assert_eq!(parse("").unwrap(), ResponderConfig::Builtin);
    assert_eq!(parse("[responder]\nkind = \"builtin\"\n").unwrap(), ResponderConfig::Builtin);
    assert_eq!(build(&ResponderConfig::default()).unwrap().name(), "builtin");
}

#[test]
fn webhook_table_with_defaults() {
    let cfg = parse(
        r#"
        [responder]
        kind = "webhook"
        url = "https://hooks.example.com/lanyard"
        secret_env = "LANYARD_TEST_UNSET_SECRET_VAR"
        "#,
    )
    .unwrap();
    let ResponderConfig::Webhook(w) = &cfg else { panic!("{cfg:?}") };
    assert_eq!(w.url, "https://hooks.example.com/lanyard");
    assert_eq!(w.secret, None);
    assert_eq!(w.secret_env.as_deref(), Some("LANYARD_TEST_UNSET_SECRET_VAR"));
    assert_eq!(w.timeout_ms, DEFAULT_WEBHOOK_TIMEOUT_MS);
    assert_eq!(w.max_attempts, DEFAULT_WEBHOOK_ATTEMPTS);
    assert_eq!(w.backoff_base_ms, DEFAULT_BACKOFF_BASE_MS);
    assert_eq!(w.fallback, Fallback::Builtin);
    // The variable is not set in the test environment: start-up must say which one.
    let e = build_error(&cfg);
    assert!(e.contains("responder.secret_env") && e.contains("`LANYARD_TEST_UNSET_SECRET_VAR` is not set"), "{e}");
}

#[test]
fn llm_table_with_defaults() {
    let cfg = parse(
        r#"
        [responder]
        kind = "llm"
        base_url = "http://127.0.0.1:11434/v1"
        model = "llama3.2:1b"
        "#,
    )
    .unwrap();
    let ResponderConfig::Llm(l) = &cfg else { panic!("{cfg:?}") };
    assert_eq!(l.max_body_chars, DEFAULT_MAX_BODY_CHARS);
    assert_eq!(l.timeout_ms, DEFAULT_LLM_TIMEOUT_MS);
    assert_eq!(l.max_attempts, DEFAULT_LLM_ATTEMPTS);
    assert_eq!(l.title, "Lanyard");
    assert_eq!(l.api_key, None);
    assert_eq!(build(&cfg).unwrap().name(), "llm");
}

#[test]
fn unknown_keys_and_kinds_are_errors() {
    let e = parse("[responder]\nkind = \"webhook\"\nurl = \"https://h.example\"\ntimeout = 5\n").unwrap_err();
    assert!(e.contains("unknown field `timeout`"), "{e}");
    let e = parse("[responder]\nkind = \"llm\"\nbase_url = \"https://a.example/v1\"\nmodle = \"m\"\n").unwrap_err();
    assert!(e.contains("unknown field `modle`"), "{e}");
    let e = parse("[responder]\nkind = \"carrier-pigeon\"\n").unwrap_err();
    assert!(e.contains("carrier-pigeon"), "{e}");
    let e = parse("[responder]\nurl = \"https://h.example\"\n").unwrap_err();
    assert!(e.contains("kind"), "{e}");
    let e = parse("[responder]\nkind = \"webhook\"\nurl = \"https://h.example\"\nfallback = \"retry\"\n").unwrap_err();
    assert!(e.contains("retry"), "{e}");
}

#[test]
fn builtin_takes_no_other_keys() {
    let e = parse("[responder]\nkind = \"builtin\"\nurl = \"https://h.example\"\n");
    assert!(e.is_err(), "a stray key next to kind = \"builtin\" was accepted: {e:?}");
}

#[test]
fn start_up_errors_say_what_to_fix() {
    let cases: [(ResponderConfig, &str); 7] = [
        (
            ResponderConfig::Webhook(WebhookConfig::new("ftp://h.example/x", "0123456789abcdef")),
            "responder.url: the scheme is `ftp`",
        ),
        (ResponderConfig::Webhook(WebhookConfig::new("https://h.example/x", "")), "responder.secret: is empty"),
        (ResponderConfig::Webhook(WebhookConfig::new("https://h.example/x", "too-short")), "at least 16 random bytes"),
        (
            ResponderConfig::Webhook(WebhookConfig {
                timeout_ms: 0,
                ..WebhookConfig::new("https://h.example/x", "0123456789abcdef")
            }),
            "responder.timeout_ms: must be above 0",
        ),
        (ResponderConfig::Llm(LlmConfig::new("https://a.example/v1", "")), "responder.model: name the model"),
        (ResponderConfig::Llm(LlmConfig::new("file:///etc/passwd", "m")), "responder.base_url: the scheme is `file`"),
        (
            ResponderConfig::Llm(LlmConfig { max_attempts: 0, ..LlmConfig::new("https://a.example/v1", "m") }),
            "responder.max_attempts",
        ),
    ];
    for (cfg, expected) in cases {
        let e = build_error(&cfg);
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
}

#[test]
fn toml_round_trip() {
    let configs = [
        ResponderConfig::Builtin,
        ResponderConfig::Webhook(WebhookConfig {
            secret: None,
            secret_env: Some("HOOK_SECRET".into()),
            timeout_ms: 1500,
            max_attempts: 5,
            backoff_base_ms: 50,
            fallback: Fallback::Fail,
            ..WebhookConfig::new("https://hooks.example.com/lanyard?v=2", "")
        }),
        ResponderConfig::Webhook(WebhookConfig::new("http://127.0.0.1:9000/hook", "inline-secret-0123456789")),
        ResponderConfig::Llm(LlmConfig {
            api_key: Some(Secret::new("sk-inline")),
            system_prompt: Some("Be brief.\nBe kind.".into()),
            temperature: 0.7,
            max_body_chars: 140,
            ..LlmConfig::new("https://api.openai.com/v1", "gpt-4o-mini")
        }),
        ResponderConfig::Llm(LlmConfig {
            api_key_env: Some("OPENAI_API_KEY".into()),
            ..LlmConfig::new("https://a.example/v1", "m")
        }),
    ];
    for cfg in configs {
        #[derive(serde::Serialize)]
        struct Wrapper<'a> {
            responder: &'a ResponderConfig,
        }
        let text = toml::to_string(&Wrapper { responder: &cfg }).unwrap();
        assert!(text.contains("[responder]") && text.contains("kind = "), "{text}");
        let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg, "{text}");
    }
}

#[test]
fn debug_never_shows_secrets() {
    let cfg = ResponderConfig::Webhook(WebhookConfig::new("https://h.example/x", "inline-secret-0123456789"));
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("inline-secret"), "{shown}");
    let responder = build(&cfg).unwrap();
    assert_eq!(responder.name(), "webhook");
}
