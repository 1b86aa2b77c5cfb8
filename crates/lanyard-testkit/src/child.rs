//! A child process read through its stdout, one JSON line per event, into a
//! typed event. A line that is not such an event is reported on stderr and
//! skipped: it means the printer and the reader disagree about the format,
//! which the round-trip tests of each event type exist to prevent.

use std::fmt::Display;
use std::io;
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A child process and its stdout events, read as `E`. The process is killed
/// when this is dropped.
pub struct Child<E> {
    /// The process itself: its id, `try_wait`, `kill`.
    pub process: tokio::process::Child,
    name: String,
    events: mpsc::UnboundedReceiver<E>,
}

/// Why a wait for an event gave up.
#[derive(Debug, Error)]
pub enum WaitError {
    /// Its stdout closed: the process ended (or closed it) first.
    #[error("{name} ended before it reported {what}")]
    Ended { name: String, what: String },
    #[error("{name} did not report {what} within {within:?}")]
    Timeout { name: String, what: String, within: Duration },
}

impl<E: DeserializeOwned + Send + 'static> Child<E> {
    /// Starts `cmd` with its stdout piped and read as `E` lines; `name` is
    /// for messages. Stdin and stderr stay as `cmd` has them.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> io::Result<Child<E>> {
        let name = name.into();
        let (tx, events) = mpsc::unbounded_channel();
        let process = forward(&name, cmd, tx, |event| event)?;
        Ok(Child { process, name, events })
    }

    /// The next event, if one arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<E, WaitError> {
        self.wait_for("an event", within, Some).await
    }

    /// The next event `pick` accepts (turned into what it returns), skipping
    /// the others; `what` names it for the error.
    pub async fn wait_for<T>(
        &mut self,
        what: impl Display,
        within: Duration,
        mut pick: impl FnMut(E) -> Option<T>,
    ) -> Result<T, WaitError> {
        let until = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(event) {
                        return Ok(found);
                    }
                }
                Ok(None) => return Err(WaitError::Ended { name: self.name.clone(), what: what.to_string() }),
                Err(_) => return Err(WaitError::Timeout { name: self.name.clone(), what: what.to_string(), within }),
            }
        }
    }

    /// [`Child::wait_for`] for tests: panics with the reason instead.
    pub async fn expect<T>(&mut self, what: impl Display, within: Duration, pick: impl FnMut(E) -> Option<T>) -> T {
        self.wait_for(what, within, pick).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// An event already read, without waiting.
    pub fn try_next(&mut self) -> Option<E> {
        self.events.try_recv().ok()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(mut self) {
        let _ = self.process.kill().await;
    }
}

/// Starts `cmd` with its stdout piped, and sends every stdout line, read as
/// `E` and tagged by `tag`, to `tx`: how one reader follows several
/// processes in one stream. The process is killed when the returned handle
/// is dropped; the reading ends when its stdout closes.
pub fn forward<E, T>(
    name: &str,
    mut cmd: Command,
    tx: mpsc::UnboundedSender<T>,
    tag: impl Fn(E) -> T + Send + 'static,
) -> io::Result<tokio::process::Child>
where
    E: DeserializeOwned,
    T: Send + 'static,
{
    let mut process = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
    let stdout = process.stdout.take().expect("stdout is piped");
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        // Read to the end even when nobody listens any more, so the process
        // never blocks on a full pipe.
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<E>(&line) {
                Ok(event) => {
                    let _ = tx.send(tag(event));
                }
                Err(e) => eprintln!("{name}: a stdout line that is not one of its events ({e}): {line}"),
            }
        }
    });
    Ok(process)
}
