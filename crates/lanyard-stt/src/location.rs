//! Where Lanyard's data lives by default, and the model directory: the one
//! place that resolves it, so that the server, the demo, the campaign, the
//! tests and the benchmarks agree with `scripts/setup`, which installs there.
//!
//! The model directory is, first to last: a flag (`--model-dir`), the
//! environment (`$LANYARD_MODEL_DIR`), a config file's key (the server's
//! `[stt] model_dir`), and the installed default. Commands without a config
//! file call [`model_dir`]; the server's loader applies the same order with
//! its other settings and ends at [`installed_model_dir`].

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable that names the model directory.
pub const MODEL_DIR_ENV: &str = "LANYARD_MODEL_DIR";

/// The model directory for a command without a config file: `flag` if
/// given, else `$LANYARD_MODEL_DIR`, else [`installed_model_dir`].
pub fn model_dir(flag: Option<PathBuf>) -> PathBuf {
    resolve_model_dir(flag, std::env::var_os(MODEL_DIR_ENV), None)
}

/// [`model_dir`] with no flag: where the model is unless a flag says
/// otherwise.
pub fn default_model_dir() -> PathBuf {
    model_dir(None)
}

/// The resolution itself: `flag`, else `env` (the value of
/// [`MODEL_DIR_ENV`]; empty counts as unset), else `configured` (a config
/// file's key), else [`installed_model_dir`].
fn resolve_model_dir(flag: Option<PathBuf>, env: Option<OsString>, configured: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| env.filter(|d| !d.is_empty()).map(PathBuf::from)).or(configured).unwrap_or_else(installed_model_dir)
}

/// Where `scripts/setup` installs the default model (Whisper tiny.en):
/// `$XDG_DATA_HOME/lanyard/models/whisper-tiny.en`, else
/// `~/.local/share/lanyard/models/whisper-tiny.en`.
pub fn installed_model_dir() -> PathBuf {
    data_home().join("models/whisper-tiny.en")
}

/// [`default_model_dir`] if a model is installed there (it holds
/// `model.bin`), else an error that says how to install one. The tests and
/// benchmarks that need the real model fail with it rather than skip: a
/// silently skipped speech test hides a broken server.
pub fn require_model_dir() -> Result<PathBuf, String> {
    let dir = default_model_dir();
    if dir.join("model.bin").is_file() {
        Ok(dir)
    } else {
        Err(format!("no speech model at {}: run scripts/setup (or set LANYARD_MODEL_DIR)", dir.display()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_environment_then_file_then_installed() {
        let p = |s: &str| Some(PathBuf::from(s));
        let e = |s: &str| Some(OsString::from(s));
        assert_eq!(resolve_model_dir(p("/flag"), e("/env"), p("/file")), PathBuf::from("/flag"));
        assert_eq!(resolve_model_dir(None, e("/env"), p("/file")), PathBuf::from("/env"));
        assert_eq!(resolve_model_dir(None, e(""), p("/file")), PathBuf::from("/file"));
        assert_eq!(resolve_model_dir(None, None, None), installed_model_dir());
        assert!(installed_model_dir().ends_with("lanyard/models/whisper-tiny.en"));
    }
}
