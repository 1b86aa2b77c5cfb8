//! Routes. Every route is versioned under `/v1` except the health check,
//! `/metrics` and `/openapi.json`.
//!
//! [`routes`] is the one list of them: the router is built from it, and so is
//! the OpenAPI document, from each route's [`Doc`].

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{
    DeletedData, PushRegistration, STREAM_PATH, TextUtterance, UploadResponse, UtteranceState, UtteranceView, limits,
};
use lanyard_proto::{oggopus, opus_toc, wav};
use lanyard_store::{Completion, PushTarget, StoreError, Utterance};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthDevice;
use crate::error::ApiError;
use crate::metrics::{self, Limit, Limited};
use crate::{AppState, admin, devices, ingest, now_ms, transcribe};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: Bearer <device token>`.
    Device,
    /// `Authorization: Bearer <admin token>`.
    Admin,
}

/// What the OpenAPI document says about a route. Schemas are named as in
/// `openapi`'s components.
pub struct Doc {
    pub summary: &'static str,
    pub auth: Auth,
    /// Query parameters: (name, schema name, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// The request body: (content type, schema name).
    pub body: Option<(&'static str, &'static str)>,
    /// Responses: (status, description, schema name; `None` for no body).
    /// Error statuses carry an `ErrorBody`.
    pub responses: &'static [(u16, &'static str, Option<&'static str>)],
}

/// One route: the one table the router and the OpenAPI document are built from.
pub struct Route {
    /// Lowercase, as OpenAPI spells it.
    pub method: &'static str,
    /// An axum path template; `{id}` is a path parameter.
    pub path: &'static str,
    pub handler: MethodRouter<AppState>,
    pub doc: Doc,
}

const E400: (u16, &str, Option<&str>) = (400, "The request is malformed; the message says how.", Some("ErrorBody"));
const E401: (u16, &str, Option<&str>) = (401, "No token, or not a device's token.", Some("ErrorBody"));
const E404: (u16, &str, Option<&str>) =
    (404, "No such utterance for this device (another device's looks the same).", Some("ErrorBody"));
const E410: (u16, &str, Option<&str>) =
    (410, "`gone`: the utterance was deleted, and its id is not accepted again; drop the copy.", Some("ErrorBody"));
const E429: (u16, &str, Option<&str>) =
    (429, "Over the device's request rate; `Retry-After` says when to try again.", Some("ErrorBody"));
const UPLOAD_410: (u16, &str, Option<&str>) = (
    410,
    "`gone`: the utterance was deleted, and its id is not accepted again; or `expired`: the upload came after its \
     `expires_ms`. Drop the file either way.",
    Some("ErrorBody"),
);
const ADMIN_401: (u16, &str, Option<&str>) = (401, "No token.", Some("ErrorBody"));
const ADMIN_403: (u16, &str, Option<&str>) =
    (403, "Not the admin token (device tokens never work here).", Some("ErrorBody"));
const ADMIN_404: (u16, &str, Option<&str>) =
    (404, "`admin_disabled`: no admin token is configured; or no such device.", Some("ErrorBody"));

/// Every route, in registration order.
pub fn routes() -> Vec<Route> {
    [service_routes(), speech_routes(), utterance_routes(), device_routes()].into_iter().flatten().collect()
}

/// The server's own: liveness, metrics, this API's document.
fn service_routes() -> Vec<Route> {
    vec![
        Route {
            method: "get",
            path: "/healthz",
            handler: get(|| async { "ok" }),
            doc: Doc {
                summary: "Liveness: answers `ok`.",
                auth: Auth::None,
                query: &[],
                body: None,
                responses: &[(200, "Alive.", Some("text"))],
            },
        },
        Route {
            method: "get",
            path: "/metrics",
            handler: get(|| async { crate::metrics::render() }),
            doc: Doc {
                summary: "Prometheus metrics, in the text exposition format. Aggregates only, no device ids.",
                auth: Auth::None,
                query: &[],
                body: None,
                responses: &[(200, "The metrics.", Some("text"))],
            },
        },
        Route {
            method: "get",
            path: "/openapi.json",
            handler: get(|State(state): State<AppState>| async move { Json(state.openapi.as_ref().clone()) }),
            doc: Doc {
                summary: "This document.",
                auth: Auth::None,
                query: &[],
                body: None,
                responses: &[(200, "OpenAPI 3.1.", Some("object"))],
            },
        },
    ]
}

/// Speech in: the streaming WebSocket and the OpenAI-compatible transcription.
fn speech_routes() -> Vec<Route> {
    vec![
        Route {
            method: "get",
            path: STREAM_PATH,
            handler: get(ingest::stream),
            doc: Doc {
                summary: "Upgrades to the streaming WebSocket (docs/protocol.md): audio up, durable acks and results down.",
                auth: Auth::Device,
                query: &[],
                body: None,
                responses: &[
                    (101, "Switching to the WebSocket protocol.", None),
                    (
                        400,
                        "Not a WebSocket upgrade: the `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version: 13` header is missing or wrong.",
                        Some("ErrorBody"),
                    ),
                    E401,
                    (
                        429,
                        "`too_many_streams`: the device has its maximum of streams open; or `rate_limited`: it spent its utterance opens, and `Retry-After` says when to come back.",
                        Some("ErrorBody"),
                    ),
                ],
            },
        },
        Route {
            method: "post",
            path: "/v1/audio/transcriptions",
            handler: post(transcribe::transcriptions).layer(DefaultBodyLimit::max(transcribe::MAX_BODY_BYTES)),
            doc: Doc {
                summary: "OpenAI-compatible speech-to-text on this node's model, for another Lanyard node or any OpenAI client. \
                          Multipart fields: `file` (WAV at any rate, or Ogg Opus; at most 600 s), `model` (ignored), \
                          `response_format` (`json`, `text`, `verbose_json`, `srt` or `vtt`), \
                          `timestamp_granularities[]` (`segment`, `word`; verbose_json only), `language` (`en` or absent).",
                auth: Auth::Device,
                query: &[],
                body: Some(("multipart/form-data", "TranscriptionRequest")),
                responses: &[
                    (
                        200,
                        "The transcript in the response_format asked for: `{\"text\": ...}`, verbose JSON with segments (and words), plain text, SRT or WebVTT.",
                        Some("Transcriptions"),
                    ),
                    (
                        400,
                        "Malformed: no `file`, a broken WAV or Ogg, over 600 s, an unknown response_format, language or timestamp granularity, or granularities without verbose_json.",
                        Some("ErrorBody"),
                    ),
                    E401,
                    (413, "Over 25 MiB.", Some("ErrorBody")),
                    (
                        415,
                        "Not multipart, or a file that is neither WAV (PCM or float) nor Ogg Opus.",
                        Some("ErrorBody"),
                    ),
                    (
                        429,
                        "`rate_limited`: over the device's request rate; or `too_many_requests`: the device has its maximum of transcriptions in progress. `Retry-After` says when to try again.",
                        Some("ErrorBody"),
                    ),
                ],
            },
        },
    ]
}

