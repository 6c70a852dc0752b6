//! Fuzz target `discovery`: see `targets::discovery`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::discovery(data));
