//! Fuzz target `wire_server_json`: the body is [`lanyard_fuzz::wire_server_json`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::wire_server_json(data));
