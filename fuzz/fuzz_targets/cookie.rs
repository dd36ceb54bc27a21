//! `Cookie` header lines through the cookie lookup, the pin parser and the stickiness plan.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sweeplb::fuzzing::cookie(data));
