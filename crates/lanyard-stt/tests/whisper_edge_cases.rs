//! The real model at the edges: a directory without `preprocessor_config.json`,
//! silence, audio longer than Whisper's 30 s window, and bad input.

mod common;

use std::fs;
use std::sync::Arc;

use lanyard_stt::{
    PREPROCESSOR_CONFIG_FILE, PreprocessorConfig, SpeechToText, SttError, WhisperConfig, WhisperCt2, word_error_rate,
};

/// One model per test binary; loading takes a moment and the model is shareable.
fn shared_model() -> Arc<WhisperCt2> {
    static MODEL: std::sync::OnceLock<Arc<WhisperCt2>> = std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(WhisperCt2::load(&common::model_dir(), WhisperConfig::default()).expect("model loads"))
        })
        .clone()
}

#[test]
fn preprocessor_config_is_written_when_missing() {
    let source = common::model_dir();
    let dir = tempfile::tempdir().unwrap();
    // Symlink the model's files, leaving out the preprocessor config.
    for entry in fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != PREPROCESSOR_CONFIG_FILE && entry.path().is_file() {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let written = dir.path().join(PREPROCESSOR_CONFIG_FILE);
    assert!(!written.exists());

    let stt = WhisperCt2::load(dir.path(), WhisperConfig { threads: 1, ..Default::default() }).expect("model loads");
    assert!(written.is_file(), "load() must write {PREPROCESSOR_CONFIG_FILE}");
    let config = lanyard_stt::ensure_preprocessor_config(dir.path()).unwrap();
    assert_eq!(config, PreprocessorConfig::WHISPER);

    // And the model works from that directory.
    let reference = "Good morning everyone.";
    let text = stt.transcribe(&common::synthesize(reference)).unwrap().text;
    assert!(word_error_rate(reference, &text) <= 0.25, "{text:?}");
}

#[test]
fn missing_model_dir_says_how_to_install() {
    let err = WhisperCt2::load("/nonexistent/whisper".as_ref(), WhisperConfig::default()).unwrap_err();
    assert!(matches!(err, SttError::ModelDirMissing { .. }));
    assert!(err.to_string().contains("scripts/setup"), "{err}");
}

#[test]
fn directory_without_a_model_is_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = WhisperCt2::load(dir.path(), WhisperConfig::default()).unwrap_err();
    assert!(matches!(err, SttError::ModelFileMissing { file: "model.bin", .. }), "{err}");
}

#[test]
fn silence_and_empty_input_give_no_text() {
    let stt = shared_model();
    assert_eq!(stt.transcribe(&[]).unwrap().text, "");
    let transcript = stt.transcribe(&common::silence(3.0)).unwrap();
    common::report(&format!("3 s of silence -> {:?} in {:.3} s", transcript.text, transcript.compute_secs));
    assert_eq!(transcript.text, "");
}

#[test]
fn audio_longer_than_30_s_is_split_and_joined() {
    let stt = shared_model();
    let first = "The weather will be sunny this afternoon.";
    let second = "Remember to buy milk and bread on the way home.";
    // The first sentence, silence up to 32 s (past the 30 s cut), the second.
    let mut audio = common::synthesize(first);
    audio.resize(32 * 16_000, 0.0);
    audio.extend(common::synthesize(second));

    let transcript = stt.transcribe(&audio).unwrap();
    common::report(&format!(
        "{:.1} s audio in {:.3} s: {:?}",
        transcript.audio_secs, transcript.compute_secs, transcript.text
    ));
    let wer = word_error_rate(&format!("{first} {second}"), &transcript.text);
    assert!(wer <= 0.25, "WER {wer}: {:?}", transcript.text);
}

#[test]
fn non_finite_samples_are_rejected() {
    let stt = shared_model();
    let mut audio = common::silence(1.0);
    audio[10] = f32::NAN;
    let err = stt.transcribe(&audio).unwrap_err();
    assert!(matches!(err, SttError::InvalidAudio { index: 10, .. }), "{err}");
}

#[test]
fn the_engine_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<WhisperCt2>();
    let stt: Arc<dyn SpeechToText> = shared_model();
    let handle = std::thread::spawn(move || stt.name().to_owned());
    assert_eq!(handle.join().unwrap(), "whisper-ct2");
}
