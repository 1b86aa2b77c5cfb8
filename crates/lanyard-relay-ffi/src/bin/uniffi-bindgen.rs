//! UniFFI's binding generator, built into this crate so that its version
//! always matches the `uniffi` the library was built with (a mismatch makes
//! the generated code refuse to load). Needs the `cli` feature; see
//! `scripts/bindings` and `docs/ffi.md`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
