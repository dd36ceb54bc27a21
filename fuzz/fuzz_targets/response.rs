//! A backend's response, fed whole and in pieces, through the head parser and body framing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::response(data));
