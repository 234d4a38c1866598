//! A secp256k1 key in a PKCS#11 token (an HSM), through cryptoki.
//!
//! The key is generated in the token (never extractable) or found there by its label. Signing
//! is CKM_ECDSA over the 32-byte safeTxHash; the token answers raw r ‖ s, does not always
//! give a low s, and knows nothing of Ethereum's recovery id. So s is normalised to the lower
//! half here, and the recovery id is the one whose recovered key is the token's public key. The
//! result is checked to recover to the enrolled address before it is returned: a high-s or
//! foreign signature never leaves this module.
//!
//! The PIN is handed in for each use and never stored by this module; its holder keeps it in a
//! zeroizing string. Token calls block, so they run on tokio's blocking pool.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use countersign_core::address::checksummed;
use countersign_core::guard::CheckedRequest;
use countersign_core::secret::SecretString;
use countersign_core::signature::OwnerSignature;
use countersign_core::signer::{verify_owner_signature, Decision, Prompt, Signer, SignerError};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Debian's SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The DER encoding of secp256k1's OID, 1.3.132.0.10 (SEC 2), as CKA_EC_PARAMS.
const SECP256K1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A];

/// Where the key is: the module, the token's label, the key's label. What the store keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenKey {
    pub module: PathBuf,
    pub token: String,
    pub key: String,
}

/// Why the token gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsmError {
    Module {
        detail: String,
    },
    TokenNotFound {
        token: String,
    },
    /// Several present tokens carry the label: the PIN is sent to none of them.
    SeveralTokens {
        token: String,
    },
    WrongPin,
    PinLocked,
    KeyNotFound {
        key: String,
    },
    SeveralKeys {
        key: String,
    },
    NotSecp256k1,
    /// The token did not answer in time.
    Timeout,
    /// The key is not one to enroll: its private half is missing, extractable, not sensitive,
    /// or does not sign for the public key that carries the label.
    UnsafeKey {
        detail: String,
    },
    Input {
        field: &'static str,
        problem: &'static str,
    },
    Token {
        detail: String,
    },
    Answer {
        detail: String,
    },
}

impl HsmError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Module { .. } => "hsm_module",
            Self::TokenNotFound { .. } => "hsm_token_not_found",
            Self::SeveralTokens { .. } => "hsm_several_tokens",
            Self::Timeout => "hsm_timeout",
            Self::UnsafeKey { .. } => "hsm_unsafe_key",
            Self::WrongPin => "hsm_wrong_pin",
            Self::PinLocked => "hsm_pin_locked",
            Self::KeyNotFound { .. } => "hsm_key_not_found",
            Self::SeveralKeys { .. } => "hsm_several_keys",
            Self::NotSecp256k1 => "hsm_not_secp256k1",
            Self::Input { .. } => "invalid_hsm",
            Self::Token { .. } => "hsm_failed",
            Self::Answer { .. } => "hsm_bad_answer",
        }
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Module { detail } => {
                write!(f, "the PKCS#11 module could not be loaded: {detail}")
            }
            Self::TokenNotFound { token } => {
                write!(f, "no token labelled {token:?} is present: insert it and try again")
            }
            Self::WrongPin => write!(f, "the token refused the PIN: check it and try again"),
            Self::PinLocked => write!(
                f,
                "the token's user PIN is locked after too many wrong tries: its security \
                 officer must unlock it"
            ),
            Self::SeveralTokens { token } => write!(
                f,
                "several tokens labelled {token:?} are present; the PIN was sent to none: \
                 remove the others or label them apart"
            ),
            Self::Timeout => write!(f, "the token did not answer in time; try again"),
            Self::UnsafeKey { detail } => write!(f, "the token's key cannot be enrolled: {detail}"),
            Self::KeyNotFound { key } => write!(f, "the token holds no key labelled {key:?}"),
            Self::SeveralKeys { key } => {
                write!(f, "the token holds several keys labelled {key:?}; label them apart")
            }
            Self::NotSecp256k1 => write!(f, "the token's key is not a secp256k1 key"),
            Self::Input { field, problem } => write!(f, "{field}: {problem}"),
            Self::Token { detail } => write!(f, "the token failed: {detail}"),
            Self::Answer { detail } => write!(f, "the token's answer is unusable: {detail}"),
        }
    }
}

