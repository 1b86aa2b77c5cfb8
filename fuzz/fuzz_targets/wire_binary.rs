//! Fuzz target `wire_binary`: the body is [`lanyard_fuzz::wire_binary`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::wire_binary(data));
