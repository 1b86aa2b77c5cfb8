//! The short fault campaign, as CI runs it: `lanyard sim scenarios/ci-short.toml`.
//!
//! At least 100 utterances from five simulated phones under the simulated
//! iOS lifecycle, with every fault kind applied for real (network cuts,
//! delays, black holes and switches through the fault proxies; server and
//! relay SIGKILLs; BLE loss and reordering; slow disks; a failing APNs).
//! Nothing may be lost or answered twice, no audio frame may reach the
//! server twice, and the campaign must finish within 10 minutes. At least
//! five of the utterances are long (over 30 s), and every one of them must
//! reach the server and be replied.
//!
//! The report and JSON are kept in the target directory
//! (`tmp/sim-ci-short.html`, `.json`) for a look after a failure.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Utterances over 30 s the campaign must speak (one per pendant).
const LONG_UTTERANCES: usize = 5;

/// Every fault kind the campaign must have applied at least once.
use lanyard_sim::ledger::FAULT_KINDS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_campaign_with_every_fault_loses_nothing_and_answers_once() {
    let model = common::model_dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let report = out.join("sim-ci-short.html");
    let json = out.join("sim-ci-short.json");
    let _ = std::fs::remove_file(&json);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("sim")
        .arg(root.join("scenarios/ci-short.toml"))
        .arg("--report")
        .arg(&report)
        .arg("--json")
        .arg(&json)
        .arg("--model-dir")
        .arg(&model)
        .kill_on_drop(true)
        .spawn()
        .expect("start lanyard sim");
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait())
        .await
        .expect("the short campaign must finish within 10 minutes")
        .expect("wait for lanyard sim");
    let wall = started.elapsed();
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("lanyard sim writes its JSON"))
        .expect("the JSON parses");
    let totals = &results["accounting"]["totals"];
    eprintln!("short campaign: {totals}\nfaults: {}\nwall {wall:?}", results["fault_counts"]);
    assert!(totals["spoken"].as_u64().unwrap() >= 100, "at least 100 utterances spoken");
    assert!(totals["relay_utterances"].as_u64().unwrap() >= 100, "at least 100 utterances accounted for");
    assert_eq!(totals["lost"], 0, "nothing lost; see {}", report.display());
    assert_eq!(totals["duplicated"], 0, "nothing answered twice; see {}", report.display());
    assert_eq!(totals["duplicate_frames"], 0, "no audio frame received twice; see {}", report.display());
    assert_eq!(
        totals["acked_audio_lost"],
        0,
        "the server never held less than it acknowledged; see {}",
        report.display()
    );
    assert_eq!(totals["timed_out"], false, "every utterance resolved in time");
    long_utterances_are_replied(&results, &report);
    let counts: Vec<(String, u64)> = serde_json::from_value(results["fault_counts"].clone()).unwrap();
    for kind in FAULT_KINDS {
        let n = counts.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
        assert!(n > 0, "fault kind {kind} was never applied; raise its rate in scenarios/ci-short.toml");
    }
    assert!(status.success(), "lanyard sim exited with {status}");
    assert!(wall < Duration::from_secs(600), "the short campaign took {wall:?}");
}

/// At least [`LONG_UTTERANCES`] spoken utterances over 30 s, each heard by a
/// relay and every relay utterance it became replied; and the report's
/// by-length table counts them alike.
fn long_utterances_are_replied(results: &Value, report: &std::path::Path) {
    let accounting = &results["accounting"];
    let outcome = |id: &Value| {
        accounting["utterances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == *id)
            .map_or("missing", |u| u["outcome"].as_str().unwrap())
    };
    let long: Vec<&Value> =
        accounting["spoken"].as_array().unwrap().iter().filter(|s| s["length_ms"].as_u64().unwrap() > 30_000).collect();
    assert!(long.len() >= LONG_UTTERANCES, "at least {LONG_UTTERANCES} utterances over 30 s, not {}", long.len());
    for s in &long {
        let ids = s["relay_utterances"].as_array().unwrap();
        assert!(
            !ids.is_empty() && ids.iter().all(|id| outcome(id) == "replied"),
            "the {} ms utterance {}#{} was not replied in full: relay utterances {ids:?} ended {:?}; see {}",
            s["length_ms"],
            s["pendant"],
            s["index"],
            ids.iter().map(outcome).collect::<Vec<_>>(),
            report.display()
        );
    }
    let bucket = accounting["by_length"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["key"] == "over_30s")
        .expect("the by-length table has an over-30 s row");
    assert_eq!(bucket["spoken"], long.len(), "the by-length table counts the long utterances");
    assert_eq!(bucket["replied"], long.len(), "and finds every one replied");
}
