//! One simulated phone: a `lanyard relay` process under a simulated iOS
//! lifecycle, and the background URLSession that carries out its uploads.
//!
//! The lifecycle, as iOS runs a BLE accessory app (see `[lifecycle]` in the
//! scenario):
//!
//! - **foreground** for a while (`foreground` on the relay's stdin);
//! - **background**: each BLE event (the pendant starting or ending an
//!   utterance) grants a wake window (`background MS`); while the pendant
//!   speaks, the app stays awake;
//! - **suspension**: when a window runs out the relay is told `suspend`
//!   (its last moment to hand uploads off), then frozen with a real SIGSTOP;
//!   the next BLE event thaws it with SIGCONT into a new window;
//! - **termination**: a real SIGKILL, at a random moment or instead of a
//!   suspension; the relay is **relaunched** on the pendant's next BLE event
//!   (the pendant holds its next utterance until a central connects), on
//!   the same spool, in the background.
//!
//! Upload tasks the relay hands off (`upload_task` events) are performed
//! here as the system would: an HTTP PUT of the sealed file through the
//! phone's network (its fault proxy), retried until the server answers, and
//! then `upload-ok ID` (or `upload-failed ID`) on the relay's stdin. A
//! result for a relay that is gone is dropped: a relaunched relay announces
//! its handed-off uploads again, and the upload is idempotent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use lanyard_proto::backoff::{Backoff, Retries};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::proxy::FaultProxy;
use super::{CampaignEnv, Scenario, Source, now_ms, poisson_wait};

/// What a phone is told.
#[derive(Debug)]
pub enum Msg {
    /// An event from its pendant (BLE activity).
    Pendant(Value),
    /// An `upload_task` from its relay.
    Relay(Value),
    /// The background session finished an upload.
    UploadDone { id: Uuid, ok: bool },
    /// Speech is over: bring the app to the foreground and keep it there.
    Drain,
    /// Stop the relay; answers with the number of launches.
    Stop(oneshot::Sender<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Foreground { until: Option<Instant> },
    Background { until: Instant },
    Suspended,
    Dead,
}

pub struct Phone {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Phone {
    /// Launches the relay (in the foreground) and its lifecycle.
    pub fn start(
        i: usize,
        shared: CampaignEnv,
        base: Vec<String>,
        scenario: Scenario,
        proxy: Arc<FaultProxy>,
        seed: u64,
    ) -> Result<Phone> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut ctl = Ctl {
            i,
            shared,
            base,
            scenario,
            proxy,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            child: None,
            stdin: None,
            state: State::Dead,
            launches: 0,
            speaking: false,
            draining: false,
            uploading: HashSet::new(),
            tx: tx.clone(),
        };
        ctl.launch(true)?;
        tokio::spawn(ctl.run(rx));
        Ok(Phone { tx })
    }

    pub fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg);
    }

    /// Kills the relay; returns how many times it was launched.
    pub async fn stop(&self) -> u32 {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Stop(tx));
        rx.await.unwrap_or(0)
    }
}