/// A device's utterances: list, read, delete, upload audio or text.
fn utterance_routes() -> Vec<Route> {
    vec![
        Route {
            method: "get",
            path: "/v1/utterances",
            handler: get(list_utterances),
            doc: Doc {
                summary: "The device's utterances, newest first, one page at a time.",
                auth: Auth::Device,
                query: &[
                    ("limit", "Limit", "Utterances per page, 1 to 200; 50 when absent."),
                    ("before", "Uuid", "`next_before` of the previous page; absent for the newest page."),
                ],
                body: None,
                responses: &[(200, "One page.", Some("UtteranceList")), E400, E401],
            },
        },
        Route {
            method: "get",
            path: "/v1/utterances/{id}",
            handler: get(get_utterance),
            doc: Doc {
                summary: "One utterance of the device.",
                auth: Auth::Device,
                query: &[],
                body: None,
                responses: &[(200, "The utterance.", Some("UtteranceView")), E400, E401, E404],
            },
        },
        Route {
            method: "delete",
            path: "/v1/utterances/{id}",
            handler: delete(delete_utterance),
            doc: Doc {
                summary: "Deletes one utterance of the device: its row, transcript, reply, push request and audio file.",
                auth: Auth::Device,
                query: &[],
                body: None,
                responses: &[(204, "Deleted.", None), E400, E401, E404],
            },
        },
        Route {
            method: "put",
            path: "/v1/utterances/{id}/audio",
            // Each codec has its own limit, applied while the body is read
            // (`read_upload`), so the route sets none.
            handler: put(upload).layer(DefaultBodyLimit::disable()),
            doc: Doc {
                summary: "The whole utterance as Ogg Opus (`audio/ogg`) or PCM16 WAV (`audio/wav`). Idempotent per id.",
                auth: Auth::Device,
                query: &[
                    (
                        "speech_frames",
                        "FrameCount",
                        "Transcribe only the first this many frames: the relay cut the utterance at the server's endpoint and \
                     carried the rest into its next one (as `end`'s `speech_frames`). At most the frames uploaded.",
                    ),
                    (
                        "expires_ms",
                        "UnixMs",
                        "When the phone stops wanting the utterance answered (its time-to-live, from when it began). \
                     An upload that arrives later is refused, 410 `expired`.",
                    ),
                    (
                        "unmarked",
                        "Flag",
                        "1: no start marker opened the utterance (a pendant without a button; the stream's `open` says \
                     `unmarked`). If it holds no speech it is stored, transcribed as nothing, and not answered. \
                     0 (the default): answered even when nothing was heard.",
                    ),
                ],
                body: Some(("audio/ogg", "binary")),
                responses: &[
                    (200, "Stored; the utterance is complete (or was already).", Some("UploadResponse")),
                    E400,
                    E401,
                    E404,
                    (409, "The utterance has another codec.", Some("ErrorBody")),
                    UPLOAD_410,
                    (
                        413,
                        "Over the longest utterance's bytes: 4 MiB of Ogg Opus, 19.2 MB of WAV (10 minutes of PCM16).",
                        Some("ErrorBody"),
                    ),
                    (415, "Neither Ogg Opus nor WAV.", Some("ErrorBody")),
                    (
                        429,
                        "`rate_limited`: over the device's request or upload frame rate (`Retry-After` says when); or \
                         `too_many_uploads`: the device has two uploads in progress.",
                        Some("ErrorBody"),
                    ),
                ],
            },
        },
        Route {
            method: "post",
            path: "/v1/utterances/{id}/text",
            handler: post(post_text),
            doc: Doc {
                summary: "An utterance transcribed on the phone; it gets a reply like audio does. Idempotent per id.",
                auth: Auth::Device,
                query: &[],
                body: Some(("application/json", "TextUtterance")),
                responses: &[
                    (202, "Created and queued for a reply.", Some("UtteranceView")),
                    (200, "Already known; unchanged.", Some("UtteranceView")),
                    E400,
                    E401,
                    E404,
                    (409, "The id is an audio utterance.", Some("ErrorBody")),
                    E410,
                    (413, "A body over 2 MiB.", Some("ErrorBody")),
                    E429,
                ],
            },
        },
    ]
}

