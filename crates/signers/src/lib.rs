//! Signers that produce a Safe owner signature behind [`countersign_core::signer::Signer`].
//!
//! One module per kind of key: [`software`], a secp256k1 key held in memory and sealed in the
//! store at rest; [`ledger`], a Ledger device running the Ethereum app; [`hsm`], a key in a
//! PKCS#11 token.

#[cfg(all(feature = "simulators", not(debug_assertions)))]
compile_error!(
    "the `simulators` feature holds test doubles of signing devices and refuses to compile in \
     a release build"
);

pub mod hsm;
pub mod ledger;
pub mod software;
