//! The relay's loop as a state machine: [`RelayCore::step`] takes the time
//! and what woke the loop, and returns what the shell must do. It decides
//! everything [`super::Relay::run`] used to decide inline: the uplink's
//! inputs, the planner's views and decisions, upload bookkeeping, the round
//! cadence, the next wake-up, when to fsync, and when to stop.
//!
//! It touches no socket, timer, task or clock: the shell reads the clock,
//! waits, connects, sends and runs the fsync. Its one durable collaborator
//! is the pendant side's [`Ingest`] (the spool, the reassembler and the
//! boundary tracker), which the shell lends it under the lock for one step;
//! the spool is the relay's state, not a transport. So it is tested with a
//! simulated clock, a spool in a temporary directory, and no socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lanyard_proto::wire::{self, Audio};
use uuid::Uuid;

use super::ingest::Ingest;
use super::{HostConfig, HostError, Lifecycle};
use crate::boundary::MAX_UTTERANCE_FRAMES;
use crate::planner::{Decision, DiscardReason, PlanInput, UttView, plan};
use crate::seal::{seal, sealed_ids};
use crate::spool::SyncJob;
use crate::uplink::{Action, Input, RelayEvent, RelayStats, Uplink};

/// What woke the loop. Every step also runs a round (see [`RelayCore::step`]).
#[derive(Debug)]
pub(crate) enum Wake {
    /// A timer, the link's wake-up, or a pendant event already applied to the [`Ingest`].
    Round,
    /// The WebSocket: connected, a message, or closed.
    Socket(Input),
    /// The app moved in its lifecycle.
    Lifecycle(Lifecycle),
    /// A handed-off background upload finished; `ok`: the server answered 2xx.
    UploadFinished { id: Uuid, ok: bool },
    /// Finish the current utterance, sync the spool and stop.
    Shutdown,
}

/// What the shell carries out, in order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Open a new WebSocket; messages from an older one are ignored from now on.
    Connect,
    /// Close the current WebSocket.
    Disconnect,
    /// Send a text message on the current WebSocket, if it is up.
    SendText(String),
    /// Send a binary message on the current WebSocket, if it is up.
    SendBinary(Vec<u8>),
    /// Tell the app.
    Emit(RelayEvent),
    /// Run this fsync without the lock, then hand it back to the spool
    /// ([`crate::spool::Spool::synced`]).
    Sync(SyncJob),
    /// Sync the whole spool and stop.
    Stop,
}

/// What the end of an utterance costs to deliver beyond its frames: the
/// `end` message and the server's `complete`. Counting it keeps an utterance
/// whose frames are all acknowledged, but not yet complete, in the plan.
const END_COST_BYTES: u64 = 64;

/// Measured upload throughput: an exponentially weighted average of
/// acknowledged bytes per second over the times the uplink had work.
#[derive(Debug, Default)]
struct Meter {
    last_ms: u64,
    last_frames: u64,
    bps: Option<f64>,
}

impl Meter {
    /// An Opus frame at 32 kb/s is 80 bytes on average.
    const FRAME_BYTES: f64 = 80.0;
    /// Each second-long sample moves the average a quarter of the way.
    const WEIGHT: f64 = 0.25;

    fn update(&mut self, now_ms: u64, acked_frames: u64, busy: bool) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if self.last_ms == 0 || !busy {
            (self.last_ms, self.last_frames) = (now_ms, acked_frames);
            return;
        }
        if elapsed < 1000 {
            return;
        }
        let rate = (acked_frames - self.last_frames) as f64 * Self::FRAME_BYTES * 1000.0 / elapsed as f64;
        self.bps = Some(self.bps.map_or(rate, |b| b + Self::WEIGHT * (rate - b)));
        (self.last_ms, self.last_frames) = (now_ms, acked_frames);
    }
}

/// How often the planner looks while the app is in the background.
const BACKGROUND_PLAN_MS: u64 = 1000;

/// How often the counters are reported at most, when they changed. Often
/// enough for a status screen, rare enough to cost nothing: a report comes
/// with a round the loop runs anyway, or at this pace after a change, never
/// from a timer of its own.
pub(crate) const STATS_INTERVAL_MS: u64 = 5_000;

