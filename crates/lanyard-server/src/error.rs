//! HTTP errors: every one is a status and a JSON body that says what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_proto::wire::ErrorBody;
use lanyard_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    /// The utterance was deleted; its id is not accepted again.
    #[error("{0}")]
    Gone(String),
    /// An upload past the expiry its phone gave it (`?expires_ms`): 410
    /// `expired`. The phone's time-to-live for it ran out while it waited.
    #[error("{0}")]
    Expired(String),
    /// The admin API is off: no admin token is configured.
    #[error(
        "the admin API is off; set `admin_token_hash` (the SHA-256 of a token, hex) in the config file or LANYARD_ADMIN_TOKEN in the environment, and restart"
    )]
    AdminDisabled,
    /// A per-device limit; `retry_after_secs` goes in the `Retry-After` header.
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after_secs: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match *self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone"),
            ApiError::Expired(_) => (StatusCode::GONE, "expired"),
            ApiError::AdminDisabled => (StatusCode::NOT_FOUND, "admin_disabled"),
            ApiError::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // Another device's id looks exactly like a missing one.
            StoreError::WrongDevice(id) | StoreError::NoUtterance(id) => {
                ApiError::NotFound(format!("no utterance {id}"))
            }
            StoreError::Deleted(id) => {
                crate::metrics::emit(crate::metrics::DeletedRefused);
                ApiError::Gone(gone_message(id))
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// What a client is told when it sends a deleted utterance again, over
/// HTTP (410 `gone`) or the stream (`error` `gone`).
pub(crate) fn gone_message(id: uuid::Uuid) -> String {
    format!("utterance {id} was deleted and is not accepted again; drop your copy of it")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let retry_after = match self {
            ApiError::TooManyRequests { retry_after_secs, .. } => Some(retry_after_secs),
            _ => None,
        };
        let mut response =
            (status, Json(ErrorBody { code: code.to_string(), message: self.to_string() })).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Why a well-formed UUID is refused as an utterance id; shared with the
/// stream's `open`.
pub(crate) fn invalid_id_message(id: uuid::Uuid) -> String {
    format!("{id} is not a random id (UUID version 4 or 7); mint utterance ids with a UUIDv7 generator")
}
