//! Fuzz target `jwt`: see `targets::jwt`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::jwt(data));