/// A device's own settings and data, and the admin API.
fn device_routes() -> Vec<Route> {
    vec![
        Route {
            method: "put",
            path: "/v1/device/push",
            handler: put(register_push),
            doc: Doc {
                summary: "Sets where the device's notifications go, replacing the previous token.",
                auth: Auth::Device,
                query: &[],
                body: Some(("application/json", "PushRegistration")),
                responses: &[(204, "Registered.", None), E400, E401],
            },
        },
        Route {
            method: "delete",
            path: "/v1/device/data",
            handler: delete(delete_device_data),
            doc: Doc {
                summary: "Deletes all of the device's utterances and audio; the device stays registered.",
                auth: Auth::Device,
                query: &[],
                body: None,
                responses: &[(200, "What was deleted.", Some("DeletedData")), E401],
            },
        },
        Route {
            method: "post",
            path: "/v1/admin/devices",
            handler: post(admin::add_device),
            doc: Doc {
                summary: "Registers a device. Its token is in this answer only.",
                auth: Auth::Admin,
                query: &[],
                body: Some(("application/json", "NewDevice")),
                responses: &[
                    (201, "Registered.", Some("DeviceCreated")),
                    E400,
                    ADMIN_401,
                    ADMIN_403,
                    ADMIN_404,
                    (409, "A device has that name.", Some("ErrorBody")),
                ],
            },
        },
        Route {
            method: "delete",
            path: "/v1/admin/devices/{id}",
            handler: delete(admin::delete_device),
            doc: Doc {
                summary: "Removes a device with all its utterances and audio; its token stops working.",
                auth: Auth::Admin,
                query: &[],
                body: None,
                responses: &[(200, "What was deleted.", Some("DeletedData")), E400, ADMIN_401, ADMIN_403, ADMIN_404],
            },
        },
    ]
}

