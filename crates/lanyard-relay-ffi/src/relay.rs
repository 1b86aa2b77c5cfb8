//! [`RelayCore`]: one running relay, its runtime, and the channels into it.
//!
//! # Threads
//!
//! The relay runs on its own tokio runtime: a multi-thread runtime with **one
//! worker**. Multi-thread, because a current-thread runtime only makes
//! progress while some thread sits in `block_on`, and the app's threads call
//! in and return at once; a worker thread of our own drives the relay between
//! calls. One worker, because the relay is one loop (spool, reassembly,
//! uplink) plus a WebSocket reader and writer, all I/O-bound and a few
//! microseconds per event: a second worker would buy no throughput and cost a
//! thread and battery on a phone. A few blocking threads exist only for DNS
//! look-ups.
//!
//! BLE data does not go through the runtime at all. [`RelayCore::notification`]
//! runs the relay's ingest on the caller's thread (the CoreBluetooth delegate
//! queue): it reassembles the notification and writes its frame to the spool
//! with one `write()` before it returns, so a frame the app handed over
//! survives the app being killed the next instant, and a phone does not wake
//! a second thread 50 times a second. It never waits for the network, an
//! fsync (those run on the relay's worker, outside the spool's lock), or the
//! listener: a stalled worker does not stall the BLE stack, and nothing is
//! queued in memory to be dropped. The worker picks the new frames up on its
//! next round (every 200 ms while an utterance goes on, at once when one
//! begins or ends). Notifications given after the relay stopped are counted
//! in [`RelayCore::dropped_notifications`].
//!
//! Events reach [`RelayListener::on_event`] from one task on the runtime, in
//! order. The same task reports the relay's end (`Stopped`) and then wakes
//! [`RelayCore::shutdown`].
//!
//! # The spool lock
//!
//! `lanyard_relay::host::open` takes the spool's single-writer lock and the
//! relay holds it until it stops: a second `RelayCore` on the same spool
//! directory fails with [`RelayError::SpoolInUse`].

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanyard_proto::omi::OmiCodec;
use lanyard_relay::host::{self, HostError, Stamped};
use lanyard_relay::link::LinkEvent;
use lanyard_relay::{Control, PendantPort};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::{Framing, Lifecycle, RelayConfig};
use crate::error::RelayError;
use crate::event::{RelayEvent, RelayListener};

/// How long [`RelayCore::shutdown`] waits. Stopping takes one spool fsync;
/// five seconds is generous even for a slow flash chip, and short enough to
/// fit in iOS's `applicationWillTerminate` allowance.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How the relay ended, as `shutdown` reports it.
type Outcome = Result<(), String>;

/// One relay. Create one per spool directory; it runs until
/// [`RelayCore::shutdown`] or until it is dropped.
#[derive(uniffi::Object)]
pub struct RelayCore {
    /// Taken on shutdown or drop. `Option` so that dropping the runtime can be
    /// done with `shutdown_background`, which is allowed on any thread (a
    /// plain drop panics on a runtime thread, where the last reference may go
    /// away if the listener holds the core).
    runtime: Mutex<Option<Runtime>>,
    /// BLE data in, spooled on the caller's thread.
    link: PendantPort,
    /// Lifecycle, upload results, shutdown. Unbounded: a handful of messages
    /// a minute, and none of them may be dropped.
    control_tx: mpsc::UnboundedSender<Control>,
    /// Notifications (and link events) given after the relay stopped.
    dropped: AtomicU64,
    /// Receives the relay's end once; the result is then kept in `outcome`.
    done_rx: Mutex<Option<std_mpsc::Receiver<Outcome>>>,
    outcome: Mutex<Option<Outcome>>,
}

