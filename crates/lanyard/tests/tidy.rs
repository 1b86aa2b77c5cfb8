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

/// The crates that may list `lanyard-testkit` as a normal dependency: the
/// campaign, the load generator and the binary (whose `demo` runs the roles
/// as processes). Every crate may list it as a dev-dependency; no role's
/// library may ship with it.
const TESTKIT_USERS: &[&str] = &["lanyard", "lanyard-sim", "lanyard-bench"];

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
            let dev = dep["kind"].as_str() == Some("dev");
            let dep = dep["name"].as_str().unwrap();
            if dep == "lanyard-testkit" && !dev && !TESTKIT_USERS.contains(&name) {
                broken.push(format!("{name} depends on lanyard-testkit outside [dev-dependencies] (ARCHITECTURE.md)"));
            }
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
    let package = |name: &str, deps: &[&str]| serde_json::json!({"name": name, "dependencies": deps.iter().map(|d| serde_json::json!({"name": d, "kind": null})).collect::<Vec<_>>()});
    let dev = |name: &str, dep: &str| serde_json::json!({"name": name, "dependencies": [{"name": dep, "kind": "dev"}]});
    let clean = serde_json::json!({"packages": [
        package("lanyard-audio", &["opus"]),
        package("lanyard-stt", &["ct2rs"]),
        package("lanyard-store-postgres", &["sqlx"]),
        package("lanyard-server", &["axum", "tokio"]),
        package("lanyard-proto", &["serde"]),
        package("lanyard-sim", &["lanyard-testkit"]),
        dev("lanyard-relay", "lanyard-testkit"),
    ]});
    assert_eq!(invariant_violations(&clean), Vec::<String>::new());
    for (krate, dep) in [
        ("lanyard", "opus"),
        ("lanyard-server", "ct2rs"),
        ("lanyard-store", "sqlx"),
        ("lanyard-relay", "axum"),
        ("lanyard-proto", "tokio"),
        ("lanyard-relay", "lanyard-testkit"),
    ] {
        let broken = serde_json::json!({"packages": [package(krate, &[dep])]});
        let found = invariant_violations(&broken);
        assert_eq!(found.len(), 1, "{krate} -> {dep}: {found:?}");
        assert!(found[0].contains(krate) && found[0].contains(dep), "{found:?}");
    }
}

/// Which of a crate's top-level modules each of them names (`crate::x`, or
/// `x` in a `use crate::{...}` group), from its source files with comments
/// left out.
fn module_edges(src: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut modules = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" || !(path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        let text: String = files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        modules.entry(name).or_insert_with(String::new).push_str(&text);
    }
    let names: std::collections::BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges = std::collections::BTreeMap::new();
    for (name, text) in &modules {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let named: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(|item| item.trim().split("::").next().unwrap_or("").trim()).collect()
            } else {
                vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")]
            };
            out.extend(named.into_iter().filter(|n| n != name && names.contains(*n)).map(str::to_owned));
        }
        edges.insert(name.clone(), out);
    }
    edges
}

/// Every cycle among the modules, each as the path that closes it.
fn module_cycles(edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) -> Vec<String> {
    fn visit(
        node: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
        found: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == node) {
            found.push(format!("{} -> {node}", path[i..].join(" -> ")));
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, found);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let (mut done, mut found) = (std::collections::BTreeSet::new(), Vec::new());
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// A crate's modules form layers: no module reaches, through the ones it
/// names, back to itself. A cycle means two modules are one design split
/// across two files (the server's api and admin, api and transcribe, api
/// and openapi, metrics and stt_pool were).
#[test]
fn no_crate_has_a_module_cycle() {
    let root = workspace_root();
    let mut cycles = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            let krate = src.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
            cycles.extend(module_cycles(&module_edges(&src)).into_iter().map(|c| format!("{krate}: {c}")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn a_planted_module_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::{b::X, config};\n// crate::c in a comment is no edge\n")
        .unwrap();
    std::fs::write(dir.path().join("b.rs"), "fn f() { crate::c::g() }").unwrap();
    std::fs::create_dir(dir.path().join("c")).unwrap();
    std::fs::write(dir.path().join("c").join("mod.rs"), "").unwrap();
    std::fs::write(dir.path().join("c").join("inner.rs"), "use crate::a::Y;").unwrap();
    let edges = module_edges(dir.path());
    assert_eq!(module_cycles(&edges), ["a -> b -> c -> a"]);
    std::fs::write(dir.path().join("c").join("inner.rs"), "").unwrap();
    assert!(module_cycles(&module_edges(dir.path())).is_empty());
}
