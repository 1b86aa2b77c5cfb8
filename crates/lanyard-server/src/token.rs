//! Device tokens: minted at random, stored only as their hash. A token is
//! 32 random bytes, base64url-encoded behind a `lyd_` prefix (so secret
//! scanners can recognise it); see `auth` for why a plain SHA-256 is the
//! right hash. Pure functions, below everything that checks or stores one.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

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
