//! cargo-fuzz target `selectors`: feeds arbitrary bytes to [`harness::selectors`], the same entry point
//! the stable corpus regression test uses.
#![no_main]

#[path = "../harness/selectors.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::selectors(data));
