#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| countersign_fido::fuzz_assertion(data));
