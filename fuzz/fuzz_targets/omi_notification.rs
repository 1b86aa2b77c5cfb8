//! Fuzz target `omi_notification`: the body is [`lanyard_fuzz::omi_notification`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::omi_notification(data));
