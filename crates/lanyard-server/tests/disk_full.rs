//! A full disk never gets audio acknowledged (issue "Hostile clients": "disk
//! full never acked").
//!
//! The server's data directory is a real 2 MiB tmpfs, filled up by the test,
//! so its writes fail with the kernel's own `ENOSPC` (torn mid-frame, as on a
//! real disk). The mount lives in a private user and mount namespace that
//! `unshare -rm` (util-linux, on every Debian) makes for a child run of this
//! test binary: no privilege is needed, and nothing outside the test sees it.
//! Where the machine refuses user namespaces (some container sandboxes), the
//! test says so on stderr and is skipped rather than failed.
//!
//! What must hold:
//! - every frame acknowledged is on disk, byte for byte, however the writes
//!   failed (the client keeps, and re-sends, everything past the last ack);
//! - the server refuses clearly (the stream is closed with 1001 "cannot
//!   store audio", never a silent stall) and stays up for other requests;
//! - once space is back, the stream resumes exactly at the last ack and the
//!   utterance completes whole.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lanyard_proto::Uuid;
use lanyard_proto::ble::Codec;
use lanyard_proto::wire::{ClientMsg, ServerMsg, close};

/// Set in the child run: the tmpfs mount point to use as the data directory.
const MOUNT_ENV: &str = "LANYARD_TEST_FULL_DISK";

/// Space left free on the tmpfs when the stream starts: a few hundred
/// Opus frames' worth, so that the disk fills mid-utterance.
const HEADROOM: u64 = 24 * 1024;

