#![no_main]
//! See `boothcast_fuzz::input_file` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| boothcast_fuzz::input_file(data));
