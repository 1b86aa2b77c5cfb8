//! Default locations, following the XDG base directory convention. The
//! server's and the model's are resolved by their owners
//! (`lanyard_server::config`, `lanyard_stt::model_dir`); the relay's spool
//! is the binary's choice.

use std::path::PathBuf;

pub fn default_spool_dir() -> PathBuf {
    lanyard_stt::data_home().join("spool")
}
