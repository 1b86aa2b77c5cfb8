//! `POST /v1/audio/transcriptions`: the server's own speech-to-text, in the
//! OpenAI-compatible shape, so that one Lanyard node can transcribe for
//! another (whose `[stt] backend = "remote"` points here) or for any client
//! written against OpenAI's API.
//!
//! # The request
//!
//! `multipart/form-data` with a device token as `Authorization: Bearer ...`:
//!
//! - `file` (required): WAV or Ogg Opus, told apart by their first bytes, not
//!   by the part's name or type (clients label them every which way):
//!   - WAV: integer PCM of 8, 16, 24 or 32 bits, or 32-bit float, at any rate
//!     from [`MIN_RATE`] to [`MAX_RATE`] Hz, any number of channels. Channels
//!     are averaged and other rates resampled to 16 kHz
//!     (`lanyard_stt::resample`), because clients send whatever their
//!     microphone or library produced and rejecting 44.1 kHz would help
//!     nobody. Other encodings (µ-law, ADPCM, ...) are 415.
//!   - Ogg Opus, mono (what Lanyard relays upload); packets of up to 120 ms.
//!   - anything else (MP3, M4A, ...) is 415: convert it to WAV.
//! - `model`: accepted and ignored: a node serves the one model it loaded.
//! - `response_format`: `json` (default, `{"text": "..."}`), `text`
//!   (`text/plain`), `verbose_json` (OpenAI's: duration, language, segments
//!   with their times, words when asked), `srt` or `vtt` (subtitles, one
//!   cue a segment); anything else is 400, naming the valid ones. The
//!   shapes are in `formats`.
//! - `timestamp_granularities[]`: `segment` (the default) and/or `word`,
//!   with `verbose_json` only (400 otherwise, as OpenAI documents). `word`
//!   asks the engine for word times (`SpeechToText::transcribe_with_words`);
//!   an engine that cannot time words answers an empty `words`.
//! - `language`: absent, `en` or `english`; anything else is 400, because the
//!   node's model transcribes English.
//! - other fields (`prompt`, `temperature`, ...) are read and ignored.
//!
//! # Limits
//!
//! - the body: at most [`MAX_BODY_BYTES`] (25 MiB, OpenAI's own limit), else
//!   413. Ten minutes of 16 kHz PCM16 WAV (19.2 MB) fit.
//! - the audio: at most [`MAX_AUDIO_SECS`] (600 s), the longest utterance a
//!   relay may stream (`limits::MAX_UTTERANCE_FRAMES` of 20 ms), else 400.
//! - the device's request rate, shared with uploads and text posts: 429
//!   `rate_limited`.
//! - requests of one device in progress at once: `[limits]
//!   transcriptions_per_device` (2), checked before the body is read, else
//!   429 `too_many_requests`.
//!
//! # Where the work runs
//!
//! On the node's one speech-to-text engine, through its worker pool
//! (`crate::stt_pool`); no second model is loaded. A request is a final, like
//! the pipeline's: it takes its turn among the device's finals, ahead of
//! partials and speculative decodes.

use axum::Json;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard_proto::ble::Codec;
use lanyard_proto::oggopus::{self, OggOpusError};
use lanyard_proto::opus_toc;
use lanyard_proto::wire::limits;
use lanyard_stt::{SttError, Transcript};

use crate::AppState;
use crate::auth::AuthDevice;
use crate::error::ApiError;
use crate::metrics::{self, Limit, Limited, TranscriptionServed};

mod formats;

pub(crate) use formats::wire_segments;
pub use formats::{Granularities, ResponseFormat, srt, timestamp, verbose_json, vtt};

/// The largest request body: OpenAI's 25 MiB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// The longest audio: the longest utterance a relay may stream.
pub const MAX_AUDIO_SECS: u32 = limits::MAX_UTTERANCE_FRAMES / 50;

/// WAV sample rates accepted. Below 8 kHz speech is unintelligible; above
/// 384 kHz is no microphone's.
pub const MIN_RATE: u32 = 8_000;
pub const MAX_RATE: u32 = 384_000;

/// The engines' input rate.
const RATE: u32 = Codec::SAMPLE_RATE;

/// `POST /v1/audio/transcriptions`. See the module doc.
pub(crate) async fn transcriptions(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let result = serve(&state, device.id, multipart).await;
    metrics::emit(TranscriptionServed {
        status: match &result {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        },
    });
    result
}