impl std::error::Error for HsmError {}

impl From<HsmError> for SignerError {
    fn from(error: HsmError) -> Self {
        match error {
            HsmError::Token { .. } | HsmError::Answer { .. } | HsmError::NotSecp256k1 => {
                SignerError::Failed { detail: error.to_string() }
            }
            other => SignerError::Unavailable { code: other.code(), detail: other.to_string() },
        }
    }
}

fn token_failure(error: CkError) -> HsmError {
    match error {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _) => {
            HsmError::WrongPin
        }
        CkError::Pkcs11(RvError::PinLocked, _) => HsmError::PinLocked,
        CkError::Pkcs11(RvError::TokenNotPresent | RvError::DeviceRemoved, _) => {
            HsmError::TokenNotFound { token: String::new() }
        }
        CkError::LibraryLoading(e) => HsmError::Module { detail: e.to_string() },
        other => HsmError::Token { detail: other.to_string() },
    }
}

/// One initialised context per module for the whole process: PKCS#11 allows one
/// C_Initialize per module per process.
static CONTEXTS: Mutex<Option<HashMap<PathBuf, Arc<Pkcs11>>>> = Mutex::new(None);

fn context(module: &Path) -> Result<Arc<Pkcs11>, HsmError> {
    let mut contexts = CONTEXTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let contexts = contexts.get_or_insert_with(HashMap::new);
    if let Some(context) = contexts.get(module) {
        return Ok(context.clone());
    }
    if !module.is_absolute() {
        return Err(HsmError::Input {
            field: "module",
            problem: "give the module's absolute path",
        });
    }
    let pkcs11 = Pkcs11::new(module).map_err(|e| HsmError::Module { detail: e.to_string() })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(HsmError::Module { detail: e.to_string() }),
    }
    let pkcs11 = Arc::new(pkcs11);
    contexts.insert(module.to_owned(), pkcs11.clone());
    Ok(pkcs11)
}

/// A logged-in session on the token labelled `token.token`.
fn session(token: &TokenKey, pin: &SecretString) -> Result<Session, HsmError> {
    let pkcs11 = context(&token.module)?;
    let slots = pkcs11.get_slots_with_token().map_err(token_failure)?;
    let mut found = Vec::new();
    for slot in slots {
        let info = pkcs11.get_token_info(slot).map_err(token_failure)?;
        if info.label().trim_end() == token.token {
            found.push(slot);
        }
    }
    // A second token with the same label could be anyone's: the PIN goes to no guess.
    let slot = match found.as_slice() {
        [one] => *one,
        [] => return Err(HsmError::TokenNotFound { token: token.token.clone() }),
        _ => return Err(HsmError::SeveralTokens { token: token.token.clone() }),
    };
    let session = pkcs11.open_rw_session(slot).map_err(token_failure)?;
    let pin = AuthPin::from(pin.expose().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) => Ok(session),
        // The login state is per process and token: a session left logged in would let a wrong
        // PIN through unchecked. Log out and check this PIN.
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            session.logout().map_err(token_failure)?;
            session.login(UserType::User, Some(&pin)).map_err(token_failure)?;
            Ok(session)
        }
        Err(e) => Err(token_failure(e)),
    }
}

