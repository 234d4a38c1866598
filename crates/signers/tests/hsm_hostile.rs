//! The PKCS#11 signer against a hostile token: a public key planted under a label with no
//! private half in the token, an extractable private key, and a second token that carries the
//! same label. This binary makes its own SoftHSM2 tokens (its own `SOFTHSM2_CONF`), so what it
//! plants reaches no other test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use countersign_core::secret::SecretString;
use countersign_signers::hsm::{self, HsmError, TokenKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

const SECP256K1: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A];
const PIN: &str = "hostile-1234";

fn init_token(label: &str) {
    let status = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", "so-5678"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Plants objects with a context of its own, finalised before the signer opens the module.
fn plant(
    module: &Path,
    token: &str,
    objects: &[Vec<Attribute>],
    pairs: &[(Vec<Attribute>, Vec<Attribute>)],
) {
    let pkcs11 = Pkcs11::new(module).unwrap();
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))).unwrap();
    for object in objects {
        session.create_object(object).unwrap();
    }
    for (public, private) in pairs {
        session.generate_key_pair(&Mechanism::EccKeyPairGen, public, private).unwrap();
    }
    drop(session);
    pkcs11.finalize().unwrap();
}

#[tokio::test]
async fn fail_a_planted_public_key_an_extractable_key_and_a_twin_token() {
    let module = PathBuf::from(
        std::env::var("COUNTERSIGN_TEST_HSM_MODULE").unwrap_or_else(|_| hsm::SOFTHSM_MODULE.into()),
    );
    if !module.exists() || Command::new("softhsm2-util").arg("--help").output().is_err() {
        assert_ne!(std::env::var("COUNTERSIGN_REQUIRE_HSM").as_deref(), Ok("1"), "no SoftHSM2");
        eprintln!("skipped: SoftHSM2 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tokens")).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    let body = format!(
        "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
        dir.path().display()
    );
    std::fs::write(&conf, body).unwrap();
    // The only test of this binary: nothing else reads the environment meanwhile.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    init_token("hostile");
    // Two tokens with one label (SoftHSM2 reads its tokens when the module is initialised, so
    // they are all made first).
    init_token("twin");
    init_token("twin");

    // A foreign public key under a label, with no private half: as anyone who can open the
    // token without its PIN could create it.
    let foreign = k256::ecdsa::SigningKey::from_slice(&[0x33; 32]).unwrap();
    let point = foreign.verifying_key().to_encoded_point(false);
    let planted = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::EcParams(SECP256K1.to_vec()),
        Attribute::EcPoint([&[0x04, 0x41][..], point.as_bytes()].concat()),
        Attribute::Label(b"planted".to_vec()),
    ];
    // A key pair whose private half may leave the token.
    let label = |l: &str| Attribute::Label(l.as_bytes().to_vec());
    let public =
        vec![Attribute::Token(true), Attribute::EcParams(SECP256K1.to_vec()), label("loose")];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        label("loose"),
    ];
    plant(&module, "hostile", &[planted], &[(public, private)]);

    let pin = SecretString::new(PIN.to_owned());
    let at =
        |key: &str| TokenKey { module: module.clone(), token: "hostile".into(), key: key.into() };
    for generate in [false, true] {
        let error = hsm::find_or_generate(&at("planted"), &pin, generate).await.unwrap_err();
        assert!(matches!(error, HsmError::UnsafeKey { .. }), "{error}");
        assert_eq!(error.code(), "hsm_unsafe_key");
    }
    let error = hsm::find_or_generate(&at("loose"), &pin, false).await.unwrap_err();
    assert!(
        error.to_string().contains("not sensitive") || error.to_string().contains("extractable"),
        "{error}"
    );
    let fresh = hsm::find_or_generate(&at("fresh"), &pin, true).await.unwrap();
    assert_eq!(hsm::find_or_generate(&at("fresh"), &pin, false).await.unwrap(), fresh);

    // A second token with the same label: the PIN goes to neither.
    let twin = TokenKey { token: "twin".into(), ..at("fresh") };
    let error = hsm::find_or_generate(&twin, &pin, true).await.unwrap_err();
    assert_eq!(error.code(), "hsm_several_tokens", "{error}");
}
