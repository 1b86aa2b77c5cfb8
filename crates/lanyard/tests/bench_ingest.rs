//! `lanyard bench ingest` works end to end: it starts its own server, drives
//! a few streams, and reports acks and latencies. A functional check of the
//! benchmark, not the capacity figure (that needs a quiet machine and
//! `--streams 2000`; see the command's help).

mod common;

use std::process::Command;

#[test]
fn bench_ingest_small_run_reports_acks() {
    let model = common::model_dir();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ingest.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["bench", "ingest", "--streams", "20", "--secs", "3", "--warmup-secs", "1", "--ramp", "100"])
        .arg("--model-dir")
        .arg(&model)
        .arg("--data-parent")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run lanyard bench ingest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("ack latency"), "no table on stdout:\n{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["streams"]["connected"], 20, "{r:#}");
    assert_eq!(r["streams"]["dropped_during_run"], 0, "{r:#}");
    let acked = r["window"]["frames_acked"].as_u64().unwrap();
    // 20 streams x 50 frames/s x 3 s = 3000; allow for a slow test machine.
    assert!(acked > 1000, "only {acked} frames acked: {r:#}");
    let p99 = r["ack_latency_ms"]["p99"].as_f64().expect("every window frame acked");
    assert!(p99 > 0.0 && p99 < 1000.0, "p99 {p99} ms: {r:#}");
    assert!(r["server"]["vm_hwm_bytes"].as_u64().unwrap() > 0, "the started server's RSS is read: {r:#}");
    assert!(r["server"]["cpu_cores_used"].as_f64().is_some(), "{r:#}");
    // The started server was stopped and its data directory removed with it.
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "ingest.json")
            .count(),
        0
    );
}