pub fn router(state: AppState) -> Router {
    routes().into_iter().fold(Router::new(), |r, route| r.route(route.path, route.handler)).with_state(state)
}

/// An utterance id from a path or query: a UUID of version 4 or 7
/// (`wire::is_random_id`), or 400.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    let parsed = Uuid::parse_str(id).map_err(|_| {
        ApiError::BadRequest(format!("{id:?} is not a UUID; utterance ids are UUIDv7 minted by the relay"))
    })?;
    if !lanyard_proto::wire::is_random_id(&parsed) {
        return Err(ApiError::BadRequest(crate::error::invalid_id_message(parsed)));
    }
    Ok(parsed)
}

/// Where an utterance's audio stands, beside its view in every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AudioStatus {
    /// The audio file is on the server.
    Stored,
    /// Deleted by the retention policy (`[audio] retention_days`); the
    /// transcript and reply remain.
    Purged,
    /// A text-only utterance: there never was audio.
    None,
}

/// An utterance as the API answers it: the wire view (`UtteranceView`,
/// flattened) and the audio's status. The extra keys are ignored by clients
/// that read only the view.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UtteranceBody {
    #[serde(flatten)]
    pub view: UtteranceView,
    pub audio: AudioStatus,
    /// When the retention policy deleted the audio.
    pub audio_purged_ms: Option<i64>,
}

impl UtteranceBody {
    pub(crate) fn of(u: &Utterance) -> Self {
        let audio = match (u.codec, u.audio_purged_ms) {
            (None, _) => AudioStatus::None,
            (Some(_), Some(_)) => AudioStatus::Purged,
            (Some(_), None) => AudioStatus::Stored,
        };
        Self { view: u.view(), audio, audio_purged_ms: u.audio_purged_ms }
    }
}

/// `GET /v1/utterances`'s page, with [`UtteranceBody`] items.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UtteranceListBody {
    pub utterances: Vec<UtteranceBody>,
    pub next_before: Option<Uuid>,
}

async fn get_utterance(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
) -> Result<Json<UtteranceBody>, ApiError> {
    let id = parse_id(&id)?;
    match state.store.utterance(id).await? {
        Some(u) if u.device_id == device.id => Ok(Json(UtteranceBody::of(&u))),
        // Someone else's utterance is indistinguishable from none.
        _ => Err(ApiError::NotFound(format!("no utterance {id}"))),
    }
}

/// `?limit=N&before=<uuid>` of `GET /v1/utterances`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<u32>,
    before: Option<String>,
}