#[uniffi::export]
impl RelayCore {
    /// Opens the spool, starts the relay and returns at once. Whatever the
    /// spool holds from before (a killed app, a phone without signal) is sent
    /// as soon as the server is reachable.
    #[uniffi::constructor]
    pub fn new(config: RelayConfig, listener: Arc<dyn RelayListener>) -> Result<Arc<Self>, RelayError> {
        let host_cfg = config.to_host()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("lanyard-relay")
            .enable_all()
            .build()
            .map_err(|e| RelayError::Runtime { message: e.to_string() })?;

        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std_mpsc::channel();
        let (relay, link) = host::open(host_cfg, events_tx).map_err(|e| match e {
            HostError::SpoolInUse(path) => RelayError::SpoolInUse { path: path.display().to_string() },
            e => RelayError::Spool { message: e.to_string() },
        })?;

        let run = runtime.spawn(async move {
            // Once it returns the spool is closed: another relay may have it now.
            relay.run(None, control_rx).await
        });
        let events = EventTask { listener };
        runtime.spawn(async move {
            events.forward(events_rx).await;
            let outcome = match run.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e}; fix the cause and create a new RelayCore")),
                Err(e) => Err(format!("the relay crashed ({e}); create a new RelayCore, the spool keeps the audio")),
            };
            events.deliver(RelayEvent::Stopped { at_ms: now_ms(), error: outcome.clone().err() });
            let _ = done_tx.send(outcome);
        });

        Ok(Arc::new(Self {
            runtime: Mutex::new(Some(runtime)),
            link,
            control_tx,
            dropped: AtomicU64::new(0),
            done_rx: Mutex::new(Some(done_rx)),
            outcome: Mutex::new(None),
        }))
    }

    /// A pendant connected. `omi_codec` is the Omi codec characteristic's
    /// value (required for [`Framing::Omi`], ignored for Lanyard framing);
    /// `att_mtu` is the negotiated ATT MTU.
    pub fn pendant_connected(&self, framing: Framing, omi_codec: Option<u8>, att_mtu: u16) -> Result<(), RelayError> {
        let omi_codec = match (framing, omi_codec) {
            (Framing::Lanyard, _) => None,
            (Framing::Omi, None) => {
                return Err(RelayError::InvalidArgument {
                    message: "an Omi pendant needs omi_codec: read the Omi codec characteristic and pass its value"
                        .into(),
                });
            }
            (Framing::Omi, Some(id)) => Some(OmiCodec::from_id(id).ok_or_else(|| RelayError::InvalidArgument {
                message: format!(
                    "Omi codec id {id} is not supported: set the pendant to Opus 16 kHz (21 or 20) or PCM16 (0)"
                ),
            })?),
        };
        self.send_link(LinkEvent::Connected { framing: framing.into(), omi_codec, att_mtu });
        Ok(())
    }

    /// One audio notification, exactly as received. Call it straight from
    /// the BLE callback: its frame is in the spool when this returns (one
    /// `write()`, microseconds; it never waits for the network, an fsync or
    /// the listener). After the relay stopped it is only counted; see
    /// [`RelayCore::dropped_notifications`].
    pub fn notification(&self, data: Vec<u8>) {
        self.send_link(LinkEvent::Notification(data));
    }

    /// The pendant went away (out of range, switched off). The relay
    /// completes the frame in progress; the utterance ends after the silence
    /// timeout unless the pendant comes back and carries on.
    pub fn pendant_disconnected(&self, reason: String) {
        self.send_link(LinkEvent::Disconnected { reason });
    }

    /// The app moved in its lifecycle. On `WillSuspend` the relay hands off
    /// what cannot finish in time as `UploadTask` events.
    pub fn set_lifecycle(&self, lifecycle: Lifecycle) -> Result<(), RelayError> {
        self.control(Control::Lifecycle(lifecycle.into()))
    }

    /// A background upload from an `UploadTask` event finished; `ok` means
    /// the server answered 2xx.
    pub fn upload_finished(&self, utterance_id: String, ok: bool) -> Result<(), RelayError> {
        let id = Uuid::parse_str(&utterance_id).map_err(|_| RelayError::InvalidArgument {
            message: format!("utterance_id {utterance_id:?} is not a UUID: pass the id from the UploadTask event"),
        })?;
        self.control(Control::UploadFinished { id, ok })
    }

    /// Ends the utterance in progress, syncs the spool and stops the relay.
    /// Blocks until then, at most 5 seconds. Call it from any thread but the
    /// relay's own (not from `on_event`). Calling it again returns the same
    /// result.
    pub fn shutdown(&self) -> Result<(), RelayError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(RelayError::CalledFromRelayThread);
        }
        if let Some(outcome) = self.outcome.lock().expect("not poisoned").clone() {
            return outcome.map_err(|message| RelayError::Failed { message });
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        // Everything the app handed over is already in the spool: notification()
        // spools on the caller's thread.
        // The relay may already have stopped by itself; then this send fails
        // and the outcome is waiting below.
        let _ = self.control_tx.send(Control::Shutdown);
        let mut done_rx = self.done_rx.lock().expect("not poisoned");
        let Some(rx) = done_rx.as_ref() else {
            return Err(RelayError::Stopped);
        };
        let outcome = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(outcome) => outcome,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                return Err(RelayError::ShutdownTimeout { timeout_ms: SHUTDOWN_TIMEOUT.as_millis() as u64 });
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err("the relay's runtime went away before it reported its end".to_string())
            }
        };
        *done_rx = None;
        *self.outcome.lock().expect("not poisoned") = Some(outcome.clone());
        // Nothing of the relay is left to run but lingering socket tasks.
        if let Some(rt) = self.runtime.lock().expect("not poisoned").take() {
            rt.shutdown_background();
        }
        outcome.map_err(|message| RelayError::Failed { message })
    }

    /// Notifications and link events given after the relay stopped (they
    /// had nowhere to go: create a new `RelayCore`).
    pub fn dropped_notifications(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl RelayCore {
    fn send_link(&self, event: LinkEvent) {
        if self.link.is_stopped() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.link.event(event);
        }
    }

    fn control(&self, c: Control) -> Result<(), RelayError> {
        self.control_tx.send(c).map_err(|_| RelayError::Stopped)
    }
}

impl Drop for RelayCore {
    fn drop(&mut self) {
        // Without `shutdown` the utterance in progress stays open in the spool
        // (every frame is already written) and the next relay adopts it.
        if let Some(rt) = self.runtime.get_mut().expect("not poisoned").take() {
            rt.shutdown_background();
        }
    }
}

/// Hands events to the listener. See the module doc.
struct EventTask {
    listener: Arc<dyn RelayListener>,
}

impl EventTask {
    /// Forwards events until the relay drops its sender (it stopped).
    async fn forward(&self, mut events: mpsc::UnboundedReceiver<Stamped>) {
        while let Some(ev) = events.recv().await {
            self.deliver(RelayEvent::from_stamped(ev));
        }
    }

    /// Calls the listener, surviving its panics (a foreign exception arrives
    /// as one): a broken listener must not take the spool down with it.
    fn deliver(&self, event: RelayEvent) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.listener.on_event(event))).is_err() {
            tracing::error!("RelayListener::on_event failed; the event is lost to the app, the relay carries on");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
