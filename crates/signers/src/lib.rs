//! Signers that produce a Safe owner signature behind [`countersign_core::signer::Signer`].
//!
//! One module per kind of key. Today: [`software`], a secp256k1 key held in memory and sealed
//! in the store at rest. Hardware signers (Ledger, PKCS#11) join here behind the same trait.

pub mod software;
