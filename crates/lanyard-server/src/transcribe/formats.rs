//! The shapes a transcript is answered in by `POST /v1/audio/transcriptions`
//! (`response_format`, `timestamp_granularities[]`), as OpenAI's API
//! reference documents them, and the wire form of its segments that the
//! rest of the server stores and sends. Pure functions: text in, text out.
//!
//! - `json`: `{"text": "..."}`.
//! - `text`: the text alone, `text/plain`.
//! - `verbose_json`: `task`, `language` (`"english"`), `duration`, `text`,
//!   and `segments` and/or `words` as `timestamp_granularities[]` asks
//!   (segments when it names none). Segment fields the engine does not
//!   produce are filled with neutral values, so that clients written for
//!   OpenAI parse them: `tokens` is empty, `temperature` 0, `avg_logprob` 0,
//!   `no_speech_prob` 0, and `seek` is the start of the segment's 30 s
//!   window in 10 ms frames (Whisper's unit). `compression_ratio` is real:
//!   the text's bytes over its zlib-compressed bytes, as Whisper computes it.
//! - `srt`: numbered cues, `00:00:01,500 --> 00:00:03,250`.
//! - `vtt`: `WEBVTT`, a blank line, then cues with `00:00:01.500`.
//!
//! Times are rounded to the millisecond; an engine that cannot time its
//! text gives one segment over the whole audio (`Transcript::untimed`).

use lanyard_proto::wire;
use lanyard_stt::{Segment, Transcript};
use serde::Serialize;

/// What `response_format` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl ResponseFormat {
    /// Every accepted value, as an error message lists them.
    pub const VALID: &'static str = "json (the default), text, verbose_json, srt or vtt";

    /// The format named by the field; absent or empty is `json`.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        Ok(match value.map(str::trim) {
            None | Some("") | Some("json") => Self::Json,
            Some("text") => Self::Text,
            Some("verbose_json") => Self::VerboseJson,
            Some("srt") => Self::Srt,
            Some("vtt") => Self::Vtt,
            Some(other) => return Err(format!("response_format {other:?} is not supported; use {}", Self::VALID)),
        })
    }
}

/// What `timestamp_granularities[]` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granularities {
    pub word: bool,
    pub segment: bool,
}

impl Granularities {
    /// From the values of every `timestamp_granularities[]` field. As
    /// OpenAI documents, they need `response_format=verbose_json`.
    pub fn parse(values: &[String], format: ResponseFormat) -> Result<Self, String> {
        let mut g = Self::default();
        for value in values {
            match value.trim() {
                "word" => g.word = true,
                "segment" => g.segment = true,
                other => {
                    return Err(format!(
                        "timestamp_granularities[] {other:?} is not supported; use word, segment or both"
                    ));
                }
            }
        }
        if !values.is_empty() && format != ResponseFormat::VerboseJson {
            return Err("timestamp_granularities[] needs response_format=verbose_json".into());
        }
        Ok(g)
    }

    /// Whether `verbose_json` carries segments: when asked, or when nothing was.
    fn segments(self) -> bool {
        self.segment || !self.word
    }
}

/// The segments as they are stored and sent to devices. A time the engine
/// got wrong (NaN, infinite, negative) becomes 0, since JSON cannot carry it.
pub fn wire_segments(segments: &[Segment]) -> Vec<wire::Segment> {
    let secs = |s: f32| if s.is_finite() { s.max(0.0) } else { 0.0 };
    segments
        .iter()
        .map(|s| wire::Segment {
            start: secs(s.start),
            end: secs(s.end),
            text: s.text.clone(),
            words: s
                .words
                .iter()
                .map(|w| wire::Word {
                    word: w.word.clone(),
                    start: secs(w.start),
                    end: secs(w.end),
                    probability: secs(w.probability).min(1.0),
                })
                .collect(),
        })
        .collect()
}

/// `secs` as `HH:MM:SS<sep>mmm`: `,` for SRT, `.` for WebVTT. Hours take
/// as many digits as they need, at least two.
pub fn timestamp(secs: f32, sep: char) -> String {
    let ms = if secs.is_finite() { (f64::from(secs) * 1000.0).round().max(0.0) as u64 } else { 0 };
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// SubRip: cues numbered from 1, each followed by a blank line.
pub fn srt(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, s) in cues(segments).enumerate() {
        out += &format!("{}\n{} --> {}\n{}\n\n", i + 1, timestamp(s.start, ','), timestamp(s.end, ','), s.text.trim());
    }
    out
}

