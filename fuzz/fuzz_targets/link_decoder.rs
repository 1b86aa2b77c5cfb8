//! Fuzz target `link_decoder`: the body is [`lanyard_fuzz::link_decoder`], which states the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::link_decoder(data));
