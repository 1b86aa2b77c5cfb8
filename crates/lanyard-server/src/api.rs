//! Routes. Every route is versioned under `/v1` except the health check.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, put};
use axum::{Json, Router};
use lanyard_proto::ble::Codec;
use lanyard_proto::oggopus;
use lanyard_proto::wire::{PushRegistration, STREAM_PATH, UploadResponse, UtteranceState, UtteranceView, limits};
use lanyard_store::{PushTarget, StoreError};
use uuid::Uuid;

use crate::auth::AuthDevice;
use crate::error::ApiError;
use crate::{AppState, ingest, now_ms};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(STREAM_PATH, get(ingest::stream))
        .route(
            "/v1/utterances/{id}/audio",
            put(upload).layer(DefaultBodyLimit::max(limits::MAX_UPLOAD_BYTES)),
        )
        .route("/v1/utterances/{id}", get(get_utterance))
        .route("/v1/device/push", put(register_push))
        .with_state(state)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("{id:?} is not a UUID; utterance ids are UUIDv7 minted by the relay")))
}

async fn get_utterance(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
) -> Result<Json<UtteranceView>, ApiError> {
    let id = parse_id(&id)?;
    match state.store.utterance(id).await? {
        Some(u) if u.device_id == device.id => Ok(Json(u.view())),
        // Someone else's utterance is indistinguishable from none.
        _ => Err(ApiError::NotFound(format!("no utterance {id}"))),
    }
}

async fn register_push(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    body: Result<Json<PushRegistration>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(reg) = body.map_err(|e| ApiError::BadRequest(format!("{e}; send {{\"platform\": \"apns\"|\"fcm\", \"token\": \"...\"}}")))?;
    if reg.token.is_empty() || reg.token.len() > 4096 {
        return Err(ApiError::BadRequest("push token must be 1 to 4096 characters".into()));
    }
    state.store.set_push_target(device.id, &PushTarget { platform: reg.platform, token: reg.token }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/utterances/{id}/audio`: the whole utterance as Ogg Opus.
///
/// Idempotent per utterance id. Packet *i* of the file is frame *i*: frames
/// the server already holds (from an earlier stream or upload) are kept, the
/// rest are appended, and the utterance is completed once, by whichever
/// path finishes it first.
async fn upload(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<UploadResponse>), ApiError> {
    let id = parse_id(&id)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "the upload exceeds {} bytes; an utterance is at most {} frames",
            limits::MAX_UPLOAD_BYTES,
            limits::MAX_UTTERANCE_FRAMES
        )),
        _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
    })?;
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !(ctype.starts_with("audio/ogg") || ctype.starts_with("audio/opus")) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type is {ctype:?}; upload the utterance as Ogg Opus with `Content-Type: audio/ogg`"
        )));
    }
    let packets = oggopus::read(&body).map_err(|e| ApiError::BadRequest(format!("the body is not usable Ogg Opus: {e}")))?;
    let frames = packets.len() as u32;
    if frames > limits::MAX_UTTERANCE_FRAMES {
        return Err(ApiError::BadRequest(format!("{frames} frames exceed the limit of {}", limits::MAX_UTTERANCE_FRAMES)));
    }
    let row = state.store.open_utterance(id, device.id, Codec::Opus16k20ms, now_ms()).await.map_err(|e| match e {
        StoreError::WrongDevice(_) => ApiError::NotFound(format!("no utterance {id}")),
        e => e.into(),
    })?;
    if row.codec != Codec::Opus16k20ms {
        return Err(ApiError::Conflict(format!("utterance {id} is being streamed as {:?}, not Opus", row.codec)));
    }
    if row.state != UtteranceState::Receiving {
        let resp = UploadResponse { utterance: id, state: row.state, frames: row.frames, added: 0 };
        return Ok((StatusCode::OK, Json(resp)));
    }
    let audio = state.audio.clone();
    let (device_id, new) = (device.id, packets);
    let (held_before, held) = tokio::task::spawn_blocking(move || -> std::io::Result<(u32, u32)> {
        let w = audio.writer(device_id, id)?;
        let mut w = w.lock().expect("audio lock poisoned");
        let before = w.frames();
        let held = w.append_durable(new.iter().skip(before as usize).map(Vec::as_slice))?;
        Ok((before, held))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("cannot store audio: {e}")))?;
    if held != frames {
        return Err(ApiError::Conflict(format!(
            "the server already holds {held} frames of {id}, more than the {frames} uploaded; upload the whole utterance"
        )));
    }
    ingest::complete(&state, id, frames).await.map_err(ApiError::Internal)?;
    let state_now = state.store.utterance(id).await?.map_or(UtteranceState::Complete, |u| u.state);
    let resp = UploadResponse { utterance: id, state: state_now, frames, added: held - held_before.min(held) };
    Ok((StatusCode::OK, Json(resp)))
}