/// WebVTT: the `WEBVTT` header and a blank line, then the cues.
pub fn vtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in cues(segments) {
        out += &format!("{} --> {}\n{}\n\n", timestamp(s.start, '.'), timestamp(s.end, '.'), s.text.trim());
    }
    out
}

/// Segments with text: a cue must have some. A line break inside a cue's
/// text would end it early in both formats, so segments are one line each
/// (Whisper's always are).
fn cues(segments: &[Segment]) -> impl Iterator<Item = &Segment> {
    segments.iter().filter(|s| !s.text.trim().is_empty())
}

/// OpenAI's `verbose_json` answer.
#[derive(Debug, Serialize)]
struct Verbose {
    task: &'static str,
    language: &'static str,
    duration: f32,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<Vec<VerboseSegment>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    words: Option<Vec<VerboseWord>>,
}

/// One of OpenAI's `TranscriptionSegment`s.
#[derive(Debug, Serialize)]
struct VerboseSegment {
    id: usize,
    seek: u32,
    start: f32,
    end: f32,
    text: String,
    tokens: Vec<u32>,
    temperature: f32,
    avg_logprob: f32,
    compression_ratio: f32,
    no_speech_prob: f32,
}

/// One of OpenAI's `TranscriptionWord`s.
#[derive(Debug, Serialize)]
struct VerboseWord {
    word: String,
    start: f32,
    end: f32,
}

/// Whisper's encoder window, in 10 ms mel frames (`seek`'s unit).
const WINDOW_FRAMES: u32 = 3000;