fn find_one(session: &Session, class: ObjectClass, key: &str) -> Result<ObjectHandle, HsmError> {
    let template = [Attribute::Class(class), Attribute::Label(key.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(token_failure)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(HsmError::KeyNotFound { key: key.to_owned() }),
        _ => Err(HsmError::SeveralKeys { key: key.to_owned() }),
    }
}

/// The public key of the key pair labelled `key`, from its CKA_EC_POINT.
fn public_key(session: &Session, key: &str) -> Result<VerifyingKey, HsmError> {
    let handle = find_one(session, ObjectClass::PUBLIC_KEY, key)?;
    let attributes = session
        .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(token_failure)?;
    let mut point = None;
    for attribute in attributes {
        match attribute {
            Attribute::EcParams(params) if params != SECP256K1_PARAMS => {
                return Err(HsmError::NotSecp256k1)
            }
            Attribute::EcPoint(bytes) => point = Some(bytes),
            _ => {}
        }
    }
    let point = point.ok_or(HsmError::NotSecp256k1)?;
    parse_ec_point(&point)
}

/// CKA_EC_POINT is the uncompressed point wrapped in a DER OCTET STRING (`04 41 04 …`); some
/// tokens give the bare point.
pub fn parse_ec_point(bytes: &[u8]) -> Result<VerifyingKey, HsmError> {
    let point = match bytes {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        [0x04, ..] if bytes.len() == 65 => bytes,
        _ => return Err(HsmError::Answer { detail: "CKA_EC_POINT is not a P-256k1 point".into() }),
    };
    VerifyingKey::from_sec1_bytes(point).map_err(|_| HsmError::NotSecp256k1)
}

/// Turns the token's raw r ‖ s over `digest` into an owner signature: s normalised to the lower
/// half, the recovery id found by recovering `public` from each candidate.
pub fn owner_signature(
    raw: &[u8],
    digest: &B256,
    public: &VerifyingKey,
) -> Result<OwnerSignature, HsmError> {
    let signature = Signature::from_slice(raw)
        .map_err(|_| HsmError::Answer { detail: format!("{} bytes, not r ‖ s", raw.len()) })?;
    let signature = signature.normalize_s().unwrap_or(signature);
    for id in [0u8, 1] {
        let Some(recovery) = RecoveryId::from_byte(id) else { continue };
        let recovered = VerifyingKey::recover_from_prehash(digest.as_slice(), &signature, recovery);
        if recovered.ok().as_ref() == Some(public) {
            let (r, s) = signature.split_bytes();
            return OwnerSignature::from_parts(r.into(), s.into(), id)
                .map_err(|problem| HsmError::Answer { detail: problem.to_string() });
        }
    }
    Err(HsmError::Answer { detail: "the signature is not the token key's".into() })
}

fn check_labels(token: &TokenKey) -> Result<(), HsmError> {
    let visible = |text: &str| {
        !text.trim().is_empty() && text.len() <= 32 && !text.chars().any(char::is_control)
    };
    if !visible(&token.token) {
        return Err(HsmError::Input {
            field: "token",
            problem: "a token label is 1 to 32 visible characters",
        });
    }
    if !visible(&token.key) {
        return Err(HsmError::Input {
            field: "key",
            problem: "a key label is 1 to 32 visible characters",
        });
    }
    Ok(())
}

/// How long one token operation may take.
pub const TOKEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One token operation at a time in this process, each in its own session that is closed
/// (and so logged out) when it ends: the next operation's PIN is always checked by the token.
static TOKEN_TURN: Mutex<()> = Mutex::new(());

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HsmError> + Send + 'static,
) -> Result<T, HsmError> {
    let task = tokio::task::spawn_blocking(move || {
        let _turn = TOKEN_TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        work()
    });
    // Limitation: a token call that hangs keeps its thread, and the turn, until it returns.
    match tokio::time::timeout(TOKEN_TIMEOUT, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(HsmError::Token { detail: "the token call did not finish".into() }),
        Err(_) => Err(HsmError::Timeout),
    }
}

/// What enrolment signs to prove the token holds the private half of the labelled public key.
const ENROLMENT_CHECK: &[u8] = b"countersign: HSM enrolment check";