async fn serve(
    state: &AppState,
    device: uuid::Uuid,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    state.limiter.take_request(device)?;
    // Held to the answer: the body (up to 25 MiB) and the decoded audio
    // live that long.
    let _slot = state.limiter.transcription_slot(device).ok_or_else(|| {
        metrics::emit(Limited { limit: Limit::Transcriptions });
        ApiError::TooManyRequests {
            code: "too_many_requests",
            message: format!(
                "this device has {} transcriptions in progress, its maximum; wait for one to be answered",
                state.limiter.cfg.transcriptions_per_device
            ),
            retry_after_secs: 1,
        }
    })?;
    let multipart = multipart.map_err(|_| {
        ApiError::UnsupportedMediaType(
            "send multipart/form-data with the audio in a `file` field, as OpenAI's /v1/audio/transcriptions takes it"
                .into(),
        )
    })?;
    let form = read_form(multipart).await?;
    // Every field is checked before the audio is decoded or queued.
    let format = ResponseFormat::parse(form.response_format.as_deref()).map_err(ApiError::BadRequest)?;
    let granularities = Granularities::parse(&form.granularities, format).map_err(ApiError::BadRequest)?;
    if let Some(language) = form.language.as_deref().map(str::trim).filter(|l| !l.is_empty())
        && !language.eq_ignore_ascii_case("en")
        && !language.eq_ignore_ascii_case("english")
    {
        return Err(ApiError::BadRequest(format!(
            "language {language:?} is not supported: this node's model transcribes English; send en or leave language out"
        )));
    }
    let file = form.file.ok_or_else(|| {
        ApiError::BadRequest("no `file` field: send the audio (WAV or Ogg Opus) as the multipart field `file`".into())
    })?;
    let pcm = tokio::task::spawn_blocking(move || decode(&file))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)?;

    // A final on the shared engine, in this device's turn (see the module doc).
    let transcript = if granularities.word {
        state.stt.transcribe_with_words(device, pcm).await
    } else {
        state.stt.transcribe(device, pcm).await
    };
    let transcript = transcript.map_err(|e| match e {
        SttError::InvalidAudio { .. } => ApiError::BadRequest(e.to_string()),
        e => ApiError::Internal(format!("transcribing: {e}")),
    })?;
    tracing::info!(%device, model = form.model.as_deref().unwrap_or(""), audio_secs = transcript.audio_secs,
        compute_secs = transcript.compute_secs, "transcription served");
    Ok(answer(&transcript, format, granularities))
}

/// Reads every field of the form; see the module doc for which are used.
async fn read_form(mut multipart: Multipart) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(body_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" if form.file.is_some() => {
                return Err(ApiError::BadRequest("send one `file` field, not several".into()));
            }
            "file" => form.file = Some(field.bytes().await.map_err(body_error)?.to_vec()),
            "response_format" => form.response_format = Some(field.text().await.map_err(body_error)?),
            "language" => form.language = Some(field.text().await.map_err(body_error)?),
            "model" => form.model = Some(field.text().await.map_err(body_error)?),
            // OpenAI's SDKs send a list as repeated `name[]` fields.
            "timestamp_granularities[]" | "timestamp_granularities" => {
                form.granularities.push(field.text().await.map_err(body_error)?)
            }
            // Read to the end so that the stream moves on; the value is unused.
            _ => drop(field.bytes().await.map_err(body_error)?),
        }
    }
    Ok(form)
}

/// The transcript in the format asked for.
fn answer(transcript: &Transcript, format: ResponseFormat, granularities: Granularities) -> Response {
    let plain = |body: String, ctype: &'static str| ([(header::CONTENT_TYPE, ctype)], body).into_response();
    match format {
        ResponseFormat::Json => Json(serde_json::json!({ "text": transcript.text })).into_response(),
        ResponseFormat::VerboseJson => Json(formats::verbose_json(transcript, granularities)).into_response(),
        ResponseFormat::Text => plain(transcript.text.clone(), "text/plain; charset=utf-8"),
        ResponseFormat::Srt => plain(formats::srt(&transcript.segments), "text/plain; charset=utf-8"),
        ResponseFormat::Vtt => plain(formats::vtt(&transcript.segments), "text/vtt; charset=utf-8"),
    }
}

/// The fields of the form that are used.
#[derive(Default)]
struct Form {
    file: Option<Vec<u8>>,
    response_format: Option<String>,
    language: Option<String>,
    model: Option<String>,
    /// Every `timestamp_granularities[]` value, in order.
    granularities: Vec<String>,
}

