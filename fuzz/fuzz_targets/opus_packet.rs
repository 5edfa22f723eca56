#![no_main]
//! See `boothcast_fuzz::opus_packet` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| boothcast_fuzz::opus_packet(data));
