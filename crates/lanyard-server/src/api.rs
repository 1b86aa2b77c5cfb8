//! Routes. Every route is versioned under `/v1` except the health check.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lanyard_proto::ble::Codec;
use lanyard_proto::{oggopus, wav};
use lanyard_proto::wire::{PushRegistration, STREAM_PATH, TextUtterance, UploadResponse, UtteranceState, UtteranceView, limits};
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
        .route("/v1/utterances/{id}/text", post(post_text))
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
    let target = PushTarget { platform: reg.platform, token: reg.token, environment: reg.environment };
    state.store.set_push_target(device.id, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest text-only utterance, in bytes: ten minutes of fast speech.
const MAX_TEXT_UTTERANCE_BYTES: usize = 16 * 1024;

/// `POST /v1/utterances/{id}/text`: an utterance the phone transcribed
/// itself. It takes the same reply path as audio. Idempotent per id.
async fn post_text(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    body: Result<Json<TextUtterance>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<UtteranceView>), ApiError> {
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(format!("{e}; send {{\"text\": \"...\"}}")))?;
    let text = body.text.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest("the text is empty; send what the user said".into()));
    }
    if text.len() > MAX_TEXT_UTTERANCE_BYTES {
        return Err(ApiError::PayloadTooLarge(format!("the text exceeds {MAX_TEXT_UTTERANCE_BYTES} bytes")));
    }
    let (row, created) = state.store.create_text_utterance(id, device.id, text, now_ms()).await.map_err(|e| match e {
        StoreError::WrongDevice(_) => ApiError::NotFound(format!("no utterance {id}")),
        e => e.into(),
    })?;
    if row.codec.is_some() {
        return Err(ApiError::Conflict(format!("utterance {id} carries audio; mint a new id for text")));
    }
    if created {
        state.pipeline.enqueue(id).await;
        return Ok((StatusCode::ACCEPTED, Json(row.view())));
    }
    Ok((StatusCode::OK, Json(row.view())))
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
    let (codec, packets) = if ctype.starts_with("audio/ogg") || ctype.starts_with("audio/opus") {
        let packets =
            oggopus::read(&body).map_err(|e| ApiError::BadRequest(format!("the body is not usable Ogg Opus: {e}")))?;
        (Codec::Opus16k20ms, packets)
    } else if ["audio/wav", "audio/x-wav", "audio/wave"].iter().any(|t| ctype.starts_with(t)) {
        let frames = wav::read(&body).map_err(|e| ApiError::BadRequest(format!("the body is not usable WAV: {e}")))?;
        (Codec::Pcm16k, frames)
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type is {ctype:?}; upload Opus utterances as `audio/ogg` (Ogg Opus) and PCM16 ones as `audio/wav`"
        )));
    };
    let frames = packets.len() as u32;
    if frames > limits::MAX_UTTERANCE_FRAMES {
        return Err(ApiError::BadRequest(format!("{frames} frames exceed the limit of {}", limits::MAX_UTTERANCE_FRAMES)));
    }
    let row = state.store.open_utterance(id, device.id, codec, now_ms()).await.map_err(|e| match e {
        StoreError::WrongDevice(_) => ApiError::NotFound(format!("no utterance {id}")),
        e => e.into(),
    })?;
    if row.codec != Some(codec) {
        return Err(ApiError::Conflict(format!("utterance {id} is {:?}, but the upload is {codec:?}", row.codec)));
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