/// The background upload of a sealed utterance, for the app to carry out.
/// Its URL carries when the utterance's time-to-live ends
/// (`expires_ms`: `started_ms` plus [`PlannerConfig::ttl_ms`]), so that an
/// upload iOS runs later than that, with no relay awake to cancel it, is
/// refused by the server (410 `expired`) rather than answered. One cut at
/// the server's endpoint says which of its frames are speech, as `end` does.
fn upload_task(
    cfg: &HostConfig,
    id: Uuid,
    path: &Path,
    content_type: &str,
    u: &crate::spool::SpooledUtterance,
) -> RelayEvent {
    let mut url = format!("{}/v1/utterances/{id}/audio", cfg.server.trim_end_matches('/'));
    url.push_str(&format!("?expires_ms={}", u.started_ms.saturating_add(cfg.planner.ttl_ms)));
    // A sealed file stops at the server's limit (see `seal`); a cut past it cuts nothing.
    if let Some(s) = u.speech_frames.filter(|&s| s < MAX_UTTERANCE_FRAMES) {
        url.push_str(&format!("&speech_frames={s}"));
    }
    // As the stream's `open` says it: no reply if it holds no speech.
    if u.unmarked {
        url.push_str("&unmarked=1");
    }
    RelayEvent::UploadTask {
        id,
        path: path.to_string_lossy().into_owned(),
        url,
        method: "PUT".into(),
        headers: vec![
            ("Authorization".into(), format!("Bearer {}", cfg.token.expose())),
            ("Content-Type".into(), content_type.into()),
        ],
    }
}

/// The relay's decisions between wake-ups.
pub(crate) struct RelayCore {
    cfg: HostConfig,
    uplink: Uplink,
    /// The uplink's decisions not yet carried out.
    actions: Vec<Action>,
    /// Utterances the app uploads in the background, and their sealed files.
    handed_off: HashMap<Uuid, PathBuf>,
    /// The end of the app's background time, while it is in the background.
    deadline: Option<u64>,
    /// The app is about to be suspended.
    suspending: bool,
    /// Whether the plan at the deadline minus the margin has run.
    final_plan_done: bool,
    meter: Meter,
    discarded: u64,
    last_stats: Option<RelayStats>,
    /// When the counters were last reported.
    last_stats_ms: u64,
    /// A change not reported yet waits for this time.
    stats_due: Option<u64>,
    shutdown: bool,
    replies: usize,
    /// While frames arrive the loop looks at least this often: to hand them
    /// to the uplink, and to fsync them within the sync interval.
    round_ms: u64,
    /// When the next round of a live utterance is due.
    round_at: Option<u64>,
    /// `None`: nothing to wait for but an event (no utterance pending, no
    /// timer asked for).
    next_wake: Option<u64>,
}