/// The `verbose_json` body for `transcript`.
pub fn verbose_json(transcript: &Transcript, granularities: Granularities) -> serde_json::Value {
    let segments = wire_segments(&transcript.segments);
    let verbose = Verbose {
        task: "transcribe",
        language: "english",
        duration: transcript.audio_secs,
        text: transcript.text.clone(),
        segments: granularities.segments().then(|| {
            segments
                .iter()
                .enumerate()
                .map(|(id, s)| VerboseSegment {
                    id,
                    seek: (s.start / 30.0).floor() as u32 * WINDOW_FRAMES,
                    start: s.start,
                    end: s.end,
                    // Whisper's segment texts start with the space before their first word.
                    text: format!(" {}", s.text.trim()),
                    tokens: Vec::new(),
                    temperature: 0.0,
                    avg_logprob: 0.0,
                    compression_ratio: lanyard_stt::guards::compression_ratio(s.text.trim()),
                    no_speech_prob: 0.0,
                })
                .collect()
        }),
        words: granularities.word.then(|| {
            segments
                .iter()
                .flat_map(|s| &s.words)
                .map(|w| VerboseWord { word: w.word.clone(), start: w.start, end: w.end })
                .collect()
        }),
    };
    serde_json::to_value(verbose).expect("a verbose transcription always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_stt::Word;

    fn segment(start: f32, end: f32, text: &str) -> Segment {
        Segment { start, end, text: text.into(), words: Vec::new() }
    }

    #[test]
    fn timestamps_are_zero_padded_and_rounded_to_the_millisecond() {
        assert_eq!(timestamp(0.0, ','), "00:00:00,000");
        assert_eq!(timestamp(1.5, ','), "00:00:01,500");
        assert_eq!(timestamp(1.5, '.'), "00:00:01.500");
        assert_eq!(timestamp(61.0625, '.'), "00:01:01.063");
        assert_eq!(timestamp(3_599.999_6, ','), "01:00:00,000");
        assert_eq!(timestamp(3_723.004, ','), "01:02:03,004");
        // Past 99 hours the hours simply grow; nothing wraps.
        assert_eq!(timestamp(360_000.0, ','), "100:00:00,000");
        assert_eq!(timestamp(-0.2, ','), "00:00:00,000");
        assert_eq!(timestamp(f32::NAN, '.'), "00:00:00.000");
    }

    #[test]
    fn srt_numbers_its_cues_and_separates_them_with_blank_lines() {
        let segments = [segment(0.0, 1.5, " Turn on the lights."), segment(1.5, 2.0, "  "), segment(2.25, 3.0, "Now.")];
        assert_eq!(
            srt(&segments),
            "1\n00:00:00,000 --> 00:00:01,500\nTurn on the lights.\n\n2\n00:00:02,250 --> 00:00:03,000\nNow.\n\n"
        );
        assert_eq!(srt(&[]), "");
    }

    #[test]
    fn vtt_starts_with_its_header_and_uses_dots() {
        let segments = [segment(0.0, 1.5, "Turn on the lights."), segment(62.125, 63.0, "Now.")];
        assert_eq!(
            vtt(&segments),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nTurn on the lights.\n\n00:01:02.125 --> 00:01:03.000\nNow.\n\n"
        );
        assert_eq!(vtt(&[]), "WEBVTT\n\n");
    }

    #[test]
    fn formats_and_granularities_are_checked_as_openai_documents() {
        assert_eq!(ResponseFormat::parse(None), Ok(ResponseFormat::Json));
        assert_eq!(ResponseFormat::parse(Some(" verbose_json ")), Ok(ResponseFormat::VerboseJson));
        assert_eq!(ResponseFormat::parse(Some("vtt")), Ok(ResponseFormat::Vtt));
        let e = ResponseFormat::parse(Some("csv")).unwrap_err();
        for name in ["json", "text", "verbose_json", "srt", "vtt"] {
            assert!(e.contains(name), "{e}");
        }
        let words = ["word".to_string()];
        assert_eq!(
            Granularities::parse(&words, ResponseFormat::VerboseJson),
            Ok(Granularities { word: true, segment: false })
        );
        assert!(Granularities::parse(&words, ResponseFormat::Json).unwrap_err().contains("verbose_json"));
        assert!(Granularities::parse(&["segment".into()], ResponseFormat::Srt).is_err());
        assert!(Granularities::parse(&["letter".into()], ResponseFormat::VerboseJson).unwrap_err().contains("word"));
        assert_eq!(Granularities::parse(&[], ResponseFormat::Text), Ok(Granularities::default()));
    }

    #[test]
    fn verbose_json_has_openais_fields() {
        let word = |w: &str, start, end| Word { word: w.into(), start, end, probability: 0.9 };
        let mut first = segment(0.5, 1.25, "Lights on.");
        first.words = vec![word("Lights", 0.5, 0.875), word("on.", 0.875, 1.25)];
        let t = Transcript::from_segments(vec![first, segment(31.0, 32.0, "Now.")], 33.0, 0.1);
        let v = verbose_json(&t, Granularities::default());
        assert_eq!(
            (v["task"].as_str(), v["language"].as_str(), v["duration"].as_f64()),
            (Some("transcribe"), Some("english"), Some(33.0))
        );
        assert_eq!(v["text"], "Lights on. Now.");
        assert!(v.get("words").is_none(), "words only when asked: {v}");
        let s = &v["segments"];
        assert_eq!((s[0]["id"].as_u64(), s[1]["id"].as_u64()), (Some(0), Some(1)));
        assert_eq!((s[0]["seek"].as_u64(), s[1]["seek"].as_u64()), (Some(0), Some(3000)));
        assert_eq!(
            (s[0]["start"].as_f64(), s[0]["end"].as_f64(), s[0]["text"].as_str()),
            (Some(0.5), Some(1.25), Some(" Lights on."))
        );
        let mut keys: Vec<_> = s[0].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let expected = [
            "avg_logprob",
            "compression_ratio",
            "end",
            "id",
            "no_speech_prob",
            "seek",
            "start",
            "temperature",
            "text",
            "tokens",
        ];
        assert_eq!(keys, expected);
        assert!(s[0]["compression_ratio"].as_f64().unwrap() > 0.0);

        let v = verbose_json(&t, Granularities { word: true, segment: false });
        assert!(v.get("segments").is_none(), "segments were not asked for: {v}");
        assert_eq!(
            v["words"],
            serde_json::json!([{"word": "Lights", "start": 0.5, "end": 0.875}, {"word": "on.", "start": 0.875, "end": 1.25}])
        );
        let v = verbose_json(&t, Granularities { word: true, segment: true });
        assert_eq!((v["segments"].as_array().unwrap().len(), v["words"].as_array().unwrap().len()), (2, 2));
    }

    #[test]
    fn wire_segments_keep_times_and_drop_what_json_cannot_carry() {
        let mut s = segment(f32::NAN, 2.0, "hi");
        s.words = vec![Word { word: "hi".into(), start: -1.0, end: f32::INFINITY, probability: 1.5 }];
        let w = wire_segments(&[s, segment(2.0, 3.5, "there")]);
        assert_eq!((w[0].start, w[0].end, w[0].text.as_str()), (0.0, 2.0, "hi"));
        assert_eq!((w[0].words[0].start, w[0].words[0].end, w[0].words[0].probability), (0.0, 0.0, 1.0));
        assert_eq!((w[1].start, w[1].end, w[1].words.len()), (2.0, 3.5, 0));
    }
}
