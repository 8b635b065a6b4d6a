//! cargo-fuzz target `decode`: feeds arbitrary bytes to [`harness::decode`], the same entry point
//! the stable corpus regression test uses.
#![no_main]

#[path = "../harness/server.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::decode(data));
