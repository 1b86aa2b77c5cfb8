//! The `lanyard` executable as tests, the campaign and the benchmark run it:
//! a server on a loopback port whose address is learnt from its `listening`
//! event, devices registered through the real command.

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lanyard_server::ServeEvent;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::process::Command;

use crate::child::{Child, WaitError};

/// Where the `lanyard` executable is: an integration test of the `lanyard`
/// crate has `env!("CARGO_BIN_EXE_lanyard")`; the campaign and the
/// benchmark run as that executable ([`Lanyard::current_exe`]).
#[derive(Debug, Clone)]
pub struct Lanyard {
    exe: PathBuf,
}

/// A started `lanyard serve`, and where it listens.
pub struct Server {
    pub child: Child<ServeEvent>,
    pub addr: SocketAddr,
    /// `http://` or `https://` and the address, as the server printed it.
    pub url: String,
}

/// Why a server did not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot start `lanyard serve`: {0}")]
    Spawn(io::Error),
    #[error("`lanyard serve` exited ({status}) before it was listening; its stderr says why")]
    Exited { status: String },
    #[error("`lanyard serve` did not report `listening` within {0:?} (a slow model load?); its stderr says more")]
    Timeout(Duration),
}

impl Lanyard {
    pub fn new(exe: impl Into<PathBuf>) -> Lanyard {
        Lanyard { exe: exe.into() }
    }

    /// This process's own executable: for `lanyard sim` and `lanyard bench`,
    /// which start the roles as their own subcommands.
    pub fn current_exe() -> io::Result<Lanyard> {
        Ok(Lanyard::new(std::env::current_exe()?))
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// `lanyard ARGS`: stdin from /dev/null, stderr inherited; callers
    /// change either before they spawn it.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
        cmd
    }

    /// Starts `lanyard ARGS` and reads its events as `E`. Panics if the
    /// executable cannot start (for tests).
    pub fn spawn<E, I, S>(&self, name: &str, args: I) -> Child<E>
    where
        E: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Child::spawn(name, self.command(args)).unwrap_or_else(|e| panic!("cannot start {}: {e}", self.exe.display()))
    }

    /// `lanyard serve --listen 127.0.0.1:0 --data-dir DATA_DIR`: add the model,
    /// TLS or config flags, then [`start_server`] it.
    pub fn serve_command(&self, data_dir: &Path) -> Command {
        let mut cmd = self.command(["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
        cmd.arg(data_dir);
        cmd
    }

    /// Starts `lanyard serve` on a loopback port with its data in `data_dir`
    /// and the installed model ([`crate::model_dir`]), within a minute.
    pub async fn start_server(&self, data_dir: &Path) -> Result<Server, StartError> {
        let mut cmd = self.serve_command(data_dir);
        cmd.arg("--model-dir").arg(crate::model_dir());
        start_server(cmd, Duration::from_secs(60)).await
    }

    /// Registers a device in the server data directory `data_dir` with
    /// `lanyard device add`, and returns its token. Panics if that fails.
    pub fn add_device(&self, data_dir: &Path, name: &str) -> String {
        let out = std::process::Command::new(&self.exe)
            .args(["device", "add", name, "--data-dir"])
            .arg(data_dir)
            .output()
            .expect("run lanyard device add");
        assert!(out.status.success(), "device add failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("the token is text").trim().to_string()
    }
}

/// Starts a prepared `lanyard serve` command (see [`Lanyard::serve_command`])
/// and waits up to `within` for its `listening` event. A server that exits
/// first fails at once, with its exit status.
pub async fn start_server(cmd: Command, within: Duration) -> Result<Server, StartError> {
    let mut child: Child<ServeEvent> = Child::spawn("lanyard serve", cmd).map_err(StartError::Spawn)?;
    let listening =
        child.wait_for("listening", within, |ServeEvent::Listening { addr, url, .. }| Some((addr, url))).await;
    match listening {
        Ok((addr, url)) => Ok(Server { child, addr, url }),
        Err(WaitError::Timeout { .. }) => Err(StartError::Timeout(within)),
        Err(WaitError::Ended { .. }) => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.process.wait()).await;
            Err(StartError::Exited { status: describe(status.ok().and_then(Result::ok)) })
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_string(), |s| s.to_string())
}
