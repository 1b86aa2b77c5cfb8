//! `GET /openapi.json`: an OpenAPI 3.1 document of every route.
//!
//! Paths come from `api::routes`, the table the router is built from, so a
//! route cannot be served without being described. The schemas are written
//! here by hand from the `lanyard_proto::wire` types; the tests below
//! serialize a value of each type and check that the schema names exactly
//! its fields, so a field added to a type fails the build's tests until it
//! is described.

use serde_json::{Map, Value, json};

use crate::api::{self, Auth};

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in api::routes() {
        let doc = &route.doc;
        let mut op = Map::new();
        op.insert("summary".into(), json!(doc.summary));
        op.insert("operationId".into(), json!(operation_id(route.method, route.path)));
        op.insert(
            "security".into(),
            match doc.auth {
                Auth::None => json!([]),
                Auth::Device => json!([{ "device": [] }]),
                Auth::Admin => json!([{ "admin": [] }]),
            },
        );
        let mut params: Vec<Value> = path_params(route.path)
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": random_id() }))
            .collect();
        params.extend(doc.query.iter().map(|(name, schema, description)| {
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema_ref(schema) })
        }));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some((ctype, schema)) = doc.body {
            let mut content = Map::new();
            content.insert(ctype.into(), json!({ "schema": schema_ref(schema) }));
            if ctype == "audio/ogg" {
                // Uploads take WAV for PCM16 utterances as well.
                content.insert("audio/wav".into(), json!({ "schema": schema_ref(schema) }));
            }
            op.insert("requestBody".into(), json!({ "required": true, "content": content }));
        }
        let mut responses = Map::new();
        for (status, description, schema) in doc.responses {
            let mut r = Map::new();
            r.insert("description".into(), json!(description));
            if let Some(schema) = schema {
                r.insert("content".into(), response_content(schema));
            }
            responses.insert(status.to_string(), Value::Object(r));
        }
        if doc.auth != Auth::None {
            responses.insert(
                "500".into(),
                json!({ "description": "A server fault.", "content": { "application/json": { "schema": schema_ref("ErrorBody") } } }),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry.as_object_mut().expect("path items are objects").insert(route.method.into(), Value::Object(op));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Lanyard server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Relays stream audio over the WebSocket at /v1/stream (framing in docs/protocol.md) or upload it whole; the server transcribes it and replies by push. Every error is an ErrorBody with a stable `code`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "device": { "type": "http", "scheme": "bearer", "description": "A device token (`lyd_...`), from `lanyard device add` or POST /v1/admin/devices." },
                "admin": { "type": "http", "scheme": "bearer", "description": "The admin token (admin_token_hash or LANYARD_ADMIN_TOKEN). Device tokens are refused." }
            },
            "schemas": schemas()
        }
    })
}

/// A response's `content`: JSON of the schema, or plain text for `text`.
/// `Transcriptions` is what `/v1/audio/transcriptions` answers, by its
/// `response_format`: JSON (`json`, `verbose_json`), plain text (`text`,
/// `srt`) or WebVTT (`vtt`).
fn response_content(schema: &str) -> Value {
    match schema {
        "text" => json!({ "text/plain": { "schema": schema_ref("text") } }),
        "Transcriptions" => json!({
            "application/json": { "schema": { "oneOf": [schema_ref("Transcription"), schema_ref("TranscriptionVerbose")] } },
            "text/plain": { "schema": { "type": "string", "description": "`text`: the transcript; `srt`: SubRip cues (00:00:01,500 --> 00:00:03,000)." } },
            "text/vtt": { "schema": { "type": "string", "description": "`vtt`: WEBVTT, then cues (00:00:01.500 --> 00:00:03.000)." } }
        }),
        schema => json!({ "application/json": { "schema": schema_ref(schema) } }),
    }
}

/// `{id}` in `/v1/utterances/{id}` -> `id`.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// `delete` `/v1/utterances/{id}` -> `delete_v1_utterances_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(seg.chars().filter_map(|c| match c {
            '{' | '}' => None,
            c if c.is_ascii_alphanumeric() => Some(c),
            _ => Some('_'),
        }));
    }
    id
}

/// A schema by name: a component, or one of the inline kinds.
fn schema_ref(name: &str) -> Value {
    match name {
        "text" => json!({ "type": "string" }),
        "object" => json!({ "type": "object" }),
        "binary" => json!({ "type": "string", "contentMediaType": "application/octet-stream" }),
        "Uuid" => random_id(),
        "Limit" => json!({ "type": "integer", "minimum": 1, "maximum": lanyard_proto::wire::limits::LIST_MAX }),
        // At most the frames sent, which no schema can say.
        "FrameCount" => json!({ "type": "integer", "minimum": 0 }),
        "UnixMs" => json!({ "type": "integer", "description": "Unix milliseconds." }),
        "Flag" => json!({ "type": "integer", "enum": [0, 1] }),
        component => json!({ "$ref": format!("#/components/schemas/{component}") }),
    }
}

