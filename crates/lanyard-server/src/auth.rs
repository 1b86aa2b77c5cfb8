//! Device tokens: minted once, shown once, stored only as a hash.
//!
//! A token is 32 random bytes, base64url-encoded behind a `lyd_` prefix (so
//! secret scanners can recognise it). It has 256 bits of entropy, so a plain
//! SHA-256 is the right hash: a slow password hash protects low-entropy
//! secrets and would only add latency to every request here.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use lanyard_store::Device;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;

const PREFIX: &str = "lyd_";

/// A new random device token.
pub fn mint_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The hash under which a token is stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The authenticated device of a request, from `Authorization: Bearer ...`.
pub struct AuthDevice(pub Device);

impl FromRequestParts<AppState> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized("send the device token as `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let device = state
            .store
            .device_by_token_hash(&hash_token(token.trim()))
            .await?
            .ok_or(ApiError::Unauthorized("unknown device token; create one with `lanyard device add NAME`"))?;
        Ok(AuthDevice(device))
    }
}
