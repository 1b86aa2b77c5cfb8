//! The API against its own contract: `schemathesis` (PyPI, installed by
//! scripts/setup) reads `/openapi.json` and sends generated requests, valid
//! and invalid, with a device token, through all its phases (examples,
//! coverage, fuzzing, and the stateful phase, which chains operations:
//! create, read, delete, read again) and all its checks: no 5xx, every
//! status, content type, header and body as documented, invalid data
//! refused, valid data accepted, a deleted resource not coming back.
//!
//! `tests/schemathesis/schemathesis.toml` holds the few exceptions to its
//! defaults, each with its reason (410 `gone` is a documented answer; the
//! WebSocket is no HTTP API; audio bytes cannot be schema-valid).
//!
//! The request rate limit is raised for the run: a 429 is documented, but
//! it would stop the generated requests from reaching what they test.
//! `LANYARD_SCHEMATHESIS_EXAMPLES` sets the examples per operation (25).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contract_failure() {
    let h = harness_with(|cfg| {
        cfg.limits.requests_per_sec = 10_000.0;
        cfg.limits.request_burst = 10_000.0;
        cfg.limits.transcriptions_per_device = 64;
    })
    .await;
    let examples = std::env::var("LANYARD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let dir = tempfile::tempdir().unwrap();
    let (url, token, report) = (h.url.clone(), h.token_a.clone(), dir.path().to_owned());
    // Its exceptions to schemathesis's defaults, each with its reason.
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let out = tokio::task::spawn_blocking(move || {
        // Through python3, as scripts/setup checks it: pip may put the
        // `schemathesis` script where PATH does not look (~/.local/bin).
        std::process::Command::new("python3")
            // The config names its hooks file relative to here.
            .current_dir(config.parent().unwrap())
            .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())"])
            .arg("--config-file")
            .arg(config)
            .args(["run", &format!("{url}/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            // One worker: Python 3.11's `ast` is not thread-safe (CPython
            // gh-106905), and hypothesis parses lambdas' sources with it,
            // so two workers crashed the coverage phase ("AST constructor
            // recursion depth mismatch") once PUT .../audio had a query
            // parameter.
            .args(["--max-examples", &examples, "--seed", "20261207", "--workers", "1"])
            .args(["--request-timeout", "60", "--no-color"])
            .arg("--report-dir")
            .arg(&report)
            // Its example database would make one run depend on the last.
            .args(["--generation-database", "none"])
            .output()
    })
    .await
    .unwrap()
    .expect("cannot run schemathesis: install it with `pip install schemathesis` (scripts/setup does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    h.server.stop().await;
}
