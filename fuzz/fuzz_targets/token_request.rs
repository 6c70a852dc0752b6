//! Fuzz target `token_request`: see `targets::token_request`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::token_request(data));
