//! The HTTP plumbing both remote responders share: the client, bounded
//! answers, and transport failures mapped onto [`RespondError`].

use std::error::Error as _;
use std::time::Duration;

use reqwest::redirect::Policy;

use crate::{ConfigError, RespondError};

/// The largest answer read from an endpoint. A notification holds a few
/// hundred characters; anything near this size is a misbehaving endpoint, and
/// the cap keeps one from filling the server's memory.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How much of a non-2xx answer goes into the error: enough for the
/// endpoint's own explanation ("model not found"), not a whole HTML page.
const DETAIL_CHARS: usize = 200;

/// A client for one responder.
///
/// Redirects are not followed: a redirected POST turns into a GET on most
/// servers, and a signed request should reach exactly the configured URL. A
/// 3xx is therefore reported as a non-retryable status, telling the operator
/// to fix the URL.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .user_agent(concat!("lanyard-respond/", env!("CARGO_PKG_VERSION")))
        .redirect(Policy::none())
        .connect_timeout(timeout)
        .build()
        .map_err(|e| ConfigError::Client(e.to_string()))
}

/// Sends `request` and returns the body of a 2xx answer.
///
/// `secret`, when given, is cut out of any error detail, in case an endpoint
/// echoes the credential it was sent.
pub(crate) async fn send(request: reqwest::RequestBuilder, secret: Option<&str>) -> Result<Vec<u8>, RespondError> {
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            if !status.is_success() {
                break; // The start is all the error detail needs.
            }
            return Err(RespondError::InvalidAnswer(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body);
    let mut detail = crate::text::truncate_chars(&crate::text::collapse_whitespace(&text), DETAIL_CHARS);
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        detail = detail.replace(secret, "<redacted>");
    }
    if detail.is_empty() {
        detail = status.canonical_reason().unwrap_or("no explanation given").to_string();
    }
    Err(RespondError::Status { status: status.as_u16(), detail })
}

/// A failure below HTTP: the error and its causes ("connection refused"),
/// without the URL, which may carry a token in its query string.
fn transport_error(error: reqwest::Error) -> RespondError {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    RespondError::Transport(message)
}
