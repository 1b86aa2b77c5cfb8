//! Fuzz target `oggopus_read`: the body is [`lanyard_fuzz::oggopus_read`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::oggopus_read(data));
