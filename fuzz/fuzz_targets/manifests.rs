//! Fuzz target `manifests`: see `targets::manifests`.
#![no_main]

#[path = "../targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::manifests(data));
