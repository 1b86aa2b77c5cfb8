//! The host's ingest path: a `PendantPort` spools on the caller's thread, before
//! the relay's loop ever runs, and stops touching the spool once the relay
//! has stopped.

use std::time::Duration;

use lanyard_proto::ble::{Codec, FrameSpec, Framing, packetize};
use lanyard_relay::RelayEvent;
use lanyard_relay::host::{Control, HostConfig, Lifecycle, Stamped};
use lanyard_relay::link::LinkEvent;
use lanyard_relay::spool::Spool;
use tokio::sync::mpsc;

fn config(dir: &std::path::Path) -> HostConfig {
    // Nothing listens on port 1: the relay must spool without a server.
    HostConfig { sync_interval: Duration::from_millis(200), ..HostConfig::new(dir, "http://127.0.0.1:1", "t") }
}

/// Frame `seq`: one 20 ms Opus packet (TOC byte: configuration 1, mono,
/// code 0) whose other bytes say which frame it is.
fn opus_frame(seq: u16) -> [u8; 80] {
    let mut data = [seq as u8; 80];
    data[0] = 1 << 3;
    data
}

fn notification(seq: u16, start: bool, end: bool) -> LinkEvent {
    let data = opus_frame(seq);
    let spec = FrameSpec { seq, codec: Codec::Opus16k20ms, start, end, data: &data };
    let mut n = packetize(&spec, 185).unwrap();
    assert_eq!(n.len(), 1);
    LinkEvent::Notification(n.remove(0))
}

fn connected() -> LinkEvent {
    LinkEvent::Connected { framing: Framing::Lanyard, omi_codec: None, att_mtu: 185 }
}

/// Opens a relay on the spool in `dir`, hands it a pendant connection and
/// the notifications `seqs` (frame 0 marks an utterance's start), and drops
/// it as a killed app would: the loop never runs, nothing is synced or sent.
fn spool_then_kill(dir: &std::path::Path, seqs: std::ops::Range<u16>) {
    let (tx, _rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(config(dir), tx).unwrap();
    link.event(connected());
    for seq in seqs {
        link.event(notification(seq, seq == 0, false));
    }
    drop((relay, link));
}

#[test]
fn link_event_spools_the_frame_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    spool_then_kill(dir.path(), 0..5);
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let id = spool.open_utterance().expect("the utterance in progress is in the spool");
    let u = spool.utterance(id).unwrap();
    assert_eq!(u.frame_count(), 5);
    assert_eq!(spool.read_frame(id, 4).unwrap(), opus_frame(4).to_vec());
}

#[test]
fn a_stopped_relay_no_longer_touches_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(config(dir.path()), tx).unwrap();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    link.event(connected());
    link.event(notification(0, true, false));
    link.event(notification(1, false, false));
    control_tx.send(Control::Shutdown).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(relay.run(None, control_rx)).unwrap();
    assert!(link.is_stopped());
    // The spool may belong to another relay now: late notifications are ignored.
    link.event(notification(2, false, false));
    link.event(notification(3, true, false));
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let all: Vec<_> = spool.pending().collect();
    assert_eq!(all.len(), 1, "no utterance was begun after the stop");
    assert!(all[0].ended, "shutdown ended the utterance in progress");
    assert_eq!(all[0].frame_count(), 2);
}

/// One relay per spool: a second is refused while the first holds it, and
/// takes it as soon as the first has stopped.
#[test]
fn a_second_relay_on_the_same_spool_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, _link) = lanyard_relay::open(config(dir.path()), tx.clone()).unwrap();
    match lanyard_relay::open(config(dir.path()), tx.clone()) {
        Err(e @ lanyard_relay::host::HostError::SpoolInUse(_)) => {
            assert!(e.to_string().contains("stop the old one"), "{e}");
        }
        Err(e) => panic!("refused for the wrong reason: {e}"),
        Ok(_) => panic!("two relays on one spool"),
    }
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    control_tx.send(Control::Shutdown).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(relay.run(None, control_rx)).unwrap();
    // The first relay's `PendantPort` may live on; the spool is free all the same.
    lanyard_relay::open(config(dir.path()), tx).expect("the spool is free once the first relay stopped");
}

