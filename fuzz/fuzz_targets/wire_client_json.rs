//! Fuzz target `wire_client_json`: the body is [`lanyard_fuzz::wire_client_json`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::wire_client_json(data));
