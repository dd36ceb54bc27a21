//! `config.yaml` text through `sweeplb::config::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::config(data));