fn nullable(kind: &str) -> Value {
    json!({ "type": [kind, "null"] })
}

fn millis() -> Value {
    json!({ "type": ["integer", "null"], "description": "Unix milliseconds, once reached." })
}

/// An id a client sends: a UUID of version 4 or 7 (RFC 9562), which is all
/// the server accepts (`wire::is_random_id`); the nil UUID and other
/// guessable ids are 400.
fn random_id() -> Value {
    json!({
        "type": "string",
        "format": "uuid",
        "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[47][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$",
        "description": "A UUID of version 4 or 7."
    })
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn seconds(description: &str) -> Value {
    json!({ "type": "number", "minimum": 0, "description": description })
}

fn schemas() -> Value {
    let mut all = serde_json::Map::new();
    for part in [utterance_schemas(), transcription_schemas(), device_schemas()] {
        let Value::Object(part) = part else { unreachable!("each part is a JSON object") };
        all.extend(part);
    }
    Value::Object(all)
}

/// Utterances, their segments and timings, errors and uploads.
fn utterance_schemas() -> Value {
    json!({
        "Segment": {
            "type": "object",
            "required": ["start", "end", "text"],
            "description": "A timed piece of the transcript (a sentence or clause). The transcript is the segments' texts joined with spaces.",
            "properties": {
                "start": seconds("Where its speech starts, in seconds from the start of the audio."),
                "end": seconds("Where it ends, in seconds from the start of the audio."),
                "text": { "type": "string" },
                "words": { "type": "array", "items": schema_ref("Word"), "description": "Word times, present only where the engine timed them." }
            }
        },
        "Word": {
            "type": "object",
            "required": ["word", "start", "end", "probability"],
            "properties": {
                "word": { "type": "string" },
                "start": seconds("Seconds from the start of the audio."),
                "end": seconds("Seconds from the start of the audio."),
                "probability": { "type": "number", "minimum": 0, "maximum": 1 }
            }
        },
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": { "type": "string", "description": "Stable and machine-readable: bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large, unsupported_media_type, rate_limited, too_many_streams, gone, admin_disabled, internal, too_many_connections." },
                "message": { "type": "string", "description": "For people: what went wrong and what to do." }
            }
        },
        "UtteranceState": { "type": "string", "enum": ["receiving", "complete", "transcribed", "replied", "failed"] },
        "Timings": {
            "type": "object",
            "required": ["received_end_ms", "stt_start_ms", "stt_done_ms", "reply_ms", "push_ms"],
            "properties": {
                "received_end_ms": millis(), "stt_start_ms": millis(), "stt_done_ms": millis(),
                "reply_ms": millis(), "push_ms": millis()
            }
        },
        "UtteranceView": {
            "type": "object",
            "required": ["id", "state", "frames", "transcript", "segments", "reply_title", "reply_body", "error", "timings", "audio", "audio_purged_ms"],
            "properties": {
                "audio": { "type": "string", "enum": ["stored", "purged", "none"], "description": "Whether the audio file is kept: `purged` once [audio] retention_days deleted it (transcript and reply stay); `none` for a text utterance." },
                "audio_purged_ms": millis(),
                "id": uuid(),
                "state": schema_ref("UtteranceState"),
                "frames": { "type": "integer", "minimum": 0 },
                "transcript": nullable("string"),
                "segments": { "type": "array", "items": schema_ref("Segment"), "description": "The transcript in timed pieces; empty until transcribed, and for a text utterance." },
                "reply_title": nullable("string"),
                "reply_body": nullable("string"),
                "error": nullable("string"),
                "timings": schema_ref("Timings")
            }
        },
        "UtteranceList": {
            "type": "object",
            "required": ["utterances", "next_before"],
            "properties": {
                "utterances": { "type": "array", "items": schema_ref("UtteranceView") },
                "next_before": { "type": ["string", "null"], "format": "uuid", "description": "`before` for the next page; null on the last." }
            }
        },
        "UploadResponse": {
            "type": "object",
            "required": ["utterance", "state", "frames", "added"],
            "properties": {
                "utterance": uuid(),
                "state": schema_ref("UtteranceState"),
                "frames": { "type": "integer", "minimum": 0 },
                "added": { "type": "integer", "minimum": 0 }
            }
        }
    })
}

