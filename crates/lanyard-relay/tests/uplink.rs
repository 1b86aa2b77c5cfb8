//! The uplink state machine against a model server, on a simulated clock,
//! with the connection cut at random points.

use std::collections::{HashMap, VecDeque};

use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{Ack, ClientMsg, ServerMsg};
use lanyard_relay::uplink::{Action, Input, Uplink, UplinkConfig};
use proptest::prelude::*;
use uuid::Uuid;

/// A server that holds frames durably and acks at once.
#[derive(Default)]
struct ModelServer {
    held: HashMap<Uuid, u32>,
    complete: HashMap<Uuid, u32>,
    handles: HashMap<u32, Uuid>,
    /// Frames received that the server already held, after it told the
    /// client where to resume: re-sent acknowledged audio.
    resent_after_resume: u32,
}

impl ModelServer {
    fn on(&mut self, a: &Action, replies: &mut VecDeque<Input>) {
        match a {
            Action::SendText(ClientMsg::Open { utterance, handle, .. }) => {
                self.handles.insert(*handle, *utterance);
                let held = *self.held.get(utterance).unwrap_or(&0);
                let complete = self.complete.contains_key(utterance);
                replies.push_back(Input::Server(ServerMsg::Opened {
                    utterance: *utterance,
                    handle: *handle,
                    next_seq: held,
                    complete,
                }));
            }
            Action::SendAudio { handle, seq, .. } => {
                let id = self.handles[handle];
                let held = self.held.entry(id).or_default();
                assert!(*seq <= *held, "a gap: frame {seq} while holding {held}");
                if *seq < *held {
                    self.resent_after_resume += 1;
                } else {
                    *held += 1;
                }
                replies.push_back(Input::Ack(Ack { handle: *handle, next: *held }));
            }
            Action::SendText(ClientMsg::End { utterance, frames, .. }) => {
                assert_eq!(self.held[utterance], *frames, "end before all frames are held");
                self.complete.insert(*utterance, *frames);
                replies.push_back(Input::Server(ServerMsg::Complete { utterance: *utterance, frames: *frames }));
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_utterance_completes_once_without_resending_acknowledged_audio(
        sizes in proptest::collection::vec(1u32..400, 1..6),
        cuts in proptest::collection::vec(0usize..2000, 0..8),
        seed in any::<u64>(),
    ) {
        let mut up = Uplink::new(UplinkConfig { window: 50, ..UplinkConfig::default() }, seed);
        let mut server = ModelServer::default();
        let ids: Vec<Uuid> = sizes.iter().map(|_| Uuid::now_v7()).collect();
        let mut now = 0u64;
        let mut out = Vec::new();
        for (id, &n) in ids.iter().zip(&sizes) {
            up.handle(now, Input::Ended { id: *id, codec: Codec::Opus16k20ms, frames: n, speech_frames: None, unmarked: false }, &mut out);
        }
        let mut inbox: VecDeque<Input> = VecDeque::new();
        let mut done = Vec::new();
        let mut connected = false;
        let mut steps = 0usize;
        while done.len() < ids.len() {
            steps += 1;
            prop_assert!(steps < 200_000, "no progress");
            for a in out.drain(..) {
                match &a {
                    Action::Connect => inbox.push_back(Input::Connected),
                    Action::Done(id) => done.push(*id),
                    _ if connected => server.on(&a, &mut inbox),
                    _ => {}
                }
            }
            if cuts.contains(&steps) && connected {
                // The connection drops: everything in flight is lost.
                inbox.clear();
                connected = false;
                up.handle(now, Input::Disconnected { reason: "cut".into() }, &mut out);
                continue;
            }
            match inbox.pop_front() {
                Some(input) => {
                    if input == Input::Connected { connected = true; }
                    up.handle(now, input, &mut out);
                }
                None => {
                    now += 50;
                    up.handle(now, Input::Tick, &mut out);
                }
            }
        }
        done.sort();
        let mut want = ids.clone();
        want.sort();
        prop_assert_eq!(done, want, "each utterance is done exactly once");
        for (id, &n) in ids.iter().zip(&sizes) {
            prop_assert_eq!(server.held[id], n);
        }
        prop_assert_eq!(server.resent_after_resume, 0);
    }
}

#[test]
fn backoff_grows_with_jitter_and_resets_on_connect() {
    let cfg = UplinkConfig { backoff_base_ms: 100, backoff_max_ms: 1600, ..UplinkConfig::default() };
    let mut up = Uplink::new(cfg, 42);
    let mut out = Vec::new();
    up.handle(
        0,
        Input::Ended { id: Uuid::now_v7(), codec: Codec::Opus16k20ms, frames: 1, speech_frames: None, unmarked: false },
        &mut out,
    );
    assert_eq!(out, vec![Action::Connect]);
    let mut delays = Vec::new();
    let mut now = 0;
    for _ in 0..7 {
        out.clear();
        up.handle(now, Input::Disconnected { reason: "x".into() }, &mut out);
        let retry = up.next_deadline().unwrap();
        delays.push(retry - now);
        now = retry;
        out.clear();
        up.handle(now, Input::Tick, &mut out);
        assert_eq!(out, vec![Action::Connect], "reconnects exactly at the deadline");
    }
    for (i, d) in delays.iter().enumerate() {
        let cap = (100u64 << i).min(1600);
        assert!((cap / 2..=cap).contains(d), "attempt {i}: delay {d} outside [{}, {cap}]", cap / 2);
    }
    out.clear();
    up.handle(now, Input::Connected, &mut out);
    up.handle(now, Input::Disconnected { reason: "x".into() }, &mut out);
    assert!(up.next_deadline().unwrap() - now <= 100, "a successful connect resets the backoff");
}

#[test]
fn in_flight_frames_are_bounded_by_the_window() {
    let mut up = Uplink::new(UplinkConfig { window: 10, ..UplinkConfig::default() }, 1);
    let id = Uuid::now_v7();
    let mut out = Vec::new();
    up.handle(0, Input::Spooled { id, codec: Codec::Opus16k20ms, frames: 100, unmarked: false }, &mut out);
    up.handle(0, Input::Connected, &mut out);
    out.clear();
    let handle = 1;
    up.handle(0, Input::Server(ServerMsg::Opened { utterance: id, handle, next_seq: 0, complete: false }), &mut out);
    let sent = out.iter().filter(|a| matches!(a, Action::SendAudio { .. })).count();
    assert_eq!(sent, 10);
    out.clear();
    up.handle(0, Input::Ack(Ack { handle, next: 4 }), &mut out);
    assert_eq!(out.iter().filter(|a| matches!(a, Action::SendAudio { .. })).count(), 4);
}

#[test]
fn a_paced_backlog_asks_for_a_tick_and_drains_at_the_configured_rate() {
    let cfg = UplinkConfig { window: 10_000, max_frames_per_sec: 100, ..UplinkConfig::default() };
    let mut up = Uplink::new(cfg, 1);
    let id = Uuid::now_v7();
    let mut out = Vec::new();
    up.handle(
        0,
        Input::Ended { id, codec: Codec::Opus16k20ms, frames: 1000, speech_frames: None, unmarked: false },
        &mut out,
    );
    up.handle(0, Input::Connected, &mut out);
    up.handle(0, Input::Server(ServerMsg::Opened { utterance: id, handle: 1, next_seq: 0, complete: false }), &mut out);
    let sent = |out: &Vec<Action>| out.iter().filter(|a| matches!(a, Action::SendAudio { .. })).count();
    // The budget holds one second of frames.
    assert_eq!(sent(&out), 100);
    // Out of budget with frames waiting: without a deadline the shell would
    // sleep until the next input, and a backlog would stall between acks.
    let mut now = 0;
    let mut total = sent(&out);
    while total < 1000 {
        let at = up.next_deadline().expect("a paced uplink asks to be woken");
        assert!(at > now && at - now <= 50, "woken {} ms later", at - now);
        now = at;
        out.clear();
        up.handle(now, Input::Tick, &mut out);
        total += sent(&out);
        assert!(total <= 100 + (now as usize) / 10 + 1, "{total} frames by {now} ms exceeds 100/s");
    }
    // 900 frames after the first second's budget take 9 s at 100/s.
    assert!((8_900..=9_100).contains(&now), "drained at {now} ms");
}

/// The handle of the first `open` among `out`, if any.
fn open_handle(out: &[Action]) -> Option<u32> {
    out.iter().find_map(|a| match a {
        Action::SendText(ClientMsg::Open { handle, .. }) => Some(*handle),
        _ => None,
    })
}

/// Whether `out` reports an error with `code` for utterance `id`.
fn reported(out: &[Action], id: Uuid, code: &str) -> bool {
    use lanyard_relay::uplink::RelayEvent;
    out.iter()
        .any(|a| matches!(a, Action::Emit(RelayEvent::Error { id: Some(i), code: c, .. }) if *i == id && c == code))
}

#[test]
fn a_server_holding_less_than_it_acknowledged_is_reported_and_resent() {
    use lanyard_relay::uplink::SERVER_LOST_ACKED_AUDIO;
    let mut up = Uplink::new(UplinkConfig::default(), 1);
    let id = Uuid::now_v7();
    let mut out = Vec::new();
    up.handle(0, Input::Spooled { id, codec: Codec::Opus16k20ms, frames: 20, unmarked: false }, &mut out);
    up.handle(0, Input::Connected, &mut out);
    up.handle(0, Input::Server(ServerMsg::Opened { utterance: id, handle: 1, next_seq: 0, complete: false }), &mut out);
    up.handle(0, Input::Ack(Ack { handle: 1, next: 20 }), &mut out);
    assert_eq!(up.acked(id), Some(20));
    up.handle(1, Input::Disconnected { reason: "cut".into() }, &mut out);
    out.clear();
    up.handle(10_000, Input::Tick, &mut out);
    up.handle(10_000, Input::Connected, &mut out);
    let handle = open_handle(&out).expect("re-opened");
    out.clear();
    // The server restarted having lost frames 12..20 it had acknowledged.
    up.handle(
        10_000,
        Input::Server(ServerMsg::Opened { utterance: id, handle, next_seq: 12, complete: false }),
        &mut out,
    );
    assert!(reported(&out, id, SERVER_LOST_ACKED_AUDIO), "the broken promise is reported: {out:?}");
    let resent: Vec<u32> = out
        .iter()
        .filter_map(|a| match a {
            Action::SendAudio { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(resent, (12..20).collect::<Vec<_>>(), "what the server lacks is sent again from the spool");
}

/// After an OS crash the spool may hold fewer frames of an ended utterance
/// than the server acknowledged (the crash took them before the spool's
/// fsync). The server's copy is then the utterance: nothing is sent again
/// or numbered anew, `end` carries the server's count, and it is reported.
#[test]
fn a_spool_holding_less_than_the_server_acknowledged_ends_with_the_servers_copy() {
    use lanyard_relay::uplink::SPOOL_LOST_ACKED_AUDIO;
    let mut up = Uplink::new(UplinkConfig::default(), 1);
    let id = Uuid::now_v7();
    let mut out = Vec::new();
    // Recovered after the reboot: 12 frames, ended there by the host.
    up.handle(
        0,
        Input::Ended { id, codec: Codec::Opus16k20ms, frames: 12, speech_frames: None, unmarked: false },
        &mut out,
    );
    up.handle(0, Input::Connected, &mut out);
    let handle = open_handle(&out).expect("opened");
    out.clear();
    up.handle(0, Input::Server(ServerMsg::Opened { utterance: id, handle, next_seq: 20, complete: false }), &mut out);
    assert!(reported(&out, id, SPOOL_LOST_ACKED_AUDIO), "the lost tail is reported: {out:?}");
    assert!(
        !out.iter().any(|a| matches!(a, Action::SendAudio { .. })),
        "nothing is sent: the server holds more: {out:?}"
    );
    let ends: Vec<u32> = out
        .iter()
        .filter_map(|a| match a {
            Action::SendText(ClientMsg::End { utterance, frames, .. }) if *utterance == id => Some(*frames),
            _ => None,
        })
        .collect();
    assert_eq!(ends, vec![20], "`end` carries what the server holds, so the server completes it");
    out.clear();
    up.handle(1, Input::Server(ServerMsg::Complete { utterance: id, frames: 20 }), &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::Done(i) if *i == id)), "and the spool lets it go: {out:?}");
}

/// A spool written before the tracker split utterances at the server's
/// limit may hold a longer one, ended or not. Only the frames the server
/// takes are sent, `end` stops at the limit, and the rest is counted in an
/// error event (once while the uplink holds the utterance), instead of the
/// stream being closed with 4002 on every reconnect.
#[test]
fn an_utterance_past_the_servers_limit_is_sent_up_to_it_and_the_rest_reported() {
    use lanyard_proto::wire::limits::MAX_UTTERANCE_FRAMES as MAX;
    use lanyard_relay::uplink::UTTERANCE_TOO_LONG;
    let config = UplinkConfig { max_frames_per_sec: u32::MAX, ..UplinkConfig::default() };
    let mut server = ModelServer::default();
    let id = Uuid::now_v7();
    let opus = Codec::Opus16k20ms;
    /// Runs `up` against `server` until `done` holds, checking that no frame
    /// past the limit goes out.
    fn drive(up: &mut Uplink, server: &mut ModelServer, done: impl Fn(&ModelServer) -> bool) {
        let mut inbox: VecDeque<Input> = VecDeque::from([Input::Connected]);
        let mut out = Vec::new();
        let mut now = 0;
        while !done(server) {
            now += 1;
            assert!(now < 100_000, "no progress");
            let input = inbox.pop_front().unwrap_or(Input::Tick);
            up.handle(now, input, &mut out);
            for a in out.drain(..) {
                if let Action::SendAudio { seq, .. } = a {
                    assert!(seq < MAX, "frame {seq} is past the server's limit");
                }
                server.on(&a, &mut inbox);
            }
        }
    }
    // Still open (the app was killed mid-utterance): streamed up to the limit.
    let mut up = Uplink::new(config.clone(), 1);
    let mut out = Vec::new();
    up.handle(0, Input::Spooled { id, codec: opus, frames: MAX + 5, unmarked: false }, &mut out);
    drive(&mut up, &mut server, |s| s.held.get(&id) == Some(&MAX));
    // Then ended, past the limit: reported, once while the uplink holds it.
    up.handle(0, Input::Ended { id, codec: opus, frames: MAX + 5, speech_frames: None, unmarked: false }, &mut out);
    assert!(reported(&out, id, UTTERANCE_TOO_LONG), "the frames past the limit are reported: {out:?}");
    out.clear();
    up.handle(0, Input::Ended { id, codec: opus, frames: MAX + 5, speech_frames: None, unmarked: false }, &mut out);
    assert!(!reported(&out, id, UTTERANCE_TOO_LONG), "{out:?}");
    // A restart before the `end` went out: the server resumes at the limit,
    // nothing is sent, and `end` completes it there.
    let mut up = Uplink::new(config, 2);
    up.handle(0, Input::Ended { id, codec: opus, frames: MAX + 5, speech_frames: None, unmarked: false }, &mut out);
    drive(&mut up, &mut server, |s| s.complete.contains_key(&id));
    assert_eq!(server.complete[&id], MAX);
}

#[test]
fn an_endpoint_goes_to_the_shell_with_the_servers_frame_count() {
    // The shell carries the frames past `frames` into the next utterance
    // (see `boundary::Tracker::on_endpoint`), so the count must reach it.
    let mut up = Uplink::new(UplinkConfig::default(), 1);
    let id = Uuid::now_v7();
    let mut out = Vec::new();
    up.handle(0, Input::Server(ServerMsg::Endpoint { utterance: id, frames: 88 }), &mut out);
    assert_eq!(out, vec![Action::Endpoint { id, frames: 88 }]);
}

#[test]
fn an_utterance_deleted_on_the_server_is_dropped_not_resent() {
    // The server answers `open` with `gone`: the user deleted it there, and
    // deletion is final (docs/protocol.md, DELETE /v1/utterances/{id}).
    let mut up = Uplink::new(UplinkConfig::default(), 1);
    let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
    let mut out = Vec::new();
    for id in [gone, kept] {
        up.handle(
            0,
            Input::Ended { id, codec: Codec::Opus16k20ms, frames: 3, speech_frames: None, unmarked: false },
            &mut out,
        );
    }
    up.handle(0, Input::Connected, &mut out);
    out.clear();
    let error = ServerMsg::Error { utterance: Some(gone), code: "gone".into(), message: "deleted".into() };
    up.handle(0, Input::Server(error), &mut out);
    assert_eq!(out, vec![Action::Drop { id: gone, reason: lanyard_relay::uplink::DELETED_ON_SERVER.into() }]);
    // A reconnect opens only the other one again.
    up.handle(1, Input::Disconnected { reason: "cut".into() }, &mut out);
    out.clear();
    let t = up.next_deadline().unwrap();
    up.handle(t, Input::Tick, &mut out);
    up.handle(t, Input::Connected, &mut out);
    let opened: Vec<Uuid> = out
        .iter()
        .filter_map(
            |a| if let Action::SendText(ClientMsg::Open { utterance, .. }) = a { Some(*utterance) } else { None },
        )
        .collect();
    assert_eq!(opened, vec![kept]);
}

/// An utterance cut at the server's endpoint says so in its `end`, and a
/// cut past what the server ends up holding says nothing.
#[test]
fn end_names_the_speech_of_an_utterance_cut_at_an_endpoint() {
    let ends = |spooled: u32, speech: Option<u32>, server_holds: Option<u32>| {
        let mut up = Uplink::new(UplinkConfig::default(), 1);
        let id = Uuid::now_v7();
        let mut out = Vec::new();
        up.handle(
            0,
            Input::Ended { id, codec: Codec::Opus16k20ms, frames: spooled, speech_frames: speech, unmarked: false },
            &mut out,
        );
        up.handle(0, Input::Connected, &mut out);
        let handle = open_handle(&out).expect("opened");
        let next_seq = server_holds.unwrap_or(0);
        up.handle(0, Input::Server(ServerMsg::Opened { utterance: id, handle, next_seq, complete: false }), &mut out);
        for t in 1..100 {
            up.handle(t * 20, Input::Tick, &mut out);
        }
        out.iter()
            .filter_map(|a| match a {
                Action::SendText(ClientMsg::End { utterance, frames, speech_frames }) if *utterance == id => {
                    Some((*frames, *speech_frames))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ends(6, Some(4), None), vec![(6, Some(4))]);
    assert_eq!(ends(6, None, None), vec![(6, None)]);
    // Not a cut at all: the speech is every frame.
    assert_eq!(ends(6, Some(6), None), vec![(6, None)]);
    // A resume that finds every frame held still ends with the cut.
    assert_eq!(ends(6, Some(4), Some(6)), vec![(6, Some(4))]);
    // The server holds more than the spool (an OS crash shortened it after
    // the server's acks): `end` says the server's count, and a cut the
    // spool kept stands only inside it.
    assert_eq!(ends(5, Some(4), Some(8)), vec![(8, Some(4))]);
}

/// Every `open` of an utterance no start marker opened says so, on each
/// reconnect too; a marked one's `open` says nothing of it.
#[test]
fn each_open_says_whether_the_utterance_is_unmarked() {
    let mut up = Uplink::new(UplinkConfig::default(), 1);
    let (marked, unmarked) = (Uuid::now_v7(), Uuid::now_v7());
    let mut out = Vec::new();
    up.handle(0, Input::Spooled { id: marked, codec: Codec::Opus16k20ms, frames: 3, unmarked: false }, &mut out);
    let ended =
        Input::Ended { id: unmarked, codec: Codec::Opus16k20ms, frames: 3, speech_frames: None, unmarked: true };
    up.handle(0, ended, &mut out);
    for reconnect in [false, true] {
        if reconnect {
            up.handle(0, Input::Disconnected { reason: "cut".into() }, &mut out);
            up.handle(100_000, Input::Tick, &mut out);
        }
        out.clear();
        up.handle(100_000, Input::Connected, &mut out);
        let opens: HashMap<Uuid, bool> = out
            .iter()
            .filter_map(|a| match a {
                Action::SendText(ClientMsg::Open { utterance, unmarked, .. }) => Some((*utterance, *unmarked)),
                _ => None,
            })
            .collect();
        assert_eq!(opens, HashMap::from([(marked, false), (unmarked, true)]), "reconnect: {reconnect}");
    }
}
