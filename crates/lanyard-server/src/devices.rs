//! Registering a device: the one way in, whoever asks. `POST
//! /v1/admin/devices` and `lanyard device add` (which works on the server's
//! own files, for an operator on the machine) both come here, so both check
//! the name the same way and store only the token's hash.

use lanyard_proto::wire::{DeletedData, DeviceCreated};
use lanyard_store::{Store, StoreError};
use thiserror::Error;
use uuid::Uuid;

use crate::error::ApiError;
use crate::token::{hash_token, mint_token};
use crate::{AppState, now_ms};

/// Longest device name, in characters: a label for people, not a document.
pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Error)]
pub enum RegisterError {
    #[error("a device name is 1 to {MAX_NAME_CHARS} characters, without control characters")]
    BadName,
    #[error("a device named {0:?} exists; pick another name")]
    Duplicate(String),
    #[error("store: {0}")]
    Store(StoreError),
}

/// The name as it will be stored (trimmed), if it is one.
pub fn check_name(name: &str) -> Result<&str, RegisterError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(RegisterError::BadName);
    }
    Ok(name)
}

/// Registers a device named `name`: a new id and token. The token is
/// returned here once and stored only as its hash.
pub async fn register(store: &dyn Store, name: &str) -> Result<DeviceCreated, RegisterError> {
    let name = check_name(name)?;
    let token = mint_token();
    let id = Uuid::now_v7();
    store.add_device(id, name, &hash_token(&token), now_ms()).await.map_err(|e| match e {
        StoreError::DuplicateDeviceName(n) => RegisterError::Duplicate(n),
        e => RegisterError::Store(e),
    })?;
    Ok(DeviceCreated { id, name: name.to_owned(), token })
}

/// Deletes a device's audio, then its rows (see `api::delete_utterance`
/// for the order): for a device deleting its own data, and for the admin
/// API's device removal, which then removes the device in the same store
/// call.
pub(crate) async fn remove_data(state: &AppState, device: Uuid) -> Result<DeletedData, ApiError> {
    let audio = state.audio.clone();
    let audio_files = tokio::task::spawn_blocking(move || audio.remove_device(device))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot delete the device's audio: {e}")))?;
    let utterances = state.store.delete_device_data(device).await?;
    Ok(DeletedData { utterances, audio_files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(check_name("  kitchen  ").unwrap(), "kitchen");
        assert!(matches!(check_name(""), Err(RegisterError::BadName)));
        assert!(matches!(check_name("   "), Err(RegisterError::BadName)));
        assert!(matches!(check_name("a\nb"), Err(RegisterError::BadName)));
        assert!(check_name(&"é".repeat(MAX_NAME_CHARS)).is_ok(), "characters, not bytes");
        assert!(matches!(check_name(&"x".repeat(MAX_NAME_CHARS + 1)), Err(RegisterError::BadName)));
    }
}