/// `/v1/audio/transcriptions`: the request and its response formats.
fn transcription_schemas() -> Value {
    json!({
        "TranscriptionRequest": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": { "type": "string", "contentMediaType": "application/octet-stream", "description": "WAV (integer PCM or 32-bit float, any rate from 8 to 384 kHz, any channels; resampled to 16 kHz mono) or mono Ogg Opus. At most 600 s; the body at most 25 MiB." },
                "model": { "type": "string", "description": "Accepted for compatibility and ignored: the node uses the one model it loaded." },
                "response_format": { "type": "string", "enum": ["json", "text", "verbose_json", "srt", "vtt"], "default": "json" },
                "timestamp_granularities[]": { "type": "array", "items": { "type": "string", "enum": ["segment", "word"] }, "description": "With verbose_json only: `segment` (the default), `word` (a top-level `words` list), or both." },
                "language": { "type": "string", "enum": ["en", "english"], "description": "The node transcribes English; leave it out or send en." }
            }
        },
        "Transcription": {
            "type": "object",
            "required": ["text"],
            "properties": { "text": { "type": "string", "description": "The transcript, trimmed; empty when no speech was found." } }
        },
        "TranscriptionVerbose": {
            "type": "object",
            "required": ["task", "language", "duration", "text"],
            "description": "`response_format=verbose_json`, in OpenAI's shape.",
            "properties": {
                "task": { "type": "string", "enum": ["transcribe"] },
                "language": { "type": "string", "enum": ["english"] },
                "duration": seconds("Length of the audio."),
                "text": { "type": "string" },
                "segments": { "type": "array", "items": schema_ref("TranscriptionSegment"), "description": "Unless only `word` granularity was asked for." },
                "words": { "type": "array", "items": schema_ref("TranscriptionWord"), "description": "With `timestamp_granularities[]=word`; empty when the engine cannot time words." }
            }
        },
        "TranscriptionSegment": {
            "type": "object",
            "required": ["id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"],
            "properties": {
                "id": { "type": "integer", "minimum": 0 },
                "seek": { "type": "integer", "minimum": 0, "description": "Start of the segment's 30 s window, in 10 ms frames." },
                "start": seconds("Seconds from the start of the audio."),
                "end": seconds("Seconds from the start of the audio."),
                "text": { "type": "string", "description": "With Whisper's leading space." },
                "tokens": { "type": "array", "items": { "type": "integer" }, "description": "Empty: the engine does not expose its tokens." },
                "temperature": { "type": "number", "description": "0." },
                "avg_logprob": { "type": "number", "description": "0: not exposed by the engine." },
                "compression_ratio": { "type": "number", "description": "The text's bytes over its zlib-compressed bytes." },
                "no_speech_prob": { "type": "number", "description": "0: not exposed by the engine." }
            }
        },
        "TranscriptionWord": {
            "type": "object",
            "required": ["word", "start", "end"],
            "properties": {
                "word": { "type": "string" },
                "start": seconds("Seconds from the start of the audio."),
                "end": seconds("Seconds from the start of the audio.")
            }
        }
    })
}