impl RelayCore {
    /// Takes over from a spool recovered at `now`: uploads handed off
    /// before a restart are the app's to finish and are announced again,
    /// everything else the spool holds goes to the uplink. Returns the
    /// announcements; the uplink's first actions come with the first step.
    pub(crate) fn new(cfg: HostConfig, ingest: &Ingest, jitter_seed: u64, now: u64) -> (Self, Vec<Effect>) {
        let round_ms = cfg.send_interval.min(cfg.sync_interval).as_millis().max(1) as u64;
        let mut core = RelayCore {
            uplink: Uplink::new(cfg.uplink.clone(), jitter_seed),
            cfg,
            actions: Vec::new(),
            handed_off: HashMap::new(),
            deadline: None,
            suspending: false,
            final_plan_done: false,
            meter: Meter::default(),
            discarded: 0,
            last_stats: None,
            last_stats_ms: 0,
            stats_due: None,
            shutdown: false,
            replies: 0,
            round_ms,
            round_at: None,
            next_wake: Some(now),
        };
        let mut effects = Vec::new();
        let spool = &ingest.spool;
        for (id, path) in sealed_ids(&core.cfg.spool_dir) {
            if spool.utterance(id).is_some_and(|u| !u.done) {
                core.handed_off.insert(id, path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        // Re-announce them: the app may have died before it started the upload,
        // and an app that still runs one ignores a task id it already has.
        // One whose time-to-live ran out meanwhile is announced too: its
        // upload may have reached the server in time, and the server
        // decides (200, or 410 `expired`, after which the app reports it
        // failed and the relay discards it).
        for (&id, path) in &core.handed_off {
            let content_type = if path.extension().is_some_and(|e| e == "wav") { "audio/wav" } else { "audio/ogg" };
            if let Some(u) = spool.utterance(id) {
                effects.push(Effect::Emit(upload_task(&core.cfg, id, path, content_type, u)));
            }
        }
        for u in spool.pending().filter(|u| !core.handed_off.contains_key(&u.id)) {
            let input = if u.ended {
                Input::Ended {
                    id: u.id,
                    codec: u.codec,
                    frames: u.frame_count(),
                    speech_frames: u.speech_frames,
                    unmarked: u.unmarked,
                }
            } else {
                Input::Spooled { id: u.id, codec: u.codec, frames: u.frame_count(), unmarked: u.unmarked }
            };
            core.uplink.handle(now, input, &mut core.actions);
        }
        (core, effects)
    }

    /// When the loop must step again if nothing wakes it first; `None`
    /// when only an event can give it work. An idle relay sets no timer: a
    /// phone pays for every wake-up.
    pub(crate) fn next_wake(&self) -> Option<u64> {
        self.next_wake
    }

    /// Handles what woke the loop at `now`, then runs one round: whatever
    /// woke the loop, catch up on everything. The effects end with the
    /// spool's fsync, if one comes due, or with [`Effect::Stop`].
    pub(crate) fn step(&mut self, now: u64, wake: Wake, ingest: &mut Ingest) -> Result<Vec<Effect>, HostError> {
        let mut out = Vec::new();
        match wake {
            Wake::Round => {}
            Wake::Socket(input) => self.uplink.handle(now, input, &mut self.actions),
            Wake::Lifecycle(l) => self.on_lifecycle(now, l, ingest)?,
            Wake::UploadFinished { id, ok } => self.on_upload_finished(now, id, ok, ingest, &mut out)?,
            Wake::Shutdown => {
                ingest.end_now(now)?;
                self.shutdown = true;
            }
        }
        self.round(now, ingest, &mut out)?;
        Ok(out)
    }

    fn on_lifecycle(&mut self, now: u64, l: Lifecycle, ingest: &mut Ingest) -> Result<(), HostError> {
        tracing::info!(?l, "lifecycle");
        (self.deadline, self.suspending) = match l {
            Lifecycle::Foreground => (None, false),
            Lifecycle::Background { remaining_ms } => (Some(now + remaining_ms), false),
            // BLE data stops with the app: what was said so far is the utterance.
            Lifecycle::WillSuspend => {
                ingest.end_now(now)?;
                (self.deadline, true)
            }
        };
        self.final_plan_done = false;
        Ok(())
    }

    fn on_upload_finished(
        &mut self,
        now: u64,
        id: Uuid,
        ok: bool,
        ingest: &mut Ingest,
        out: &mut Vec<Effect>,
    ) -> Result<(), HostError> {
        let Some(path) = self.handed_off.remove(&id) else {
            tracing::warn!(%id, "upload result for an utterance that was not handed off");
            return Ok(());
        };
        let _ = std::fs::remove_file(path);
        let spool = &mut ingest.spool;
        let Some(u) = spool.utterance(id) else { return Ok(()) };
        let (codec, frames, speech_frames, unmarked, age_ms) =
            (u.codec, u.frame_count(), u.speech_frames, u.unmarked, now.saturating_sub(u.started_ms));
        if ok {
            spool.mark_done(id)?;
            // The sealed file stopped at the server's limit.
            out.push(Effect::Emit(RelayEvent::Complete { id, frames: frames.min(MAX_UTTERANCE_FRAMES) }));
        } else if age_ms > self.cfg.planner.ttl_ms {
            // Past its time-to-live (the server refuses it, 410 `expired`):
            // discarded by the planner's rule, before the uplink could open it again.
            let reason = format!("{} (its background upload failed)", DiscardReason::Stale { age_ms });
            spool.mark_dropped(id, &reason)?;
            self.discarded += 1;
            out.push(Effect::Emit(RelayEvent::Discarded { id, reason }));
        } else {
            // Back to the planner: stream it, or hand it off again.
            tracing::warn!(%id, "background upload failed");
            let ended = Input::Ended { id, codec, frames, speech_frames, unmarked };
            self.uplink.handle(now, ended, &mut self.actions);
        }
        Ok(())
    }

    /// Reports the counters if they changed, at most every
    /// [`STATS_INTERVAL_MS`]; a change that must wait sets `stats_due`.
    fn report_stats(&mut self, now: u64, ingest: &Ingest, out: &mut Vec<Effect>) {
        let ble = ingest.reassembler.stats();
        let stats = RelayStats {
            spool_bytes: ingest.spool.disk_bytes(),
            pending_utterances: ingest.spool.pending().count() as u32,
            handed_off: self.handed_off.len() as u32,
            lost_frames: ble.lost + ingest.malformed,
            duplicate_notifications: ble.duplicates,
            discarded: self.discarded,
        };
        self.stats_due = None;
        if self.last_stats == Some(stats) {
            return;
        }
        let due = self.last_stats_ms.saturating_add(STATS_INTERVAL_MS);
        if self.last_stats.is_none() || now >= due {
            out.push(Effect::Emit(RelayEvent::Stats(stats)));
            (self.last_stats, self.last_stats_ms) = (Some(stats), now);
        } else {
            self.stats_due = Some(due);
        }
    }

    /// One round: the clock, the link's news, evictions, endpoints, the
    /// uplink's actions, the planner, the exit rule, the next wake-up and
    /// the fsync.
    fn round(&mut self, now: u64, ingest: &mut Ingest, out: &mut Vec<Effect>) -> Result<(), HostError> {
        if let Some(e) = ingest.failed.take() {
            return Err(e.into());
        }
        ingest.on_tick(now)?;
        self.take_news(now, ingest);
        self.uplink.handle(now, Input::Tick, &mut self.actions);
        let busy = self.uplink.is_connected() && self.uplink.pending() > 0;
        self.meter.update(now, self.uplink.acked_frames(), busy);

        // The spool makes room by evicting the oldest audio when it is full:
        // each eviction is reported, and the uplink stops sending it.
        for (id, reason) in ingest.spool.take_evicted() {
            self.discarded += 1;
            self.uplink.handle(now, Input::Forget { id }, &mut self.actions);
            self.actions.retain(|a| !matches!(a, Action::SendAudio { id: i, .. } if *i == id));
            out.push(Effect::Emit(RelayEvent::Discarded { id, reason }));
        }

        // The server heard speech stop: an utterance no marker opened
        // ends here, and its `end` goes out in this round; what was
        // spooled after the server's split begins the next one.
        let mut endpoints = Vec::new();
        self.actions.retain(|a| match a {
            Action::Endpoint { id, frames } => {
                endpoints.push((*id, *frames));
                false
            }
            _ => true,
        });
        if !endpoints.is_empty() {
            for (id, frames) in endpoints {
                ingest.on_endpoint(id, frames, now)?;
            }
            self.take_news(now, ingest);
        }

        // Carry out the uplink's decisions first: a `complete` that came in
        // this round marks the spool done, and the planner must not hand
        // off (or discard) an utterance the server already holds.
        self.carry_out(ingest, out)?;
        self.run_planner(now, ingest, out)?;
        self.carry_out(ingest, out)?;

        let live = ingest.tracker.current().is_some();
        let idle = self.uplink.pending() == 0 && !live && self.handed_off.is_empty();
        let exit = match self.cfg.exit_after {
            Some(n) => self.replies >= n,
            None => !ingest.link_open,
        };
        if self.shutdown || (idle && exit) {
            out.push(Effect::Stop);
            return Ok(());
        }
        self.report_stats(now, ingest, out);
        self.plan_wake(now, live, ingest);
        self.sync_when_due(now, ingest, out)
    }

    /// Fsyncs what the spool holds that the server does not, within the
    /// sync interval of its writing. Frames the server has acknowledged need
    /// no fsync (`Spool::needs_sync`): it holds them durably. So while
    /// connected the fsync waits until it is due, by when the ack for the
    /// round's frames has usually come and made it unnecessary; offline it
    /// runs in the last round before it comes due.
    fn sync_when_due(&mut self, now: u64, ingest: &mut Ingest, out: &mut Vec<Effect>) -> Result<(), HostError> {
        let Some(dirty) = ingest.dirty_since_ms else { return Ok(()) };
        if !ingest.spool.needs_sync(|id| self.uplink.acked(id)) {
            ingest.dirty_since_ms = None;
            return Ok(());
        }
        let due = dirty + self.cfg.sync_interval.as_millis() as u64;
        let before_next = self.next_wake.is_none_or(|w| due <= w);
        if due <= now || (before_next && !self.uplink.is_connected()) {
            ingest.dirty_since_ms = None;
            if let Some(job) = ingest.spool.sync_job()? {
                out.push(Effect::Sync(job));
            }
        } else {
            self.next_wake = Some(self.next_wake.map_or(due, |w| w.min(due)));
        }
        Ok(())
    }

    /// Hands what the link spooled since the last look to the uplink.
    fn take_news(&mut self, now: u64, ingest: &mut Ingest) {
        for input in std::mem::take(&mut ingest.news) {
            self.uplink.handle(now, input, &mut self.actions);
        }
    }

    /// The planner is a few comparisons per utterance: it runs every round.
    fn run_planner(&mut self, now: u64, ingest: &mut Ingest, out: &mut Vec<Effect>) -> Result<(), HostError> {
        if self.final_plan_at().is_some_and(|t| now >= t) {
            self.final_plan_done = true;
        }
        let spool = &ingest.spool;
        let views: Vec<UttView> = spool
            .pending()
            .filter(|u| u.ended && !self.handed_off.contains_key(&u.id))
            .map(|u| UttView {
                id: u.id,
                started_ms: u.started_ms,
                // Frames past the server's limit are never sent (see `Uplink`).
                unacked_bytes: spool
                    .bytes_from(u.id, self.uplink.acked(u.id).unwrap_or(0))
                    .saturating_sub(spool.bytes_from(u.id, MAX_UTTERANCE_FRAMES))
                    + END_COST_BYTES,
            })
            .collect();
        let input = PlanInput {
            now_ms: now,
            deadline_ms: self.deadline,
            suspending: self.suspending,
            network_up: !self.uplink.failing(),
            connected: self.uplink.is_connected(),
            throughput_bps: self.meter.bps,
            utterances: &views,
        };
        for (id, decision) in plan(&self.cfg.planner, &input) {
            match decision {
                Decision::Stream => {}
                Decision::HandOff => {
                    let sealed = seal(&ingest.spool, id)?;
                    self.uplink.handle(now, Input::Forget { id }, &mut self.actions);
                    if let Some(u) = ingest.spool.utterance(id) {
                        out.push(Effect::Emit(upload_task(&self.cfg, id, &sealed.path, sealed.content_type, u)));
                    }
                    self.handed_off.insert(id, sealed.path);
                }
                Decision::Discard(reason) => {
                    let reason = reason.to_string();
                    ingest.spool.mark_dropped(id, &reason)?;
                    self.discarded += 1;
                    self.uplink.handle(now, Input::Forget { id }, &mut self.actions);
                    out.push(Effect::Emit(RelayEvent::Discarded { id, reason }));
                }
            }
        }
        Ok(())
    }

    /// When the last plan before the background deadline runs.
    fn final_plan_at(&self) -> Option<u64> {
        self.deadline.map(|d| d.saturating_sub(self.cfg.planner.safety_margin_ms))
    }

    /// Chooses the next wake-up: while an utterance goes on, rounds come at
    /// a steady cadence whatever else wakes the loop (acks, replies); then
    /// whatever the state machines asked for.
    fn plan_wake(&mut self, now: u64, live: bool, ingest: &Ingest) {
        self.round_at = match self.round_at {
            Some(t) if live && now < t => Some(t),
            _ if live => Some(now + self.round_ms),
            _ => None,
        };
        // Utterances still to deliver: the planner must look again when the
        // oldest would go stale (its TTL), and in the background it watches
        // the throughput. With none, an idle relay sleeps until an event.
        let pending = ingest.spool.pending().next().is_some();
        // The planner's views: ended and not handed off (the server judges
        // a handed-off upload's age).
        let oldest = ingest
            .spool
            .pending()
            .filter(|u| u.ended && !self.handed_off.contains_key(&u.id))
            .map(|u| u.started_ms)
            .min();
        self.next_wake = [
            self.round_at,
            ingest.tracker.next_deadline(),
            self.uplink.next_deadline(),
            self.final_plan_at().filter(|_| !self.final_plan_done),
            self.deadline.filter(|_| pending).map(|_| now + BACKGROUND_PLAN_MS),
            // Stale once older than the TTL: the first ms after it.
            oldest.map(|t| t.saturating_add(self.cfg.planner.ttl_ms).max(now) + 1),
            self.stats_due,
        ]
        .into_iter()
        .flatten()
        .min();
    }

    /// Turns the uplink's actions into effects, in order; those that touch
    /// the spool (reading a frame to send, marking done) are done here.
    fn carry_out(&mut self, ingest: &mut Ingest, out: &mut Vec<Effect>) -> Result<(), HostError> {
        for action in self.actions.drain(..) {
            match action {
                Action::Connect => out.push(Effect::Connect),
                Action::Disconnect => out.push(Effect::Disconnect),
                Action::SendText(msg) => out.push(Effect::SendText(msg.to_json())),
                Action::SendAudio { id, handle, seq } => {
                    let frame = ingest.spool.read_frame(id, seq)?;
                    out.push(Effect::SendBinary(wire::encode_audio(&Audio { handle, seq, frame: &frame })));
                }
                Action::Done(id) => ingest.spool.mark_done(id)?,
                Action::Drop { id, reason } => {
                    ingest.spool.mark_dropped(id, &reason)?;
                    out.push(Effect::Emit(RelayEvent::Discarded { id, reason }));
                }
                Action::Emit(event) => {
                    self.replies += usize::from(matches!(event, RelayEvent::Reply { .. }));
                    out.push(Effect::Emit(event));
                }
                // Taken out by the round before this, under the core's lock.
                Action::Endpoint { .. } => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The loop's decisions with a simulated clock, a spool in a temporary
    //! directory, and a server played by [`Server`]: no socket, no timer.

    use std::collections::HashMap;

    use lanyard_proto::wire::{self, Ack, Binary, ClientMsg, ServerMsg};
    use tokio::sync::mpsc;
    use uuid::Uuid;

    use super::super::ingest::Ingest;
    use super::super::testing::{TOC_20MS, frame, notification, relay_config};
    use super::super::{HostConfig, Lifecycle};
    use super::{Effect, RelayCore, STATS_INTERVAL_MS, Wake};
    use crate::uplink::{Input, RelayEvent};

    /// A relay's core over a spool in a temporary directory, at `T0`.
    struct Rig {
        _dir: tempfile::TempDir,
        ingest: Ingest,
        /// What the pendant side emits (utterances beginning and ending).
        ingest_events: mpsc::UnboundedReceiver<super::super::Stamped>,
        core: RelayCore,
        now: u64,
        /// Everything emitted, in order.
        events: Vec<RelayEvent>,
        /// Every effect other than `Emit` and `Sync`, in order.
        effects: Vec<Effect>,
        /// When each fsync ran, in ms after `T0`.
        fsyncs: Vec<u64>,
    }

    const T0: u64 = 1_000_000;

    impl Rig {
        fn new(cfg: impl FnOnce(&mut HostConfig)) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let mut config = HostConfig { spool_dir: dir.path().to_path_buf(), ..relay_config() };
            cfg(&mut config);
            let (tx, ingest_events) = mpsc::unbounded_channel();
            let ingest = Ingest::open(&config, T0, tx).unwrap();
            let (core, _) = RelayCore::new(config, &ingest, 7, T0);
            Rig {
                _dir: dir,
                ingest,
                ingest_events,
                core,
                now: T0,
                events: Vec::new(),
                effects: Vec::new(),
                fsyncs: Vec::new(),
            }
        }

        /// Steps at `at` (ms after `T0`) and keeps what came out.
        fn step(&mut self, at: u64, wake: Wake) {
            self.now = T0 + at;
            let effects = self.core.step(self.now, wake, &mut self.ingest).unwrap();
            while let Ok(stamped) = self.ingest_events.try_recv() {
                self.events.push(stamped.event);
            }
            for effect in effects {
                match effect {
                    Effect::Emit(event) => self.events.push(event),
                    // The fsync runs, as the shell runs it.
                    Effect::Sync(job) => {
                        job.run().unwrap();
                        self.ingest.spool.synced(job);
                        self.fsyncs.push(at);
                    }
                    other => self.effects.push(other),
                }
            }
        }

        /// The pendant sends frame `seq` at `at`; the loop is not woken
        /// (plain frames wait for its round).
        fn frame(&mut self, at: u64, seq: u16, start: bool) {
            self.ingest.on_link(frame(seq, start), T0 + at).unwrap();
        }

        fn end_marker(&mut self, at: u64, seq: u16) {
            let mut data = [0u8; 80];
            data[0] = TOC_20MS;
            self.ingest.on_link(notification(seq, false, true, &data), T0 + at).unwrap();
        }

        fn take_effects(&mut self) -> Vec<Effect> {
            std::mem::take(&mut self.effects)
        }

        fn wake_in(&self) -> Option<u64> {
            self.core.next_wake().map(|w| w - self.now)
        }
    }

    /// The server's part, played in memory: it opens what the relay opens,
    /// acknowledges every frame, completes what ends, and replies once.
    #[derive(Default)]
    struct Server {
        /// Frames held, by handle.
        held: HashMap<u32, (Uuid, u32)>,
        completed: Vec<Uuid>,
    }

    impl Server {
        /// Answers a round's effects, as the socket would deliver them.
        fn answer(&mut self, effects: Vec<Effect>) -> Vec<Wake> {
            let mut out = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Connect => out.push(Wake::Socket(Input::Connected)),
                    Effect::SendText(text) => match wire::parse_client_text(&text).unwrap() {
                        ClientMsg::Open { utterance, handle, .. } => {
                            let next_seq = self.held.get(&handle).map_or(0, |h| h.1);
                            self.held.insert(handle, (utterance, next_seq));
                            let opened = ServerMsg::Opened { utterance, handle, next_seq, complete: false };
                            out.push(Wake::Socket(Input::Server(opened)));
                        }
                        ClientMsg::End { utterance, frames, .. } => {
                            self.completed.push(utterance);
                            out.push(Wake::Socket(Input::Server(ServerMsg::Complete { utterance, frames })));
                            let reply = ServerMsg::Reply { utterance, title: "t".into(), body: "b".into() };
                            out.push(Wake::Socket(Input::Server(reply)));
                        }
                    },
                    Effect::SendBinary(bytes) => {
                        let Ok(Binary::Audio(a)) = wire::parse_binary(&bytes) else { panic!("not audio") };
                        let held = self.held.get_mut(&a.handle).expect("opened");
                        assert_eq!(a.seq, held.1, "frames in order, none twice");
                        held.1 += 1;
                        out.push(Wake::Socket(Input::Ack(Ack { handle: a.handle, next: held.1 })));
                    }
                    _ => {}
                }
            }
            out
        }
    }

    #[test]
    fn rounds_come_at_the_send_interval_only_while_an_utterance_goes_on() {
        let mut rig = Rig::new(|_| {});
        rig.step(0, Wake::Round);
        assert_eq!(rig.wake_in(), None, "nothing to do: no timer at all");
        assert!(rig.take_effects().is_empty(), "no connection without audio");

        rig.frame(10, 0, true);
        rig.step(10, Wake::Round);
        assert_eq!(rig.wake_in(), Some(200), "a live utterance: the next round one send interval on");
        // Something else (an ack, a reply) wakes the loop: the cadence holds.
        rig.step(90, Wake::Round);
        assert_eq!(rig.core.next_wake(), Some(T0 + 210));

        rig.end_marker(150, 1);
        rig.step(150, Wake::Round);
        assert!(rig.core.next_wake().is_none_or(|w| w > T0 + 210), "ended: no more rounds at the cadence");
    }

    /// Streams one second of frames, every 20 ms from `T0`, with the clock
    /// in 5 ms steps; the loop steps whenever its wake-up comes, and the
    /// server, if `online`, answers 5 ms later. Returns the times of the
    /// fsyncs, and of the frames that were unacknowledged for longer than
    /// the sync interval without one.
    fn stream_one_second(online: bool) -> Vec<u64> {
        let mut rig = Rig::new(|_| {});
        let mut server = Server::default();
        let mut answers: Vec<(u64, Wake)> = Vec::new();
        for t in (0..=1000u64).step_by(5) {
            if t % 20 == 0 && t < 1000 {
                rig.frame(t, (t / 20) as u16, t == 0);
            }
            let mut wakes: Vec<Wake> = Vec::new();
            while let Some(i) = answers.iter().position(|(at, _)| *at <= t) {
                wakes.push(answers.remove(i).1);
            }
            if rig.core.next_wake().is_some_and(|w| T0 + t >= w) {
                wakes.push(Wake::Round);
            }
            for wake in wakes {
                rig.step(t, wake);
                let effects = rig.take_effects();
                if online {
                    answers.extend(server.answer(effects).into_iter().map(|w| (t + 5, w)));
                }
            }
        }
        rig.fsyncs
    }

    #[test]
    fn unacknowledged_frames_are_fsynced_within_the_sync_interval_and_acknowledged_ones_are_not() {
        // Offline: every round fsyncs what it holds, in time.
        let offline = stream_one_second(false);
        assert!(offline.len() >= 5, "{offline:?}");
        for pair in offline.windows(2) {
            assert!(pair[1] - pair[0] <= 200, "a frame waited over 200 ms for its fsync: {offline:?}");
        }
        // Online: the server acknowledges each round's frames before their
        // fsync comes due. Only the utterance's begin record, which no ack
        // covers, is fsynced: in the first round, before the connection is up.
        let online = stream_one_second(true);
        assert_eq!(online, vec![0], "fsyncs of acknowledged audio");
    }

    #[test]
    fn the_relay_stops_after_its_replies_once_nothing_is_left_to_send() {
        let mut rig = Rig::new(|cfg| cfg.exit_after = Some(1));
        let mut server = Server::default();
        rig.frame(0, 0, true);
        rig.frame(20, 1, false);
        rig.end_marker(40, 2);
        let mut at = 40;
        rig.step(at, Wake::Round);
        let mut stopped = false;
        while !stopped {
            let effects = rig.take_effects();
            stopped = effects.iter().any(|e| matches!(e, Effect::Stop));
            let answers = server.answer(effects);
            if answers.is_empty() && !stopped {
                at += 100;
                rig.step(at, Wake::Round);
            }
            for wake in answers {
                rig.step(at, wake);
            }
            assert!(at < 5_000, "never stopped: {:?}", rig.events);
        }
        assert_eq!(server.completed.len(), 1);
        assert!(rig.events.iter().any(|e| matches!(e, RelayEvent::Reply { .. })));
        let pending = rig.ingest.spool.pending().count();
        assert_eq!(pending, 0, "the spool deleted what the server completed");
    }

    #[test]
    fn a_relay_without_exit_after_stops_when_the_link_closes_and_everything_is_delivered() {
        let mut rig = Rig::new(|_| {});
        rig.step(0, Wake::Round);
        rig.ingest.link_open = false;
        rig.step(10, Wake::Round);
        assert!(rig.take_effects().iter().any(|e| matches!(e, Effect::Stop)));

        // Shutdown ends the utterance in progress and stops at once.
        let mut rig = Rig::new(|_| {});
        rig.frame(0, 0, true);
        rig.step(0, Wake::Shutdown);
        assert!(rig.take_effects().iter().any(|e| matches!(e, Effect::Stop)));
        assert!(
            rig.events.iter().any(|e| matches!(e, RelayEvent::UtteranceEnded { frames: 1, .. })),
            "{:?}",
            rig.events
        );
    }

    /// Offline in the background: the planner hands the utterance off before
    /// the deadline; the app's upload result settles it.
    fn handed_off(ttl_ms: u64) -> (Rig, Uuid) {
        let mut rig = Rig::new(|cfg| cfg.planner.ttl_ms = ttl_ms);
        rig.frame(0, 0, true);
        rig.end_marker(20, 1);
        rig.step(20, Wake::Round);
        rig.step(30, Wake::Socket(Input::Disconnected { reason: "offline".into() }));
        rig.step(40, Wake::Lifecycle(Lifecycle::Background { remaining_ms: 5_000 }));
        let mut at;
        while !rig.events.iter().any(|e| matches!(e, RelayEvent::UploadTask { .. })) {
            at = rig.core.next_wake().expect("a background plan is due") - T0;
            assert!(at < 5_040, "not handed off before the deadline: {:?}", rig.events);
            rig.step(at, Wake::Round);
        }
        let id = rig.ingest.spool.pending().next().unwrap().id;
        let task = rig.events.iter().find_map(|e| match e {
            RelayEvent::UploadTask { url, headers, .. } => Some((url.clone(), headers.clone())),
            _ => None,
        });
        let (url, headers) = task.unwrap();
        assert!(url.contains(&format!("/v1/utterances/{id}/audio?expires_ms=")), "{url}");
        // The token itself, not its redacted form.
        assert!(headers.contains(&("Authorization".to_string(), "Bearer t".to_string())), "{headers:?}");
        (rig, id)
    }

    #[test]
    fn an_utterance_that_cannot_be_streamed_in_the_background_is_handed_off_and_completed_by_its_upload() {
        let (mut rig, id) = handed_off(60_000);
        rig.step(6_000, Wake::UploadFinished { id, ok: true });
        assert!(rig.events.contains(&RelayEvent::Complete { id, frames: 2 }), "{:?}", rig.events);
        assert_eq!(rig.ingest.spool.pending().count(), 0);
    }

    #[test]
    fn a_failed_upload_goes_back_to_the_planner_or_past_its_ttl_is_discarded_and_counted() {
        let (mut rig, id) = handed_off(60_000);
        rig.step(6_000, Wake::UploadFinished { id, ok: false });
        assert!(!rig.events.iter().any(|e| matches!(e, RelayEvent::Discarded { .. })));
        assert_eq!(rig.ingest.spool.pending().count(), 1, "still the relay's to deliver");

        let (mut rig, id) = handed_off(1_000);
        rig.step(6_000, Wake::UploadFinished { id, ok: false });
        let reason = rig.events.iter().find_map(|e| match e {
            RelayEvent::Discarded { id: i, reason } if *i == id => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.is_some_and(|r| r.contains("background upload failed")), "{:?}", rig.events);
        rig.step(6_000 + STATS_INTERVAL_MS, Wake::Round);
        let stats = rig.events.iter().rev().find_map(|e| match e {
            RelayEvent::Stats(s) => Some(*s),
            _ => None,
        });
        assert_eq!(stats.map(|s| (s.discarded, s.handed_off)), Some((1, 0)));
    }

    #[test]
    fn an_upload_result_for_an_utterance_never_handed_off_changes_nothing() {
        let mut rig = Rig::new(|_| {});
        rig.frame(0, 0, true);
        rig.end_marker(20, 1);
        rig.step(20, Wake::Round);
        rig.step(30, Wake::UploadFinished { id: Uuid::now_v7(), ok: true });
        assert_eq!(rig.ingest.spool.pending().count(), 1);
    }

    #[test]
    fn an_idle_relay_sets_no_timer_and_one_holding_audio_wakes_when_it_goes_stale() {
        // Offline with an ended utterance: the uplink's reconnects, and the
        // planner's look when the utterance's TTL runs out.
        let mut rig = Rig::new(|cfg| cfg.planner.ttl_ms = 60_000);
        rig.frame(0, 0, true);
        rig.end_marker(20, 1);
        rig.step(20, Wake::Round);
        let mut at = 20;
        while rig.events.iter().all(|e| !matches!(e, RelayEvent::Discarded { .. })) {
            rig.step(at, Wake::Socket(Input::Disconnected { reason: "offline".into() }));
            at = rig.core.next_wake().expect("a relay holding audio always has a wake-up") - T0;
            assert!(at <= 60_001, "woke at {at} ms: after the utterance went stale");
            rig.step(at, Wake::Round);
        }
        // Delivered or discarded, nothing is left: no timer but the counters'
        // report of the change, then none.
        rig.step(at + 1, Wake::Round);
        if let Some(w) = rig.core.next_wake() {
            rig.step(w - T0, Wake::Round);
        }
        assert_eq!(rig.core.next_wake(), None, "{:?}", rig.events.last());
    }

    #[test]
    fn the_counters_are_reported_from_rounds_at_most_every_interval() {
        let mut rig = Rig::new(|_| {});
        let reports = |rig: &Rig| rig.events.iter().filter(|e| matches!(e, RelayEvent::Stats(_))).count();
        rig.step(0, Wake::Round);
        assert_eq!(reports(&rig), 1, "the first round reports");
        for i in 0..50u16 {
            rig.frame(u64::from(i) * 20, i, i == 0);
            if i % 10 == 0 {
                rig.step(u64::from(i) * 20, Wake::Round);
            }
        }
        assert_eq!(reports(&rig), 1, "changes within the interval wait");
        let due = rig.core.next_wake().unwrap();
        assert!(due <= T0 + STATS_INTERVAL_MS, "a pending change asks for a wake-up");
        rig.step(STATS_INTERVAL_MS, Wake::Round);
        assert_eq!(reports(&rig), 2);
    }
}