/// `GET /v1/utterances`: newest first, keyset-paged by id.
async fn list_utterances(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UtteranceListBody>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::BadRequest(format!(
            "{e}; the query takes `limit` (1 to {}) and `before` (an utterance id)",
            limits::LIST_MAX
        ))
    })?;
    let limit = params.limit.unwrap_or(limits::LIST_DEFAULT);
    if !(1..=limits::LIST_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {}, not {limit}", limits::LIST_MAX)));
    }
    let before = params.before.as_deref().map(parse_id).transpose()?;
    // One more than asked tells whether another page follows, without a count.
    let mut rows = state.store.list_utterances(device.id, before, limit + 1).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_before = if more { rows.last().map(|u| u.id) } else { None };
    Ok(Json(UtteranceListBody { utterances: rows.iter().map(UtteranceBody::of).collect(), next_before }))
}

/// `DELETE /v1/utterances/{id}`: the audio file first, then the rows. A crash
/// between the two leaves the row, so a retried delete finishes the job; the
/// other order could leave audio that no retry can find.
async fn delete_utterance(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    match state.store.utterance(id).await? {
        Some(u) if u.device_id == device.id => {}
        _ => return Err(ApiError::NotFound(format!("no utterance {id}"))),
    }
    let audio = state.audio.clone();
    tokio::task::spawn_blocking(move || audio.remove(device.id, id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot delete the audio of {id}: {e}")))?;
    if !state.store.delete_utterance(device.id, id).await? {
        // Deleted by a concurrent request: the outcome asked for.
        tracing::info!(utterance = %id, "utterance deleted concurrently");
    }
    tracing::info!(device = %device.id, utterance = %id, "utterance deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/device/data`: every utterance and audio file of the device.
async fn delete_device_data(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
) -> Result<Json<DeletedData>, ApiError> {
    let deleted = devices::remove_data(&state, device.id).await?;
    tracing::info!(device = %device.id, utterances = deleted.utterances, audio_files = deleted.audio_files, "device data deleted");
    Ok(Json(deleted))
}

async fn register_push(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    body: Result<Json<PushRegistration>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(reg) = body.map_err(|e| {
        ApiError::BadRequest(format!("{e}; send {{\"platform\": \"apns\"|\"fcm\", \"token\": \"...\"}}"))
    })?;
    if reg.token.is_empty() || reg.token.len() > 4096 {
        return Err(ApiError::BadRequest("push token must be 1 to 4096 characters".into()));
    }
    let target = PushTarget { platform: reg.platform, token: reg.token, environment: reg.environment };
    state.store.set_push_target(device.id, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest text-only utterance, in bytes: ten minutes of fast speech.
/// The longest text utterance, in characters (as the OpenAPI document's
/// `maxLength` counts): ten minutes of fast speech is about 9,000.
const MAX_TEXT_UTTERANCE_CHARS: usize = 16 * 1024;

/// `POST /v1/utterances/{id}/text`: an utterance the phone transcribed
/// itself. It takes the same reply path as audio. Idempotent per id.
async fn post_text(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    body: Result<Json<TextUtterance>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<UtteranceBody>), ApiError> {
    state.limiter.take_request(device.id)?;
    let id = parse_id(&id)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(format!("{e}; send {{\"text\": \"...\"}}")))?;
    // Counted as sent, before trimming, as the document's maxLength is.
    let chars = body.text.chars().count();
    if chars > MAX_TEXT_UTTERANCE_CHARS {
        return Err(ApiError::BadRequest(format!(
            "the text is {chars} characters; an utterance is at most {MAX_TEXT_UTTERANCE_CHARS}: split it"
        )));
    }
    let text = body.text.trim();
    if text.is_empty() {
        return Err(ApiError::BadRequest("the text is empty; send what the user said".into()));
    }
    let (row, created) =
        state.store.create_text_utterance(id, device.id, text, now_ms()).await.map_err(|e| match e {
            StoreError::WrongDevice(_) => ApiError::NotFound(format!("no utterance {id}")),
            e => e.into(),
        })?;
    if row.codec.is_some() {
        return Err(ApiError::Conflict(format!("utterance {id} carries audio; mint a new id for text")));
    }
    if created {
        state.pipeline.enqueue(device.id, id).await;
        return Ok((StatusCode::ACCEPTED, Json(UtteranceBody::of(&row))));
    }
    Ok((StatusCode::OK, Json(UtteranceBody::of(&row))))
}

/// `?speech_frames=N&expires_ms=T&unmarked=1` of `PUT /v1/utterances/{id}/audio`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    speech_frames: Option<u32>,
    /// `1`: no start marker opened the utterance (the stream's `open` says
    /// `unmarked`); with no speech in it, it is stored without a reply.
    /// `0`, or absent: it is answered even when nothing was heard.
    #[serde(default, deserialize_with = "flag")]
    unmarked: bool,
    /// Unix ms after which the phone no longer wants the utterance answered
    /// (its time-to-live): a background upload that iOS runs later is
    /// refused, 410 `expired`, and counted.
    expires_ms: Option<i64>,
}

/// A query flag: `1` or `0` (what the relay writes), `true` or `false`.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?.as_ref() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(serde::de::Error::custom(format!("`unmarked` is 0 or 1, not {other:?}"))),
    }
}

/// The codec an upload's `Content-Type` names.
fn upload_codec(headers: &HeaderMap) -> Result<Codec, ApiError> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ctype.starts_with("audio/ogg") || ctype.starts_with("audio/opus") {
        Ok(Codec::Opus16k20ms)
    } else if ["audio/wav", "audio/x-wav", "audio/wave"].iter().any(|t| ctype.starts_with(t)) {
        Ok(Codec::Pcm16k)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type is {ctype:?}; upload Opus utterances as `audio/ogg` (Ogg Opus) and PCM16 ones as `audio/wav`"
        )))
    }
}

