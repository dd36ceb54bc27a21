//! A client's reads, split and interleaved with requests, through the head-deadline watcher.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::head(data));
