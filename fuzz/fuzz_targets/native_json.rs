#![no_main]
//! `edgeroom_host::fuzzing::native_json` on arbitrary bytes: it must never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| edgeroom_host::fuzzing::native_json(data));
