//! The admin API: registering and removing devices over HTTP.
//!
//! Off unless an admin token is configured (`admin_token_hash` in the config
//! file, or `LANYARD_ADMIN_TOKEN`); then every route takes that token and no
//! device token (see [`crate::auth`]). `lanyard device add` does the same as
//! `POST /v1/admin/devices` on the server's own files, for when the operator
//! is on the machine.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use lanyard_proto::wire::{DeletedData, DeviceCreated, NewDevice};
use uuid::Uuid;

use crate::AppState;
use crate::auth::AuthAdmin;
use crate::devices::{self, RegisterError};
use crate::error::ApiError;

/// `POST /v1/admin/devices`: 201 with the new device's token, shown once.
pub async fn add_device(
    State(state): State<AppState>,
    _: AuthAdmin,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceCreated>), ApiError> {
    let Json(NewDevice { name }) =
        body.map_err(|e| ApiError::BadRequest(format!("{e}; send {{\"name\": \"...\"}}")))?;
    let created = devices::register(state.store.as_ref(), &name).await.map_err(|e| match e {
        RegisterError::BadName => ApiError::BadRequest(e.to_string()),
        RegisterError::Duplicate(_) => ApiError::Conflict(e.to_string()),
        RegisterError::Store(e) => e.into(),
    })?;
    tracing::info!(device = %created.id, name = created.name, "device added by the admin API");
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /v1/admin/devices/{id}`: the device's audio, its rows, then the
/// device itself; its open streams are closed.
pub async fn delete_device(
    State(state): State<AppState>,
    _: AuthAdmin,
    Path(id): Path<String>,
) -> Result<Json<DeletedData>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("{id:?} is not a device id (a UUID)")))?;
    if state.store.device(id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no device {id}")));
    }
    let mut deleted = devices::remove_data(&state, id).await?;
    // Utterances made between the two calls go with the device.
    deleted.utterances += state.store.delete_device(id).await?.unwrap_or(0);
    state.hub.disconnect(id);
    tracing::info!(device = %id, utterances = deleted.utterances, "device removed by the admin API");
    Ok(Json(deleted))
}
