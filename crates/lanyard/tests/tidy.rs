//! Repository hygiene that review would otherwise have to catch.

use std::path::{Path, PathBuf};

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