/// A body that could not be read: over the limit (413) or malformed (400).
fn body_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!(
            "the request exceeds {MAX_BODY_BYTES} bytes (25 MiB); send at most {MAX_AUDIO_SECS} s of audio, as 16 kHz mono WAV or Ogg Opus"
        ))
    } else {
        ApiError::BadRequest(format!("cannot read the multipart body: {}", e.body_text()))
    }
}

/// Why a file cannot be transcribed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MediaError {
    /// Not WAV or Ogg, or an encoding inside them that is not supported: 415.
    #[error("{0}")]
    Unsupported(String),
    /// A WAV or Ogg Opus file that is broken: 400.
    #[error("{0}")]
    Malformed(String),
    /// Longer than [`MAX_AUDIO_SECS`]: 400.
    #[error("the audio lasts {secs:.1} s, over the limit of {MAX_AUDIO_SECS} s; split it")]
    TooLong { secs: f64 },
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Unsupported(m) => ApiError::UnsupportedMediaType(m),
            e => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// The file as 16 kHz mono samples in [-1, 1]. Blocking (decoding and
/// resampling minutes of audio takes a while).
pub fn decode(file: &[u8]) -> Result<Vec<f32>, MediaError> {
    let decoded = decode_any(file);
    if let Err(MediaError::TooLong { .. }) = decoded {
        crate::metrics::emit(crate::metrics::Limited { limit: crate::metrics::Limit::FrameDuration });
    }
    decoded
}

fn decode_any(file: &[u8]) -> Result<Vec<f32>, MediaError> {
    let pcm = if file.len() >= 12 && &file[..4] == b"RIFF" && &file[8..12] == b"WAVE" {
        decode_wav(file)?
    } else if file.starts_with(b"OggS") {
        decode_ogg_opus(file)?
    } else {
        return Err(MediaError::Unsupported(
            "the file is neither WAV nor Ogg Opus; convert it, e.g. `ffmpeg -i IN -ar 16000 -ac 1 out.wav`".into(),
        ));
    };
    let secs = pcm.len() as f64 / f64::from(RATE);
    if secs > f64::from(MAX_AUDIO_SECS) {
        return Err(MediaError::TooLong { secs });
    }
    Ok(pcm)
}

fn decode_ogg_opus(file: &[u8]) -> Result<Vec<f32>, MediaError> {
    let packets = oggopus::read(file).map_err(|e| match e {
        // Each packet is at least 20 ms in Lanyard's files.
        OggOpusError::TooManyPackets => {
            MediaError::TooLong { secs: f64::from(limits::MAX_UTTERANCE_FRAMES + 1) / 50.0 }
        }
        OggOpusError::Channels(n) => {
            MediaError::Unsupported(format!("the Ogg Opus stream has {n} channels; send mono (ffmpeg -ac 1)"))
        }
        e => MediaError::Malformed(format!("the file is not usable Ogg Opus: {e}")),
    })?;
    // What the packets claim, before decoding any: a small file of packets
    // that each say 120 ms is an hour of audio and hundreds of MB decoded.
    let secs = opus_toc::duration_secs(packets.iter().map(Vec::as_slice))
        .map_err(|(index, e)| MediaError::Malformed(format!("Opus packet {index} of the file: {e}")))?;
    if secs > f64::from(MAX_AUDIO_SECS) {
        return Err(MediaError::TooLong { secs });
    }
    lanyard_audio::decode_frames(Codec::Opus16k20ms, packets.iter().map(Vec::as_slice))
        .map_err(|e| MediaError::Malformed(format!("cannot decode the Opus audio: {e}")))
}

/// WAV format tags.
const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

