//! Repository hygiene that review would otherwise have to catch.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file opens with a `//!` doc saying what it is for.
#[test]
fn every_source_file_has_a_module_doc() {
    let root = workspace_root();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let krate = entry.unwrap().path();
        for sub in ["src", "tests", "benches"] {
            if krate.join(sub).is_dir() {
                rust_files(&krate.join(sub), &mut files);
            }
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(missing.is_empty(), "add a `//!` module doc to: {missing:#?}");
}

/// ARCHITECTURE.md names every crate, with its invariant.
#[test]
fn architecture_md_covers_every_crate() {
    let root = workspace_root();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let heading = format!("### `{name}`");
        let section =
            doc.split(&heading).nth(1).unwrap_or_else(|| panic!("ARCHITECTURE.md lacks a section for {name}"));
        let section = section.split("\n### ").next().unwrap();
        assert!(section.contains("**Architecture invariant:**"), "{name} has no invariant line");
    }
}

/// Whether a crate (by name) may list a dependency.
type Allowed = fn(&str) -> bool;

/// Which crates may depend on which: the "Architecture invariant" lines of
/// ARCHITECTURE.md that a dependency can break. `(dependency, allowed)`:
/// only crates matching `allowed` may list it, in any section
/// (dependencies, dev- or build-dependencies).
const ONLY: &[(&str, Allowed)] = &[
    ("opus", |c| c == "lanyard-audio"),
    ("ct2rs", |c| c == "lanyard-stt"),
    ("sqlx", |c| c.starts_with("lanyard-store-")),
    ("axum", |c| c == "lanyard-server"),
];

/// Crates that do I/O, which the sans-I/O protocol crate never lists.
const IO_CRATES: &[&str] =
    &["tokio", "mio", "async-std", "reqwest", "hyper", "tokio-tungstenite", "tungstenite", "axum", "sqlx", "btleplug"];

/// The crate invariants broken in `metadata` (the JSON of `cargo metadata
/// --no-deps`), one line each.
fn invariant_violations(metadata: &Value) -> Vec<String> {
    let mut broken = Vec::new();
    for package in metadata["packages"].as_array().expect("cargo metadata lists packages") {
        let name = package["name"].as_str().unwrap();
        for dep in package["dependencies"].as_array().unwrap() {
            let dep = dep["name"].as_str().unwrap();
            for (only, allowed) in ONLY {
                if dep == *only && !allowed(name) {
                    broken.push(format!("{name} depends on {dep}, which only its owning crate may (ARCHITECTURE.md)"));
                }
            }
            if name == "lanyard-proto" && IO_CRATES.contains(&dep) {
                broken.push(format!("lanyard-proto depends on {dep}: the protocol crate is sans-I/O"));
            }
        }
    }
    broken
}

/// The crate invariants hold in the workspace as `cargo metadata` sees it.
#[test]
fn crate_invariants_hold() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        metadata["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"lanyard-audio") && names.len() >= 10, "cargo metadata saw only {names:?}");
    let broken = invariant_violations(&metadata);
    assert!(broken.is_empty(), "crate invariants broken:\n{}", broken.join("\n"));
}

/// The check finds each kind of break (so a passing run means something).
#[test]
fn each_crate_invariant_break_is_found() {
    let package = |name: &str, deps: &[&str]| serde_json::json!({"name": name, "dependencies": deps.iter().map(|d| serde_json::json!({"name": d})).collect::<Vec<_>>()});
    let clean = serde_json::json!({"packages": [
        package("lanyard-audio", &["opus"]),
        package("lanyard-stt", &["ct2rs"]),
        package("lanyard-store-postgres", &["sqlx"]),
        package("lanyard-server", &["axum", "tokio"]),
        package("lanyard-proto", &["serde"]),
    ]});
    assert_eq!(invariant_violations(&clean), Vec::<String>::new());
    for (krate, dep) in [
        ("lanyard", "opus"),
        ("lanyard-server", "ct2rs"),
        ("lanyard-store", "sqlx"),
        ("lanyard-relay", "axum"),
        ("lanyard-proto", "tokio"),
    ] {
        let broken = serde_json::json!({"packages": [package(krate, &[dep])]});
        let found = invariant_violations(&broken);
        assert_eq!(found.len(), 1, "{krate} -> {dep}: {found:?}");
        assert!(found[0].contains(krate) && found[0].contains(dep), "{found:?}");
    }
}
