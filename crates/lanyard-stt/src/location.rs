//! Where Lanyard's data lives by default, and the default model in it, so
//! that the server, the relay, the tests and the benchmarks agree with
//! `scripts/setup`, which installs there.

use std::path::PathBuf;

/// The directory `scripts/setup` installs the default model (Whisper tiny.en)
/// into: `$LANYARD_MODEL_DIR` if set, else
/// `$XDG_DATA_HOME/lanyard/models/whisper-tiny.en`, else
/// `~/.local/share/lanyard/models/whisper-tiny.en`.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LANYARD_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    data_home().join("models/whisper-tiny.en")
}

/// `$XDG_DATA_HOME/lanyard`, else `~/.local/share/lanyard`: the base of
/// every default location (the server's data, the relay's spool, models,
/// recordings).
pub fn data_home() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lanyard");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/lanyard")
}