fn decode_wav(file: &[u8]) -> Result<Vec<f32>, MediaError> {
    let malformed = |m: &str| MediaError::Malformed(format!("the WAV is broken: {m}"));
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= file.len() {
        let id = &file[pos..pos + 4];
        let len = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        let body = pos + 8;
        // Streaming writers leave the length at its maximum: read what is there.
        let end = body.saturating_add(len).min(file.len());
        match id {
            b"fmt " => {
                let f = &file[body..end];
                if f.len() < 16 {
                    return Err(malformed("its `fmt ` chunk is short"));
                }
                let mut tag = u16::from_le_bytes([f[0], f[1]]);
                let channels = u16::from_le_bytes([f[2], f[3]]);
                let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
                let bits = u16::from_le_bytes([f[14], f[15]]);
                if tag == WAVE_FORMAT_EXTENSIBLE {
                    // The real tag is the first two bytes of the sub-format GUID.
                    if f.len() < 26 {
                        return Err(malformed("its extensible `fmt ` chunk is short"));
                    }
                    tag = u16::from_le_bytes([f[24], f[25]]);
                }
                format = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err(malformed("its `data` chunk comes before any `fmt ` chunk"));
                };
                return wav_samples(&file[body..end], tag, channels, rate, bits);
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body.saturating_add(len).saturating_add(len & 1);
    }
    Err(malformed(if format.is_some() { "it has no `data` chunk" } else { "it has no `fmt ` chunk" }))
}

fn wav_samples(data: &[u8], tag: u16, channels: u16, rate: u32, bits: u16) -> Result<Vec<f32>, MediaError> {
    let convert = "convert it to 16 kHz mono 16-bit PCM (`ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le out.wav`)";
    let width = match (tag, bits) {
        (WAVE_FORMAT_PCM, 8 | 16 | 24 | 32) | (WAVE_FORMAT_IEEE_FLOAT, 32) => usize::from(bits / 8),
        _ => {
            return Err(MediaError::Unsupported(format!(
                "the WAV holds format {tag} at {bits} bits; only integer PCM (8, 16, 24, 32 bits) and 32-bit float are read: {convert}"
            )));
        }
    };
    if channels == 0 {
        return Err(MediaError::Malformed("the WAV is broken: it declares 0 channels".into()));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(MediaError::Unsupported(format!(
            "the WAV's sample rate is {rate} Hz; {MIN_RATE} to {MAX_RATE} Hz are read: {convert}"
        )));
    }
    let frame_bytes = width * usize::from(channels);
    let frames = data.len() / frame_bytes;
    // Checked before any work, so an overlong file costs no decoding.
    let secs = frames as f64 / f64::from(rate);
    if secs > f64::from(MAX_AUDIO_SECS) {
        return Err(MediaError::TooLong { secs });
    }
    let sample = |b: &[u8]| -> f32 {
        match (tag, width) {
            (WAVE_FORMAT_IEEE_FLOAT, _) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            (_, 1) => (f32::from(b[0]) - 128.0) / 128.0,
            (_, 2) => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0,
            (_, 3) => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
            _ => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
        }
    };
    let scale = 1.0 / f32::from(channels);
    let mono: Vec<f32> = data
        .chunks_exact(frame_bytes)
        .map(|frame| {
            let sum: f32 = frame.chunks_exact(width).map(sample).sum();
            // Float WAVs may hold NaN or values past full scale; the engines take neither.
            let s = sum * scale;
            if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 }
        })
        .collect();
    Ok(lanyard_stt::resample::resample(&mono, rate, RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV with the given header fields around `data`.
    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        let align = u32::from(channels) * u32::from(bits / 8);
        out.extend_from_slice(&(rate * align).to_le_bytes());
        out.extend_from_slice(&(align as u16).to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        // An extra chunk that readers must skip.
        out.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn pcm16(samples: impl IntoIterator<Item = i16>) -> Vec<u8> {
        samples.into_iter().flat_map(i16::to_le_bytes).collect()
    }

    #[test]
    fn wav_at_16k_mono_is_read_sample_for_sample() {
        let samples: Vec<i16> = (0..1600).map(|i| (i * 20 - 16_000) as i16).collect();
        let pcm = decode(&wav(1, 1, 16_000, 16, &pcm16(samples.iter().copied()))).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert!(pcm.iter().zip(&samples).all(|(a, b)| (a - f32::from(*b) / 32_768.0).abs() < 1e-6));
        // Lanyard's own writer, as a relay seals PCM utterances.
        let own = lanyard_proto::wav::write([pcm16(samples.iter().copied()).as_slice()]);
        assert_eq!(decode(&own).unwrap(), pcm);
    }

    #[test]
    fn other_rates_channels_and_widths_become_16k_mono() {
        // One second of stereo 48 kHz: both channels the same tone.
        let tone: Vec<i16> = (0..48_000).map(|i| ((i as f32 * 0.1).sin() * 10_000.0) as i16).collect();
        let stereo = pcm16(tone.iter().flat_map(|s| [*s, *s]));
        let pcm = decode(&wav(1, 2, 48_000, 16, &stereo)).unwrap();
        assert_eq!(pcm.len(), 16_000);
        let peak = pcm.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 10_000.0 / 32_768.0).abs() < 0.01, "{peak}");
        // 32-bit float, 24-bit and 8-bit at 8 kHz: the same half-scale DC.
        let f32le: Vec<u8> = std::iter::repeat_n(0.5f32.to_le_bytes(), 8_000).flatten().collect();
        let s24: Vec<u8> = std::iter::repeat_n([0x00, 0x00, 0x40], 8_000).flatten().collect();
        let u8s = vec![192u8; 8_000];
        for (tag, bits, data) in [(3, 32, f32le), (1, 24, s24), (1, 8, u8s)] {
            let pcm = decode(&wav(tag, 1, 8_000, bits, &data)).unwrap();
            assert_eq!(pcm.len(), 16_000, "{bits} bits");
            assert!((pcm[8_000] - 0.5).abs() < 0.01, "{bits} bits: {}", pcm[8_000]);
        }
    }

    #[test]
    fn what_cannot_be_read_says_so_with_its_status() {
        let unsupported = |r: Result<Vec<f32>, MediaError>| matches!(r, Err(MediaError::Unsupported(_)));
        assert!(unsupported(decode(b"ID3\x04 an mp3")));
        assert!(unsupported(decode(&wav(7, 1, 8_000, 8, &[0; 100]))), "mu-law");
        assert!(unsupported(decode(&wav(1, 1, 16_000, 12, &[0; 100]))));
        assert!(unsupported(decode(&wav(1, 1, 4_000, 16, &[0; 100]))));
        let e = decode(b"ID3").unwrap_err();
        assert!(e.to_string().contains("ffmpeg"), "{e}");
        let broken = |r: Result<Vec<f32>, MediaError>| matches!(r, Err(MediaError::Malformed(_)));
        assert!(broken(decode(b"RIFF\x00\x00\x00\x00WAVE")));
        assert!(broken(decode(b"RIFF\x00\x00\x00\x00WAVEfmt \x04\x00\x00\x00\x01\x00\x01\x00")));
        assert!(broken(decode(&wav(1, 0, 16_000, 16, &[0; 100]))));
        assert!(broken(decode(b"OggS not really")));
        assert_eq!(ApiError::from(MediaError::Unsupported("x".into())).status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(ApiError::from(MediaError::Malformed("x".into())).status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn audio_over_the_limit_is_refused_before_decoding() {
        assert_eq!(MAX_AUDIO_SECS, 600);
        // 600 s at 8 kHz is fine; one more second is not.
        let ok = wav(1, 1, 8_000, 16, &vec![0; 2 * 8_000 * 600]);
        assert_eq!(decode(&ok).unwrap().len(), 16_000 * 600);
        let long = wav(1, 1, 8_000, 16, &vec![0; 2 * 8_000 * 601]);
        let e = decode(&long).unwrap_err();
        assert!(matches!(e, MediaError::TooLong { secs } if (secs - 601.0).abs() < 1e-9), "{e:?}");
        assert!(e.to_string().contains("600 s"), "{e}");
    }

    #[test]
    fn an_ogg_file_claiming_an_hour_is_refused_before_decoding() {
        // 30,000 one-byte packets, each a TOC saying 2 x 60 ms: 3,600 s in under 100 KB.
        let bomb = vec![vec![(3u8 << 3) | 1]; 30_000];
        let ogg = oggopus::write(7, bomb.iter().map(Vec::as_slice));
        assert!(ogg.len() < 100_000, "{} bytes", ogg.len());
        let e = decode(&ogg).unwrap_err();
        assert!(matches!(e, MediaError::TooLong { secs } if (secs - 3_600.0).abs() < 1e-6), "{e:?}");
        // A packet with no duration at all is refused too, by its index.
        let broken = oggopus::write(7, [&[(9u8 << 3) | 3][..]]);
        assert!(decode(&broken).unwrap_err().to_string().contains("packet 0"));
    }

    #[test]
    fn ogg_opus_is_decoded() {
        let mut enc = lanyard_audio::FrameEncoder::new(Codec::Opus16k20ms).unwrap();
        let frames: Vec<Vec<u8>> = (0..50).map(|_| enc.encode(&[0i16; 320]).unwrap()).collect();
        let ogg = oggopus::write(7, frames.iter().map(Vec::as_slice));
        assert_eq!(decode(&ogg).unwrap().len(), 50 * 320);
    }
}
