//! `lanyard demo`, exactly as a new user runs it, must end by itself with
//! status 0, a word error rate of at most 25%, and one push request per
//! utterance; and it runs over TLS.

mod common;

use std::process::Command;

#[test]
fn demo_runs_end_to_end_within_the_wer_bar() {
    let model = common::model_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .args(["demo", "--max-wer", "0.25", "--timeout-secs", "240", "--model-dir", model.to_str().unwrap()])
        .output()
        .expect("run lanyard demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(stdout.contains("word error rate:"), "{stdout}");
    // Over TLS, as a deployment runs: a throwaway CA the relay trusts.
    assert!(stdout.contains("transport: https://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("push requests written to the file sink: 4"), "{stdout}");
    assert_eq!(stdout.matches("  transcript: ").count(), 4);
}
