//! Runs the Python tests in `tests/python/` against the real library, through
//! its real FFI, with a real `lanyard serve`: `cargo test -p
//! lanyard-relay-ffi` (and so CI) runs them.
//!
//! Steps: find the cdylib this test was built beside, generate the Python
//! bindings from it (UniFFI library mode, the same code path as
//! `scripts/bindings`) into a temp dir, find the `lanyard` binary and the
//! speech model, and run `python3 -m unittest`. Every missing piece is a
//! failure with a message saying how to provide it, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use camino::Utf8PathBuf;

/// `target/debug`, the directory above this test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary lives in deps/");
    deps.parent().expect("deps/ lives in the profile dir").to_owned()
}

/// The cdylib. `cargo test` writes it to `deps/` and does not always copy it
/// up to the profile dir (`cargo build` does), so the newer of the two is the
/// one built from the current source.
fn cdylib(profile: &Path) -> PathBuf {
    let name = format!("{}lanyard_relay_ffi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    [profile.join("deps").join(&name), profile.join(&name)]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no {name} in {}: run `cargo build -p lanyard-relay-ffi`", profile.display()))
}

/// `LANYARD_BIN`, else the `lanyard` built into the same target dir. Cargo
/// gives `CARGO_BIN_EXE_*` only for this package's binaries, and building it
/// from here would wait on the lock this `cargo test` holds.
fn lanyard_bin(profile: &Path) -> PathBuf {
    if let Some(bin) = std::env::var_os("LANYARD_BIN") {
        return PathBuf::from(bin);
    }
    let bin = profile.join(format!("lanyard{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "no lanyard binary at {}: run `cargo build -p lanyard` first (`cargo test --workspace` builds it), \
         or set LANYARD_BIN",
        bin.display()
    );
    bin
}

/// The one rule every test uses (`lanyard_testkit::model_dir` wraps the
/// same call; this crate's tests need nothing else of the testkit).
fn model_dir() -> PathBuf {
    lanyard_stt::require_model_dir().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn python_tests_through_the_ffi() {
    let profile = profile_dir();
    let lib = cdylib(&profile);
    let lanyard = lanyard_bin(&profile);
    let model = model_dir();

    let bindings = tempfile::tempdir().expect("temp dir");
    let out = Utf8PathBuf::from_path_buf(bindings.path().to_owned()).expect("UTF-8 temp path");
    let lib_utf8 = Utf8PathBuf::from_path_buf(lib.clone()).expect("UTF-8 library path");
    uniffi_bindgen::library_mode::generate_bindings(
        &lib_utf8,
        None,
        &uniffi_bindgen::bindings::PythonBindingGenerator,
        &uniffi_bindgen::EmptyCrateConfigSupplier,
        None,
        &out,
        false,
    )
    .expect("generate the Python bindings");
    // The generated module loads the library from its own directory.
    std::fs::copy(&lib, bindings.path().join(lib.file_name().expect("file name"))).expect("copy the cdylib");

    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let status = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(&tests)
        .current_dir(&tests)
        .env("LANYARD_FFI_BINDINGS", bindings.path())
        .env("LANYARD_BIN", &lanyard)
        .env("LANYARD_MODEL_DIR", &model)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("run python3 (install Python 3.9 or newer)");
    assert!(status.success(), "the Python tests failed (their output is above)");
}