/// Text utterances, push registration, deletion and the admin API's devices.
fn device_schemas() -> Value {
    json!({
        "TextUtterance": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": false,
            "properties": { "text": {
                "type": "string",
                "maxLength": 16384,
                "pattern": "\\S",
                "description": "What the user said: at most 16384 characters, not all white space."
            } }
        },
        "PushRegistration": {
            "type": "object",
            "required": ["platform", "token"],
            "properties": {
                "platform": { "type": "string", "enum": ["apns", "fcm"] },
                "token": { "type": "string", "minLength": 1, "maxLength": 4096 },
                "environment": { "type": "string", "enum": ["production", "sandbox"], "default": "production" }
            }
        },
        "DeletedData": {
            "type": "object",
            "required": ["utterances", "audio_files"],
            "properties": {
                "utterances": { "type": "integer", "minimum": 0 },
                "audio_files": { "type": "integer", "minimum": 0 }
            }
        },
        "NewDevice": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": false,
            "properties": { "name": { "type": "string", "minLength": 1, "maxLength": 64 } }
        },
        "DeviceCreated": {
            "type": "object",
            "required": ["id", "name", "token"],
            "properties": {
                "id": uuid(),
                "name": { "type": "string" },
                "token": { "type": "string", "description": "The bearer token; shown only here." }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use lanyard_proto::wire::{
        DeletedData, DeviceCreated, ErrorBody, NewDevice, PushEnvironment, PushPlatform, PushRegistration, Segment,
        TextUtterance, Timings, UploadResponse, UtteranceState, UtteranceView, Word,
    };
    use serde::Serialize;
    use uuid::Uuid;

    use super::*;
    use crate::api::{AudioStatus, UtteranceBody, UtteranceListBody};

    /// The schema's property names are exactly the serialized fields.
    fn same_fields(name: &str, value: impl Serialize) {
        let schemas = schemas();
        let props = schemas[name]["properties"].as_object().unwrap_or_else(|| panic!("{name} has no properties"));
        let mut want: Vec<_> = props.keys().cloned().collect();
        let mut got: Vec<_> = serde_json::to_value(value).unwrap().as_object().unwrap().keys().cloned().collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "schema {name} and its Rust type disagree");
    }

    #[test]
    fn schemas_match_the_wire_types() {
        let row = lanyard_store::Utterance {
            id: Uuid::nil(),
            device_id: Uuid::nil(),
            codec: Some(lanyard_proto::ble::Codec::Opus16k20ms),
            state: UtteranceState::Replied,
            frames: 1,
            speech_frames: None,
            unmarked: false,
            transcript: None,
            segments: vec![Segment { start: 0.0, end: 1.0, text: "hi".into(), words: vec![] }],
            reply_title: None,
            reply_body: None,
            reply_data: None,
            error: None,
            created_ms: 0,
            timings: Timings::default(),
            audio_purged_ms: Some(1),
        };
        let body = UtteranceBody::of(&row);
        assert_eq!(serde_json::to_value(&body).unwrap()["audio"], "purged");
        same_fields("UtteranceView", body.clone());
        same_fields("UtteranceList", UtteranceListBody { utterances: vec![body], next_before: None });
        let enums = schemas()["UtteranceView"]["properties"]["audio"]["enum"].clone();
        for status in [AudioStatus::Stored, AudioStatus::Purged, AudioStatus::None] {
            assert!(enums.as_array().unwrap().contains(&serde_json::to_value(status).unwrap()), "{status:?}");
        }
        same_fields("Transcription", json!({ "text": "hello" }));
        let word = Word { word: "hi".into(), start: 0.0, end: 1.0, probability: 0.5 };
        same_fields("Segment", Segment { start: 0.0, end: 1.0, text: "hi".into(), words: vec![word.clone()] });
        same_fields("Word", word);
        let mut timed = lanyard_stt::Segment { start: 0.0, end: 1.0, text: "hi".into(), words: vec![] };
        timed.words.push(lanyard_stt::Word { word: "hi".into(), start: 0.0, end: 1.0, probability: 0.5 });
        let both = crate::transcribe::Granularities { word: true, segment: true };
        let verbose =
            crate::transcribe::verbose_json(&lanyard_stt::Transcript::from_segments(vec![timed], 1.0, 0.0), both);
        same_fields("TranscriptionVerbose", verbose.clone());
        same_fields("TranscriptionSegment", verbose["segments"][0].clone());
        same_fields("TranscriptionWord", verbose["words"][0].clone());
        let view = UtteranceView {
            id: Uuid::nil(),
            state: UtteranceState::Replied,
            frames: 1,
            transcript: None,
            segments: vec![],
            reply_title: None,
            reply_body: None,
            error: None,
            timings: Timings::default(),
        };
        same_fields("ErrorBody", ErrorBody { code: "x".into(), message: "y".into() });
        same_fields("Timings", Timings::default());
        // The wire view is the API's view less the audio status.
        let mut wire: Vec<String> = serde_json::to_value(view).unwrap().as_object().unwrap().keys().cloned().collect();
        wire.extend(["audio".to_string(), "audio_purged_ms".to_string()]);
        wire.sort();
        let mut api: Vec<String> =
            schemas()["UtteranceView"]["properties"].as_object().unwrap().keys().cloned().collect();
        api.sort();
        assert_eq!(wire, api);
        same_fields(
            "UploadResponse",
            UploadResponse { utterance: Uuid::nil(), state: UtteranceState::Complete, frames: 1, added: 1 },
        );
        same_fields("TextUtterance", TextUtterance { text: "x".into() });
        same_fields(
            "PushRegistration",
            PushRegistration { platform: PushPlatform::Fcm, token: "t".into(), environment: PushEnvironment::Sandbox },
        );
        same_fields("DeletedData", DeletedData { utterances: 1, audio_files: 1 });
        same_fields("NewDevice", NewDevice { name: "n".into() });
        same_fields("DeviceCreated", DeviceCreated { id: Uuid::nil(), name: "n".into(), token: "t".into() });
        for s in ["receiving", "complete", "transcribed", "replied", "failed"] {
            assert!(UtteranceState::parse(s).is_some());
            assert!(schemas()["UtteranceState"]["enum"].as_array().unwrap().contains(&json!(s)));
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref to {name}");
        }
        assert_eq!(operation_id("delete", "/v1/utterances/{id}"), "delete_v1_utterances_id");
    }
}
