//! Device tokens and the admin token: minted once, shown once, stored only
//! as a hash.
//!
//! A token is 32 random bytes, base64url-encoded behind a `lyd_` prefix (so
//! secret scanners can recognise it). It has 256 bits of entropy, so a plain
//! SHA-256 is the right hash: a slow password hash protects low-entropy
//! secrets and would only add latency to every request here.
//!
//! The two kinds never stand in for each other: a device route looks the
//! token up among devices (the admin token is none, so 401), and an admin
//! route compares it with the admin token's hash (a device token differs,
//! so 403). The admin comparison is constant-time on the hashes, so the time
//! it takes tells nothing about how much of a guess was right.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use lanyard_store::Device;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

pub use crate::token::{hash_token, mint_token};

/// The bearer token of a request, or why there is none.
fn bearer<'a>(parts: &'a Parts, missing: &'static str) -> Result<&'a str, ApiError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or(ApiError::Unauthorized(missing))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// The authenticated device of a request, from `Authorization: Bearer ...`.
pub struct AuthDevice(pub Device);

impl FromRequestParts<AppState> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts, "send the device token as `Authorization: Bearer <token>`")?;
        let device = state
            .store
            .device_by_token_hash(&hash_token(token))
            .await?
            .ok_or(ApiError::Unauthorized("unknown device token; create one with `lanyard device add NAME`"))?;
        Ok(AuthDevice(device))
    }
}

/// A request made with the admin token. Without an admin token configured,
/// every admin route answers 404 `admin_disabled`, saying how to enable it,
/// to a request that carries a token; one without any is 401 first, as on
/// every route that needs one.
pub struct AuthAdmin;

impl FromRequestParts<AppState> for AuthAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts, "send the admin token as `Authorization: Bearer <token>`")?;
        let Some(want) = state.admin_token_hash else {
            return Err(ApiError::AdminDisabled);
        };
        if bool::from(hash_token(token).ct_eq(&want)) {
            Ok(AuthAdmin)
        } else {
            Err(ApiError::Forbidden("this is not the admin token; device tokens do not work on admin routes".into()))
        }
    }
}

/// The device of a stream request, with its token's hash. As
/// [`AuthDevice`], except that a token whose device was just refused a
/// stream for its opens (`Limiter::refuse_token`) is refused again from
/// memory, before the store is asked: a client reconnecting in a loop costs
/// the server a header parse, not a query.
pub struct StreamDevice(pub Device, pub [u8; 32]);

impl FromRequestParts<AppState> for StreamDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts, "send the device token as `Authorization: Bearer <token>`")?;
        let hash = hash_token(token);
        if let Some(wait) = state.limiter.token_refused(&hash) {
            // Answered when the device may open again (a tarpit, at most
            // `MAX_REFUSAL_HOLD`): a client that reconnects as soon as it
            // reads the 429 loops at the opens rate.
            if let Some(_held) = state.limiter.hold_refusal(hash) {
                tokio::time::sleep(wait.min(crate::limits::MAX_REFUSAL_HOLD)).await;
            }
            return Err(state.limiter.opens_refusal(wait));
        }
        let AuthDevice(device) = AuthDevice::from_request_parts(parts, state).await?;
        Ok(StreamDevice(device, hash))
    }
}