struct Ctl {
    i: usize,
    shared: CampaignEnv,
    base: Vec<String>,
    scenario: Scenario,
    proxy: Arc<FaultProxy>,
    rng: rand::rngs::StdRng,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    state: State,
    launches: u32,
    /// The pendant is mid-utterance: BLE data keeps the app awake.
    speaking: bool,
    draining: bool,
    /// Uploads in flight, so a re-announced task is not run twice at once.
    uploading: HashSet<Uuid>,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Ctl {
    fn name(&self) -> String {
        format!("relay-{}", self.i)
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Notes a lifecycle step in the campaign log, for the timeline.
    fn note(&self, what: &str) {
        let ev = serde_json::json!({"event": "lifecycle", "what": what, "at_ms": now_ms()});
        let _ = self.shared.events.send((Source::Sim(self.i), ev));
    }

    async fn say(&mut self, line: &str) {
        if !line.starts_with("upload") {
            self.note(line);
        }
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    fn window(&mut self) -> Duration {
        let [lo, hi] = self.scenario.lifecycle.wake_window_ms;
        Duration::from_millis(self.rng.gen_range(lo..=hi))
    }

    fn foreground_spell(&mut self) -> Option<Instant> {
        if !self.scenario.lifecycle.enabled || self.draining {
            return None;
        }
        let [lo, hi] = self.scenario.lifecycle.foreground_ms;
        Some(Instant::now() + Duration::from_millis(self.rng.gen_range(lo..=hi)))
    }

    /// Starts the relay process. `foreground`: as the user opens the app;
    /// otherwise as iOS relaunches it in the background for a BLE event.
    fn launch(&mut self, foreground: bool) -> Result<()> {
        let mut args = self.base.clone();
        let f = &self.scenario.faults;
        let slow = f.slow_disk_rate > 0.0 && self.rng.r#gen::<f64>() < f.slow_disk_rate && f.slow_disk_fsync_ms > 0;
        if slow {
            args.extend(["--fsync-delay-ms".to_string(), f.slow_disk_fsync_ms.to_string()]);
        }
        let mut child = self.shared.spawn(Source::Relay(self.i), &self.name(), &args, true)?;
        self.stdin = child.stdin.take();
        self.child = Some(child);
        self.launches += 1;
        if slow {
            self.shared.fault(
                "slow_disk",
                &self.name(),
                format!("launch {} with every fsync {} ms slower", self.launches, f.slow_disk_fsync_ms),
            );
        }
        self.state = if foreground || !self.scenario.lifecycle.enabled {
            State::Foreground { until: self.foreground_spell() }
        } else {
            State::Background { until: Instant::now() }
        };
        Ok(())
    }

    async fn enter_foreground(&mut self) {
        self.state = State::Foreground { until: self.foreground_spell() };
        self.say("foreground").await;
    }

    async fn enter_background(&mut self) {
        let w = self.window();
        self.state = State::Background { until: Instant::now() + w };
        self.say(&format!("background {}", w.as_millis())).await;
    }

    /// A BLE event reached the phone.
    async fn ble_event(&mut self) -> Result<()> {
        match self.state {
            State::Dead => {
                self.launch(false)?;
                self.shared.fault(
                    "relay_relaunch",
                    &self.name(),
                    format!("relaunched on a BLE event (launch {})", self.launches),
                );
                if matches!(self.state, State::Background { .. }) {
                    self.enter_background().await;
                } else {
                    self.say("foreground").await;
                }
            }
            State::Suspended => {
                self.signal(libc::SIGCONT);
                self.note("SIGCONT (woken by BLE)");
                if self.rng.r#gen::<f64>() < self.scenario.lifecycle.foreground_on_wake {
                    self.enter_foreground().await;
                } else {
                    self.enter_background().await;
                }
            }
            State::Background { until } => {
                // Each BLE event extends the background time.
                let w = self.window();
                if Instant::now() + w > until {
                    self.enter_background().await;
                }
            }
            State::Foreground { .. } => {}
        }
        Ok(())
    }

    async fn kill(&mut self, why: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            self.shared.fault("relay_kill", &self.name(), format!("SIGKILL {why}"));
        }
        self.stdin = None;
        self.state = State::Dead;
    }

    /// The wake window ran out: suspend, or be killed by the system.
    async fn window_over(&mut self) {
        self.say("suspend").await;
        tokio::time::sleep(Duration::from_millis(self.scenario.lifecycle.suspend_grace_ms)).await;
        if self.rng.r#gen::<f64>() < self.scenario.faults.relay_kill_on_suspend {
            self.kill("instead of a suspension (jetsam)").await;
        } else {
            self.signal(libc::SIGSTOP);
            self.note("SIGSTOP (suspended)");
            self.state = State::Suspended;
        }
    }