/// The private key labelled `key` must be one: sensitive, never extractable, and signing for
/// `public`. Public objects can be made on a token without its PIN, so the public key alone
/// proves nothing about who holds the private half.
fn check_private_half(session: &Session, key: &str, public: &VerifyingKey) -> Result<(), HsmError> {
    let unsafe_key = |detail: &str| HsmError::UnsafeKey { detail: detail.to_owned() };
    let private = match find_one(session, ObjectClass::PRIVATE_KEY, key) {
        Err(HsmError::KeyNotFound { .. }) => {
            return Err(unsafe_key(
                "no private key carries the label; the public key is not one's own",
            ))
        }
        other => other?,
    };
    let attributes = session
        .get_attributes(private, &[AttributeType::Sensitive, AttributeType::Extractable])
        .map_err(token_failure)?;
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(false) => {
                return Err(unsafe_key("the private key is not sensitive"))
            }
            Attribute::Extractable(true) => {
                return Err(unsafe_key("the private key is extractable"))
            }
            _ => {}
        }
    }
    let digest = alloy_primitives::keccak256(ENROLMENT_CHECK);
    let raw = session.sign(&Mechanism::Ecdsa, private, digest.as_slice()).map_err(token_failure)?;
    owner_signature(&raw, &digest, public)
        .map(|_| ())
        .map_err(|_| unsafe_key("the private key does not sign for the public key with the label"))
}

/// Finds the key labelled `token.key`, or, with `generate`, makes it in the token when there is
/// none (a secp256k1 pair whose private half is sensitive and never extractable). Returns its
/// address.
pub async fn find_or_generate(
    token: &TokenKey,
    pin: &SecretString,
    generate: bool,
) -> Result<Address, HsmError> {
    check_labels(token)?;
    let token = token.clone();
    let pin = pin.clone();
    blocking(move || {
        let session = session(&token, &pin)?;
        match public_key(&session, &token.key) {
            Ok(public) => {
                check_private_half(&session, &token.key, &public)?;
                Ok(Address::from_public_key(&public))
            }
            Err(HsmError::KeyNotFound { .. }) if generate => {
                let label = Attribute::Label(token.key.as_bytes().to_vec());
                let public = [
                    Attribute::Token(true),
                    Attribute::Verify(true),
                    Attribute::EcParams(SECP256K1_PARAMS.to_vec()),
                    label.clone(),
                ];
                let private = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::KeyType(KeyType::EC),
                    label,
                ];
                session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(token_failure)?;
                let public = public_key(&session, &token.key)?;
                check_private_half(&session, &token.key, &public)?;
                Ok(Address::from_public_key(&public))
            }
            Err(e) => Err(e),
        }
    })
    .await
}

/// A token key enrolled as a Safe owner, with the PIN for this use.
pub struct HsmSigner {
    token: TokenKey,
    pin: SecretString,
    address: Address,
}

impl fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmSigner")
            .field("token", &self.token)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl HsmSigner {
    pub fn enrolled(token: TokenKey, pin: SecretString, address: Address) -> Self {
        Self { token, pin, address }
    }

    /// Signs a digest in the token; the result is low-s and recovers to the enrolled address.
    pub async fn sign_digest(&self, digest: B256) -> Result<OwnerSignature, HsmError> {
        let token = self.token.clone();
        let pin = self.pin.clone();
        let address = self.address;
        blocking(move || {
            let session = session(&token, &pin)?;
            let public = public_key(&session, &token.key)?;
            if Address::from_public_key(&public) != address {
                return Err(HsmError::Answer {
                    detail: format!(
                        "the key labelled {:?} is {}, not the enrolled {}",
                        token.key,
                        checksummed(&Address::from_public_key(&public)),
                        checksummed(&address)
                    ),
                });
            }
            let private = find_one(&session, ObjectClass::PRIVATE_KEY, &token.key)?;
            let raw = session
                .sign(&Mechanism::Ecdsa, private, digest.as_slice())
                .map_err(token_failure)?;
            owner_signature(&raw, &digest, &public)
        })
        .await
    }
}

#[async_trait]
impl Signer for HsmSigner {
    fn address(&self) -> Address {
        self.address
    }

    fn describe(&self) -> String {
        format!(
            "HSM token {:?} key {:?} ({})",
            self.token.token,
            self.token.key,
            checksummed(&self.address)
        )
    }

    async fn sign(
        &self,
        request: &CheckedRequest,
        prompt: &dyn Prompt,
    ) -> Result<OwnerSignature, SignerError> {
        if prompt.confirm(request, self.address).await == Decision::Decline {
            return Err(SignerError::Declined);
        }
        let signature = self.sign_digest(request.hashes().safe_tx).await?;
        verify_owner_signature(request, &signature, self.address)?;
        Ok(signature)
    }
}
