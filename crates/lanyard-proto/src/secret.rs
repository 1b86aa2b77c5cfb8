//! [`Secret`]: the one type for a credential in a configuration: a device
//! token, the admin token, a webhook's signing secret, an API key.
//!
//! Its `Debug` and `Display` print `<redacted>`, so a config, an error or a
//! log line that formats one never shows it; the value is read only with
//! [`Secret::expose`], at the few places that put it on the wire (a bearer
//! header, an HMAC key). It (de)serializes as the plain string, so that an
//! inline `api_key = "…"` reads from, and writes back to, a TOML file:
//! serialize a config to write a config file, never to log it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A credential. See the module doc.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for the request that sends it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty, or only white space: given, but not set.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// For flags (`clap` parses through it): any string is a credential.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("lyd_0123456789abcdef");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(<redacted>))");
        assert_eq!(s.expose(), "lyd_0123456789abcdef");
        assert!(Secret::new(" \n").is_blank() && !s.is_blank());
        // A config file's inline key reads as the plain string.
        let back: Secret = serde_json::from_str("\"k\"").unwrap();
        assert_eq!(back.expose(), "k");
    }
}
