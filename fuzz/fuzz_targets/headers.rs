//! A request head through the upgrade check, hop-by-hop stripping and `X-Forwarded-*`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::headers(data));
