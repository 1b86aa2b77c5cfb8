//! Default locations, following the XDG base directory convention.

use std::path::PathBuf;

/// `$XDG_DATA_HOME/lanyard`, else `~/.local/share/lanyard`.
pub fn data_home() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lanyard");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/lanyard")
}

pub fn default_server_dir() -> PathBuf {
    data_home().join("server")
}

pub fn default_spool_dir() -> PathBuf {
    data_home().join("spool")
}

/// Where `scripts/setup` installs the default model.
pub fn default_model_dir() -> PathBuf {
    lanyard_stt::default_model_dir()
}
