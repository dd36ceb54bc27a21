//! A client's request head through sweeplb's parser, against hyper's server as the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::request(data));
