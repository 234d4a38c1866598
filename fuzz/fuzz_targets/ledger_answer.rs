#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| countersign_signers::ledger::apdu::fuzz_answer(data));
