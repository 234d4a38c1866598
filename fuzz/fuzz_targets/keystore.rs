#![no_main]

// The pre-check that runs on a keystore file before its KDF does.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = countersign_signers::software::check_keystore_cost(data);
});
