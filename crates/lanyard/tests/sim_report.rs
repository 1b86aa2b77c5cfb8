//! `lanyard sim --report` writes a page that a real browser renders: a quick
//! campaign (`scenarios/smoke.toml`) is run, and its report is opened in
//! headless Chromium, which must find the plots (inline SVG) and the
//! accounting table in the DOM it built, and takes a screenshot, kept as
//! `tmp/sim-report.png` in the target directory.
//!
//! Chromium is a test dependency (`scripts/setup` installs the Debian
//! package `chromium`); without it this test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "headless Chromium is needed to check the report renders, and there is none at {}: run scripts/setup \
         (it installs the Debian package chromium), or set CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

/// Runs Chromium headless with `args` on `page`, with a time limit.
fn headless(browser: &Path, profile: &Path, args: &[&str], page: &Path) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()));
    let out = cmd.output().expect("run chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_plots_and_the_accounting_table_in_chromium() {
    let browser = chromium();
    let model = common::model_dir();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let report = out.join("sim-report.html");
    let _ = std::fs::remove_file(&report);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
        .arg("sim")
        .arg(root.join("scenarios/smoke.toml"))
        .arg("--report")
        .arg(&report)
        .arg("--model-dir")
        .arg(&model)
        .kill_on_drop(true)
        .spawn()
        .expect("start lanyard sim");
    let status =
        tokio::time::timeout(Duration::from_secs(300), child.wait()).await.expect("the smoke campaign ends").unwrap();
    assert!(status.success(), "the smoke campaign failed: {status}");
    assert!(report.exists(), "lanyard sim --report wrote no page");

    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&browser, profile.path(), &["--dump-dom"], &report);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let svgs = dom.matches("<svg").count();
    // Four measured metrics, a histogram and a CDF each, and the timeline.
    assert!(svgs >= 9, "expected at least 9 SVG plots in the rendered DOM, found {svgs}");
    assert!(dom.contains("<rect") && dom.contains("<polyline"), "the plots have bars and lines");
    let table = dom.split("id=\"accounting\"").nth(1).expect("the accounting table is in the DOM");
    let table = &table[..table.find("</table>").expect("the accounting table is closed")];
    for row in ["replied", "discarded by policy", "lost", "duplicated"] {
        assert!(table.contains(row), "the accounting table has a {row:?} row");
    }
    assert!(dom.contains("id=\"timeline\""), "the timeline is there");
    assert!(dom.contains("id=\"verdict\" class=\"pass\""), "the smoke campaign passed");

    let shot = out.join("sim-report.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1400,2400"],
        &report,
    );
    let png = std::fs::read(&shot).expect("chromium saved a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    assert!(png.len() > 20_000, "the screenshot has content ({} bytes)", png.len());
    eprintln!("screenshot of the report: {}", shot.display());
}