    fn upload(&mut self, task: &Value) {
        let Some(id) = task["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            return;
        };
        if !self.uploading.insert(id) {
            return;
        }
        let path = task["path"].as_str().unwrap_or_default().to_string();
        let url = task["url"].as_str().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = serde_json::from_value(task["headers"].clone()).unwrap_or_default();
        let (tx, events, source) = (self.tx.clone(), self.shared.events.clone(), Source::Sim(self.i));
        let _ = &self.proxy;
        let client = self.shared.http.clone();
        tokio::spawn(async move {
            let mut retries = Retries::new(Backoff::new(Duration::from_millis(500), Duration::from_secs(5)), 0);
            let ok = loop {
                let attempt = async {
                    let body = tokio::fs::read(&path).await.map_err(|e| format!("cannot read {path}: {e}"))?;
                    let mut req = client.put(&url).body(body).timeout(Duration::from_secs(20));
                    for (k, v) in &headers {
                        req = req.header(k, v);
                    }
                    req.send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
                };
                let result = attempt.await;
                let _ = events.send((
                    source,
                    serde_json::json!({"event": "upload_attempt", "id": id, "at_ms": now_ms(),
                        "status": result.as_ref().ok(), "error": result.as_ref().err()}),
                ));
                match result {
                    Ok(s) if (200..300).contains(&s) => break true,
                    // A refusal the server means (other than rate limits): report failure.
                    Ok(s) if (400..500).contains(&s) && s != 429 => break false,
                    // The file is gone: the relay no longer needs this upload.
                    Err(e) if e.starts_with("cannot read") => break false,
                    _ => {}
                }
                tokio::time::sleep(retries.next_delay()).await;
            };
            let _ = tx.send(Msg::UploadDone { id, ok });
        });
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut next_kill =
            poisson_wait(&mut self.rng, self.scenario.faults.relay_kills_per_min).map(|w| Instant::now() + w);
        loop {
            let timer = match self.state {
                State::Foreground { until: Some(t) } | State::Background { until: t } if !self.draining => Some(t),
                _ => None,
            };
            let far = Instant::now() + Duration::from_secs(3600);
            let kill_at = next_kill.filter(|_| !self.draining);
            tokio::select! {
                _ = tokio::time::sleep_until(timer.unwrap_or(far)), if timer.is_some() => {
                    match self.state {
                        State::Foreground { .. } => self.enter_background().await,
                        State::Background { .. } if self.speaking => self.enter_background().await,
                        State::Background { .. } => self.window_over().await,
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    if self.child.is_some() {
                        self.kill("at a random moment (crash)").await;
                    }
                    next_kill = poisson_wait(&mut self.rng, self.scenario.faults.relay_kills_per_min).map(|w| Instant::now() + w);
                }
                _ = check.tick() => {
                    // A relay that exits by itself is a finding, not a fault we applied.
                    if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                        let _ = self.shared.events.send((Source::Sim(self.i), serde_json::json!({
                            "event": "relay_exited", "at_ms": now_ms(), "status": status.to_string() })));
                        self.child = None;
                        self.stdin = None;
                        self.state = State::Dead;
                    }
                }
                msg = rx.recv() => match msg {
                    None => return,
                    Some(Msg::Pendant(ev)) => {
                        match ev["event"].as_str() {
                            Some("utterance_start") => self.speaking = true,
                            Some("utterance_end") => self.speaking = false,
                            _ => {}
                        }
                        if matches!(ev["event"].as_str(), Some("utterance_start" | "utterance_end" | "waiting_for_central"))
                            && !(self.draining && self.child.is_some())
                            && let Err(e) = self.ble_event().await
                        {
                            eprintln!("lanyard sim: {e:#}");
                        }
                    }
                    Some(Msg::Relay(task)) => self.upload(&task),
                    Some(Msg::UploadDone { id, ok }) => {
                        self.uploading.remove(&id);
                        // Delivered to a frozen app when it thaws; dropped for a dead one.
                        let line = format!("{} {id}", if ok { "upload-ok" } else { "upload-failed" });
                        self.say(&line).await;
                    }
                    Some(Msg::Drain) => {
                        self.draining = true;
                        match self.state {
                            State::Dead => {
                                if let Err(e) = self.launch(true) {
                                    eprintln!("lanyard sim: {e:#}");
                                }
                            }
                            State::Suspended => self.signal(libc::SIGCONT),
                            _ => {}
                        }
                        self.enter_foreground().await;
                    }
                    Some(Msg::Stop(reply)) => {
                        self.signal(libc::SIGCONT);
                        if let Some(mut child) = self.child.take() {
                            let _ = child.kill().await;
                        }
                        let _ = reply.send(self.launches);
                        return;
                    }
                }
            }
        }
    }
}
