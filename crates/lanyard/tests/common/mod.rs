//! Helpers shared by the end-to-end tests: real `lanyard` processes on
//! loopback, read through their JSON-lines stdout.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The model directory the tests use: `LANYARD_MODEL_DIR`, else where
/// `scripts/setup` installs it. Missing is a failure, not a skip.
pub fn model_dir() -> PathBuf {
    let dir = lanyard_stt::default_model_dir();
    assert!(
        dir.join("model.bin").exists(),
        "no speech model at {}: run scripts/setup (or set LANYARD_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// A `lanyard` child process and its stdout events.
pub struct Proc {
    pub child: Child,
    pub events: mpsc::UnboundedReceiver<Value>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start lanyard");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Proc { child, events: rx }
    }

    /// Waits for the next event of this kind; panics after `within`.
    pub async fn expect(&mut self, event: &str, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(v)) if v["event"] == event => return v,
                Ok(Some(_)) => {}
                Ok(None) => panic!("process ended before it reported {event}"),
                Err(_) => panic!("no {event} event within {within:?}"),
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

/// Starts `lanyard serve` on a loopback port; returns it and its base URL.
pub async fn start_server(data_dir: &Path) -> (Proc, String) {
    let model = model_dir();
    let mut server = Proc::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--model-dir",
        model.to_str().unwrap(),
    ]);
    let ev = server.expect("listening", Duration::from_secs(60)).await;
    let url = format!("http://{}", ev["addr"].as_str().unwrap());
    (server, url)
}

/// Registers a device in a server data directory and returns its token.
pub fn add_device(data_dir: &Path, name: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["device", "add", name, "--data-dir", data_dir.to_str().unwrap()])
        .output()
        .expect("run lanyard device add");
    assert!(out.status.success(), "device add failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
