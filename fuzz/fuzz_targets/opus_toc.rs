//! Fuzz target `opus_toc`: the body is [`lanyard_fuzz::opus_toc`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::opus_toc(data));