#[test]
fn a_full_disk_never_gets_audio_acknowledged() {
    if let Some(mount) = std::env::var_os(MOUNT_ENV) {
        let passed = std::panic::catch_unwind(|| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(on_a_full_disk(PathBuf::from(mount)));
        })
        .is_ok();
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // Straight out, past the exit handlers: in this namespace OpenBLAS's
        // (which CTranslate2 loaded) wait for its threads at exit forever.
        // SAFETY: `_exit` ends the process; nothing runs after it.
        unsafe { libc::_exit(if passed { 0 } else { 101 }) }
    }
    // The parent: run this very test again inside a user and mount
    // namespace, with a small tmpfs as its data directory.
    let mount = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // `timeout`: a child that hangs (or hangs at exit) must not hang CI.
    let out = Command::new("timeout")
        .args(["-k", "5", "240", "unshare", "--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=2m lanyard-full "$0" && exec "$1" --exact a_full_disk_never_gets_audio_acknowledged --nocapture"#)
        .arg(mount.path())
        .arg(&exe)
        .env(MOUNT_ENV, mount.path())
        .output()
        .expect("run timeout (coreutils) and unshare (util-linux)");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if log.contains("unshare failed") {
        // A sandbox that forbids user namespaces (a container's seccomp
        // profile, or kernel.unprivileged_userns_clone=0): this machine
        // cannot make the private tmpfs, so it cannot run the test. Said
        // loudly, not silently passed.
        eprintln!(
            "SKIPPED: a_full_disk_never_gets_audio_acknowledged needs user namespaces, which this machine refuses:\n{log}"
        );
        return;
    }
    assert!(
        out.status.success(),
        "the full-disk run failed ({}). If unshare itself was refused, this kernel forbids \
         unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 allows them):\n{log}",
        out.status
    );
    assert!(log.contains("full disk: "), "the child run did not report its figures:\n{log}");
    println!("{}", log.lines().filter(|l| l.starts_with("full disk: ")).collect::<Vec<_>>().join("\n"));
}

async fn on_a_full_disk(mount: PathBuf) {
    assert_eq!(statfs_total(&mount) / (1024 * 1024), 2, "the data directory is the 2 MiB tmpfs");
    let h = harness_with(|cfg| cfg.data_dir = mount.clone()).await;
    let device = h.store.device_by_token_hash(&lanyard_server::auth::hash_token(&h.token_a)).await.unwrap().unwrap().id;
    let frames = speech_frames(
        "This sentence is long enough to fill what little room is left on the disk, and then some more, \
         so that the server runs out of space in the middle of it, and must not say that it kept audio it did not.",
    );
    let frames: Vec<Vec<u8>> = frames.iter().cycle().take(3_000).cloned().collect();
    let id = Uuid::now_v7();

    // Send everything; collect the acks until the server gives up.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    assert_eq!(expect_opened(&mut ws).await, (0, false));
    for (seq, f) in frames[..50].iter().enumerate() {
        send_audio(&mut ws, 1, seq as u32, f).await;
    }
    expect_ack(&mut ws, 50).await;
    // The disk fills up, but for a little headroom, mid-utterance.
    let filler = mount.join("filler");
    let free = statfs_free(&mount);
    std::fs::write(&filler, vec![0u8; free.saturating_sub(HEADROOM) as usize]).unwrap();
    let mut acked = 50;
    let mut closed = None;
    'send: for chunk in frames.chunks(50).enumerate().skip(1) {
        let (i, chunk) = chunk;
        for (j, f) in chunk.iter().enumerate() {
            send_audio(&mut ws, 1, (i * 50 + j) as u32, f).await;
        }
        loop {
            match recv(&mut ws).await {
                In::Ack(a) => {
                    assert!(
                        a.next >= acked && a.next as usize <= (i + 1) * 50,
                        "acks only grow, never past what was sent"
                    );
                    acked = a.next;
                    if acked as usize == (i + 1) * 50 {
                        break;
                    }
                }
                In::Close(code, reason) => {
                    closed = Some((code, reason));
                    break 'send;
                }
                In::Text(t) => panic!("unexpected {t:?}"),
            }
        }
    }
    let (code, reason) = closed.expect("the disk filled up: the server must refuse, not ack everything");
    assert_eq!(code, close::GOING_AWAY, "{reason}");
    assert!(reason.contains("cannot store audio"), "{reason}");
    assert!(acked > 0 && (acked as usize) < frames.len(), "{acked} frames acked");

    // What was acknowledged is on disk, byte for byte.
    let on_disk = lanyard_server::AudioStore::new(mount.join("audio")).unwrap().read(device, id, acked).unwrap();
    assert_eq!(on_disk, frames[..acked as usize], "every acknowledged frame is durable");
    // The server is still up for everything else.
    let health = reqwest::get(format!("{}/healthz", h.url)).await.unwrap();
    assert!(health.status().is_success(), "{}", health.status());

    // A retry while the disk is still full: the server resumes at its last
    // ack, and whatever more it acks (a torn frame cut off may have freed a
    // few bytes) is on disk too.
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    match recv(&mut ws).await {
        In::Text(ServerMsg::Opened { next_seq, .. }) => {
            assert_eq!(next_seq, acked, "the server resumes at its last ack, no further");
            let sent = (frames.len() - acked as usize).min(400);
            for (k, f) in frames[acked as usize..][..sent].iter().enumerate() {
                send_audio(&mut ws, 1, acked + k as u32, f).await;
            }
            loop {
                match recv(&mut ws).await {
                    In::Ack(a) => {
                        assert!(a.next >= acked && a.next <= next_seq + sent as u32);
                        acked = a.next;
                        assert!((acked as usize) < frames.len(), "the disk cannot hold the whole utterance");
                    }
                    In::Close(code, reason) => {
                        assert_eq!(code, close::GOING_AWAY, "{reason}");
                        break;
                    }
                    In::Text(t) => panic!("unexpected {t:?}"),
                }
            }
        }
        // Opening writes too; refusing it is as good.
        In::Text(ServerMsg::Error { code, message, .. }) => {
            assert!(code == "storage" || code == "internal", "{code}: {message}")
        }
        In::Close(code, reason) => assert_eq!(code, close::GOING_AWAY, "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let on_disk = lanyard_server::AudioStore::new(mount.join("audio")).unwrap().read(device, id, acked).unwrap();
    assert_eq!(on_disk, frames[..acked as usize], "every acknowledged frame is durable");

    // Space again: the stream resumes exactly at the last ack, and completes.
    std::fs::remove_file(&filler).unwrap();
    let mut ws = h.ws(&h.token_a).await;
    send_text(&mut ws, &ClientMsg::Open { utterance: id, handle: 1, codec: Codec::Opus16k20ms, unmarked: false }).await;
    let (next, complete) = expect_opened(&mut ws).await;
    assert!(!complete);
    assert_eq!(next, acked, "resumed at the last acknowledged frame");
    for (k, f) in frames[next as usize..].iter().enumerate() {
        send_audio(&mut ws, 1, next + k as u32, f).await;
    }
    expect_ack(&mut ws, frames.len() as u32).await;
    send_text(&mut ws, &ClientMsg::End { utterance: id, frames: frames.len() as u32, speech_frames: None }).await;
    loop {
        match recv(&mut ws).await {
            In::Text(ServerMsg::Complete { frames: n, .. }) => {
                assert_eq!(n, frames.len() as u32);
                break;
            }
            In::Text(ServerMsg::Final { .. } | ServerMsg::Reply { .. }) | In::Ack(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let whole =
        lanyard_server::AudioStore::new(mount.join("audio")).unwrap().read(device, id, frames.len() as u32).unwrap();
    assert_eq!(whole, frames, "the utterance is whole, each frame once");
    println!(
        "full disk: {acked} of {} frames acked before the disk filled; all {} on disk after space came back",
        frames.len(),
        frames.len()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn statfs(path: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs {}", path.display());
    s
}

// The field types differ by platform (u32 on some 32-bit targets).
#[allow(clippy::unnecessary_cast)]
fn statfs_total(path: &Path) -> u64 {
    let s = statfs(path);
    s.f_blocks as u64 * s.f_frsize as u64
}

#[allow(clippy::unnecessary_cast)]
fn statfs_free(path: &Path) -> u64 {
    let s = statfs(path);
    s.f_bavail as u64 * s.f_frsize as u64
}
