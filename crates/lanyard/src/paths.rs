//! Default locations, following the XDG base directory convention.

use std::path::PathBuf;

pub use lanyard_stt::data_home;

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
