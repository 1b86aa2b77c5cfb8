//! Where the default model lives, so that the server, the tests and the
//! benchmarks agree with `scripts/setup`, which installs it there.

use std::path::PathBuf;

/// The directory `scripts/setup` installs the default model (Whisper tiny.en)
/// into: `$LANYARD_MODEL_DIR` if set, else
/// `$XDG_DATA_HOME/lanyard/models/whisper-tiny.en`, else
/// `~/.local/share/lanyard/models/whisper-tiny.en`.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LANYARD_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from).join(".local/share")
    });
    data.join("lanyard/models/whisper-tiny.en")
}
