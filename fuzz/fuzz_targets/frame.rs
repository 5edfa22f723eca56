#![no_main]
//! See `boothcast_fuzz::frame` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| boothcast_fuzz::frame(data));
