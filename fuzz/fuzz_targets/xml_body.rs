#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| node::fuzzing::xml_body(data));
