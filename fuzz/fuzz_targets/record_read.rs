//! Fuzz target `record_read`: the body is [`lanyard_fuzz::record_read`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::record_read(data));
