//! Nothing to build: this script exists for its build-dependency (see
//! Cargo.toml), which keeps CTranslate2 from being compiled twice.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