/// A relay restarted in the same OS boot carries on the utterance it was
/// killed in; after an OS restart (another boot id in the spool directory)
/// it ends that utterance where the spool's copy ends and starts a new one,
/// because the crash may have taken frames the server already holds.
#[test]
fn an_unfinished_utterance_is_carried_on_after_a_kill_but_not_after_an_os_restart() {
    for os_restarted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        // Killed mid-utterance.
        spool_then_kill(dir.path(), 0..5);
        if os_restarted {
            std::fs::write(dir.path().join("boot-id"), "a boot before this one").unwrap();
        }
        // Relaunched, the pendant goes on with the sentence.
        spool_then_kill(dir.path(), 5..8);
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let all: Vec<(u32, bool)> = spool.pending().map(|u| (u.frame_count(), u.ended)).collect();
        if os_restarted {
            assert_eq!(all, vec![(5, true), (3, false)], "ended at the spool's copy; the rest is a new utterance");
        } else {
            assert_eq!(all, vec![(8, false)], "the restarted relay carries the utterance on");
        }
    }
}

/// A handed-off upload carries its expiry (the utterance's start plus the
/// time-to-live). A relay that starts after it announces the upload again
/// (the server decides: it may have arrived in time), and when the app
/// reports it failed (the server's 410 `expired`), discards the utterance
/// by the planner's rule, explicitly and with its reason, rather than
/// streaming it again.
#[test]
fn a_handed_off_utterance_past_its_time_to_live_is_discarded_when_its_upload_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ttl_ms = 3_000;
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let cfg = || {
        let mut c = config(dir.path());
        c.planner.ttl_ms = ttl_ms;
        c
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let wait_for = |rx: &mut mpsc::UnboundedReceiver<Stamped>, what: &str, f: &dyn Fn(&RelayEvent) -> bool| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let ev = rx.recv().await.expect("the relay's events end only when it stops");
                    if f(&ev.event) {
                        return ev.event;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        })
    };

    // Shuts a relay down and waits until it has stopped.
    let stop = |control: mpsc::UnboundedSender<Control>,
                link: lanyard_relay::PendantPort,
                run: tokio::task::JoinHandle<Result<(), lanyard_relay::host::HostError>>| {
        control.send(Control::Shutdown).unwrap();
        drop(link);
        let stopped = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), run).await });
        stopped.expect("the relay stops on Shutdown").unwrap().unwrap();
    };

    // An utterance spooled with no server, then handed off as the app is
    // about to be suspended.
    let (tx, mut rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(cfg(), tx).unwrap();
    let before_start = now();
    link.event(connected());
    for seq in 0..10u16 {
        link.event(notification(seq, seq == 0, seq == 9));
    }
    let (control, control_rx) = mpsc::unbounded_channel();
    let run = rt.spawn(relay.run(None, control_rx));
    wait_for(&mut rx, "utterance_ended", &|e| matches!(e, RelayEvent::UtteranceEnded { .. }));
    control.send(Control::Lifecycle(Lifecycle::Background { remaining_ms: 5_000 })).unwrap();
    control.send(Control::Lifecycle(Lifecycle::WillSuspend)).unwrap();
    let task = wait_for(&mut rx, "upload_task", &|e| matches!(e, RelayEvent::UploadTask { .. }));
    let RelayEvent::UploadTask { id, url, .. } = task else { unreachable!() };
    let expires: u64 = url.split("expires_ms=").nth(1).and_then(|v| v.split('&').next()).unwrap().parse().unwrap();
    assert!(
        expires >= before_start + ttl_ms && expires <= now() + ttl_ms,
        "expires_ms {expires} is the start plus the TTL ({ttl_ms} ms)"
    );
    // The app is suspended (the relay stops) before the upload runs.
    stop(control, link, run);

    // Relaunched after the time-to-live: announced again, with the same
    // expiry; the server refuses it, and the app says so.
    std::thread::sleep(Duration::from_millis((expires + 200).saturating_sub(now())));
    let (tx, mut rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(cfg(), tx).unwrap();
    let (control, control_rx) = mpsc::unbounded_channel();
    let run = rt.spawn(relay.run(None, control_rx));
    let again = wait_for(&mut rx, "upload_task again", &|e| matches!(e, RelayEvent::UploadTask { .. }));
    let RelayEvent::UploadTask { id: same, url: same_url, .. } = again else { unreachable!() };
    assert_eq!((same, same_url), (id, url));
    control.send(Control::UploadFinished { id, ok: false }).unwrap();
    let ev = wait_for(&mut rx, "discarded or utterance_started", &|e| {
        matches!(e, RelayEvent::Discarded { .. } | RelayEvent::UtteranceStarted { .. })
    });
    match ev {
        RelayEvent::Discarded { id: gone, reason } => {
            assert_eq!(gone, id);
            assert!(reason.contains("past the TTL") && reason.contains("upload failed"), "{reason}");
        }
        other => panic!("an expired utterance went on: {other:?}"),
    }
    stop(control, link, run);
    let (spool, _) = Spool::open(dir.path()).unwrap();
    assert!(spool.pending().all(|u| u.id != id || u.dropped.is_some()), "dropped in the spool");
}

/// An utterance no start marker opened (an Omi pendant's) is spooled as
/// unmarked and stays so across a kill: the relaunched relay hands it off
/// with `unmarked=1` on its upload, as its stream's `open` would say, so
/// the server stores it without a reply if it holds no speech. A marked
/// one's upload says nothing of it.
#[test]
fn an_unmarked_utterance_is_still_unmarked_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Killed after spooling a marked utterance of 3 frames and an unmarked
    // one of 4 (no start marker; the pendant's END closes it).
    let (tx, _rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(config(dir.path()), tx).unwrap();
    link.event(connected());
    for seq in 0..7u16 {
        link.event(notification(seq, seq == 0, seq == 2 || seq == 6));
    }
    drop((relay, link));
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let mut spooled: Vec<(u32, bool, bool)> = spool.pending().map(|u| (u.frame_count(), u.ended, u.unmarked)).collect();
    spooled.sort();
    assert_eq!(spooled, vec![(3, true, false), (4, true, true)]);
    let unmarked_id = spool.pending().find(|u| u.unmarked).unwrap().id;
    drop(spool);

    // Relaunched with no server, and suspended before it could stream:
    // both are handed off.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Stamped>();
    let (relay, link) = lanyard_relay::open(config(dir.path()), tx).unwrap();
    let (control, control_rx) = mpsc::unbounded_channel();
    let run = rt.spawn(relay.run(None, control_rx));
    control.send(Control::Lifecycle(Lifecycle::Background { remaining_ms: 5_000 })).unwrap();
    control.send(Control::Lifecycle(Lifecycle::WillSuspend)).unwrap();
    let mut urls = std::collections::HashMap::new();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while urls.len() < 2 {
                if let RelayEvent::UploadTask { id, url, .. } = rx.recv().await.expect("the relay runs").event {
                    urls.insert(id, url);
                }
            }
        })
        .await
        .expect("both utterances handed off within 10 s")
    });
    for (id, url) in &urls {
        if *id == unmarked_id {
            assert!(url.ends_with("&unmarked=1"), "{url}");
        } else {
            assert!(!url.contains("unmarked"), "{url}");
        }
    }
    control.send(Control::Shutdown).unwrap();
    drop(link);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), run).await }).unwrap().unwrap().unwrap();
}