/// Reads an upload's body, at most its codec's limit (the longest
/// utterance's bytes: [`limits::MAX_UPLOAD_BYTES`] of Ogg Opus,
/// [`limits::MAX_WAV_UPLOAD_BYTES`] of WAV), into its frames, each judged
/// by its duration before anything decodes it (see `opus_toc`).
async fn read_upload(codec: Codec, body: axum::body::Body) -> Result<Vec<Vec<u8>>, ApiError> {
    let limit = match codec {
        Codec::Opus16k20ms => limits::MAX_UPLOAD_BYTES,
        Codec::Pcm16k => limits::MAX_WAV_UPLOAD_BYTES,
    };
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            ApiError::PayloadTooLarge(format!(
                "the upload exceeds {limit} bytes, the most a {codec:?} utterance of {} frames ({} minutes) takes",
                limits::MAX_UTTERANCE_FRAMES,
                limits::MAX_UTTERANCE_FRAMES / 50 / 60
            ))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })?;
    let packets = match codec {
        Codec::Opus16k20ms => {
            oggopus::read(&body).map_err(|e| ApiError::BadRequest(format!("the body is not usable Ogg Opus: {e}")))?
        }
        Codec::Pcm16k => {
            wav::read(&body).map_err(|e| ApiError::BadRequest(format!("the body is not usable WAV: {e}")))?
        }
    };
    if let Some((index, e)) =
        packets.iter().enumerate().find_map(|(i, p)| opus_toc::check_frame(codec, p).err().map(|e| (i, e)))
    {
        metrics::emit(Limited { limit: Limit::FrameDuration });
        return Err(ApiError::BadRequest(format!("packet {index} of the upload: {e}")));
    }
    let frames = packets.len() as u32;
    if frames > limits::MAX_UTTERANCE_FRAMES {
        return Err(ApiError::BadRequest(format!(
            "{frames} frames exceed the limit of {}",
            limits::MAX_UTTERANCE_FRAMES
        )));
    }
    Ok(packets)
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
    params: Result<Query<UploadParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<UploadResponse>), ApiError> {
    state.limiter.take_request(device.id)?;
    let id = parse_id(&id)?;
    let Query(UploadParams { speech_frames, expires_ms, unmarked }) = params.map_err(|e| {
        ApiError::BadRequest(format!(
            "{e}; the query takes only `speech_frames` (the frames to transcribe), `expires_ms` (Unix ms) and \
             `unmarked` (0 or 1)"
        ))
    })?;
    let codec = upload_codec(&headers)?;
    // Held until the upload is answered: its body is in memory until then.
    let _slot = state.limiter.upload_slot(device.id)?;
    let packets = read_upload(codec, body).await?;
    let frames = packets.len() as u32;
    if let Some(speech) = speech_frames.filter(|&s| s > frames) {
        return Err(ApiError::BadRequest(format!(
            "speech_frames is {speech} but the upload has {frames} frames; send at most the frames uploaded"
        )));
    }
    // Checked once the request is known to be well formed, so a malformed
    // one still gets its 400 or 415. An utterance that is already complete
    // (streamed before the upload ran) is answered as usual: it was
    // delivered in time.
    let now = now_ms();
    let delivered = match expires_ms.filter(|&t| t < now) {
        Some(_) => state
            .store
            .utterance(id)
            .await?
            .is_some_and(|u| u.device_id == device.id && u.state != UtteranceState::Receiving),
        None => true,
    };
    if let Some(expiry) = expires_ms.filter(|&t| t < now && !delivered) {
        metrics::emit(Limited { limit: Limit::Expired });
        return Err(ApiError::Expired(format!(
            "the upload expired at {expiry} (Unix ms), {:.0} s ago: the phone's time-to-live for it has passed, so it \
             is not transcribed or answered. Drop the file; the phone counts the utterance as discarded",
            (now - expiry) as f64 / 1000.0
        )));
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
    // Uploaded audio spends a frame budget too, as streamed audio does
    // (see `limits`): a request rate alone would let 30,000 frames through
    // ten times a second.
    state.limiter.upload_frames(device.id, frames).map_err(|wait| {
        metrics::emit(Limited { limit: Limit::Frames });
        ApiError::TooManyRequests {
            code: "rate_limited",
            message: format!(
                "uploads carry at most {} frames a second (one whole utterance at once); retry after the Retry-After header's seconds",
                state.limiter.cfg.frames_per_sec
            ),
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    })?;
    let audio = state.audio.clone();
    let (device_id, new) = (device.id, packets);
    let (held_before, held) = tokio::task::spawn_blocking(move || -> std::io::Result<(u32, u32)> {
        let w = audio.writer(device_id, id)?;
        let mut w = w.lock().expect("audio lock poisoned");
        let before = w.frames();
        let held = w.append_durable(0, new.iter().map(Vec::as_slice))?;
        Ok((before, held))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(format!("cannot store audio: {e}")))?;
    // The upload is the whole utterance as the phone holds it. Holding more
    // means the phone's spool lost frames the server had acknowledged (an
    // OS crash inside its fsync window): the server's copy has every frame
    // the device sent, so the utterance completes with it. Refusing would
    // leave the phone nothing better to upload.
    if held > frames {
        tracing::warn!(%id, held, uploaded = frames, "upload shorter than the audio held; completing with the held frames");
    }
    let end = Completion { frames: held, speech_frames, unmarked };
    ingest::complete(&state, device.id, id, end).await.map_err(ApiError::Internal)?;
    let state_now = state.store.utterance(id).await?.map_or(UtteranceState::Complete, |u| u.state);
    let resp = UploadResponse { utterance: id, state: state_now, frames: held, added: held - held_before.min(held) };
    Ok((StatusCode::OK, Json(resp)))
}
