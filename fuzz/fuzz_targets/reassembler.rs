//! Fuzz target `reassembler`: the body is [`lanyard_fuzz::reassembler`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::reassembler(data));
