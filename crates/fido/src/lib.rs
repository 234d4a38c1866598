//! FIDO2 assertions that prove a person touched their security key for one exact approval.
//!
//! The challenge is not random: it is derived from the approval itself,
//! `SHA-256("countersign-fido2-approval-v2" ‖ 0x00 ‖ len(id) as u16 BE ‖ id ‖ safeTxHash ‖
//! owner)`, so an assertion over it serves that request, that safeTxHash and that owner's
//! approval only. The assertion is then
//! checked by the W3C WebAuthn verification steps (§7.2, the ones that apply to a challenge
//! the relying party did not have to remember): the client data's type, challenge and origin;
//! the RP id hash; user presence, and user verification where the policy asks for it; the
//! signature over `authenticatorData ‖ SHA-256(clientDataJSON)`, checked through
//! webauthn-rs-core's public COSE key type; and a signature counter that never goes back where
//! the key keeps one. The same function re-checks a stored approval offline, without the
//! counter (which only the queue's history knows).

use alloy_primitives::{Address, B256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use url::Url;
use webauthn_rs_core::proto::COSEKey;

/// The domain tag of every approval challenge. Changing it changes every challenge.
pub const CHALLENGE_TAG: &[u8] = b"countersign-fido2-approval-v2";

/// The challenge an assertion for `owner`'s approval of `request_id` at `safe_tx_hash` must
/// sign. The owner is bound too: one person's touch never counts for another owner.
pub fn approval_challenge(request_id: &str, safe_tx_hash: &B256, owner: &Address) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(CHALLENGE_TAG);
    hasher.update([0u8]);
    // Request ids are at most 64 characters (the queue checks), so the length fits.
    hasher.update((request_id.len() as u16).to_be_bytes());
    hasher.update(request_id.as_bytes());
    hasher.update(safe_tx_hash.as_slice());
    hasher.update(owner.as_slice());
    hasher.finalize().into()
}

/// The relying party: the deployment's own id (a domain-like name) and origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelyingParty {
    pub id: String,
    pub origin: Url,
}

impl RelyingParty {
    /// Checks what WebAuthn and the client library require: an https origin (or
    /// http://localhost), a domain-like id that is the origin's host or one of its parents.
    pub fn new(id: &str, origin: &str) -> Result<Self, Refusal> {
        let bad =
            |field: &'static str, problem: &'static str| Refusal::Malformed { field, problem };
        let origin = Url::parse(origin).map_err(|_| bad("origin", "is not a URL"))?;
        let host = origin.host_str().ok_or_else(|| bad("origin", "has no host"))?.to_owned();
        if origin.scheme() != "https" && host != "localhost" {
            return Err(bad("origin", "is not https"));
        }
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("origin", "is an IP address; a relying party needs a domain name"));
        }
        let id = id.trim().to_ascii_lowercase();
        let domain_like = !id.is_empty()
            && id.split('.').all(|label| {
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_like {
            return Err(bad("rpId", "is not a domain name"));
        }
        if host != id && !host.ends_with(&format!(".{id}")) {
            return Err(bad("rpId", "is neither the origin's host nor a parent domain of it"));
        }
        Ok(Self { id, origin })
    }
}

/// An assertion as the client returns it, each part base64url without padding.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assertion {
    pub credential_id: String,
    pub authenticator_data: String,
    pub client_data_json: String,
    pub signature: String,
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assertion")
            .field("credential_id", &self.credential_id)
            .finish_non_exhaustive()
    }
}

impl Assertion {
    /// From the raw parts of a client's answer.
    pub fn from_parts(
        credential_id: &[u8],
        authenticator_data: &[u8],
        client_data_json: &[u8],
        signature: &[u8],
    ) -> Self {
        Self {
            credential_id: URL_SAFE_NO_PAD.encode(credential_id),
            authenticator_data: URL_SAFE_NO_PAD.encode(authenticator_data),
            client_data_json: URL_SAFE_NO_PAD.encode(client_data_json),
            signature: URL_SAFE_NO_PAD.encode(signature),
        }
    }

    /// From webauthn-rs-proto's credential, as a client library answers it.
    pub fn from_credential(credential: &webauthn_rs_proto::PublicKeyCredential) -> Self {
        Self::from_parts(
            &credential.raw_id,
            &credential.response.authenticator_data,
            &credential.response.client_data_json,
            &credential.response.signature,
        )
    }

    pub fn credential_id_bytes(&self) -> Result<Vec<u8>, Refusal> {
        decode("credentialId", &self.credential_id)
    }
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, Refusal> {
    // Clients differ on padding; the bytes are what is signed, not this text.
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed { field, problem: "is not base64url" })
}

/// Why an assertion does not prove presence for this approval. Each has its own code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Malformed {
        field: &'static str,
        problem: &'static str,
    },
    WrongType,
    /// The challenge is another approval's (another request, safeTxHash or owner).
    OtherApproval,
    WrongOrigin,
    WrongRpId,
    NoUserPresence,
    NoUserVerification,
    BadSignature,
    /// The counter is the stored one again: the same assertion, replayed.
    Replayed {
        counter: u32,
    },
    /// The counter is below the stored one: a cloned key, or an old assertion.
    CounterWentBack {
        stored: u32,
        counter: u32,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "fido_malformed",
            Self::WrongType => "fido_wrong_type",
            Self::OtherApproval => "fido_other_approval",
            Self::WrongOrigin => "fido_wrong_origin",
            Self::WrongRpId => "fido_wrong_rp",
            Self::NoUserPresence => "fido_no_presence",
            Self::NoUserVerification => "fido_no_verification",
            Self::BadSignature => "fido_bad_signature",
            Self::Replayed { .. } => "fido_replayed",
            Self::CounterWentBack { .. } => "fido_counter_back",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { field, problem } => write!(f, "fido.{field}: {problem}"),
            Self::WrongType => write!(f, "the assertion is not a WebAuthn get (authentication)"),
            Self::OtherApproval => {
                write!(f, "the assertion was made for another request, safeTxHash or owner")
            }
            Self::WrongOrigin => write!(f, "the assertion was made for another origin"),
            Self::WrongRpId => write!(f, "the assertion was made for another relying party"),
            Self::NoUserPresence => write!(f, "the security key did not see a person's touch"),
            Self::NoUserVerification => {
                write!(f, "the security key did not verify the person (PIN), which the policy asks")
            }
            Self::BadSignature => write!(f, "the assertion's signature is not the key's"),
            Self::Replayed { counter } => {
                write!(f, "the assertion's counter {counter} was seen already: a replay")
            }
            Self::CounterWentBack { stored, counter } => write!(
                f,
                "the key's counter went back from {stored} to {counter}: a cloned key or an old \
                 assertion"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// What the authenticator data says (W3C WebAuthn §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatorData {
    pub rp_id_hash: [u8; 32],
    pub user_present: bool,
    pub user_verified: bool,
    pub counter: u32,
}

/// Parses the fixed part of authenticator data: rpIdHash (32), flags (1), signCount (4, BE).
pub fn parse_authenticator_data(bytes: &[u8]) -> Result<AuthenticatorData, Refusal> {
    if bytes.len() < 37 {
        let problem = "is shorter than 37 bytes";
        return Err(Refusal::Malformed { field: "authenticatorData", problem });
    }
    let mut rp_id_hash = [0u8; 32];
    rp_id_hash.copy_from_slice(&bytes[..32]);
    let flags = bytes[32];
    let counter = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
    Ok(AuthenticatorData {
        rp_id_hash,
        user_present: flags & 0x01 != 0,
        user_verified: flags & 0x04 != 0,
        counter,
    })
}

/// The members of the client data that are checked; others are tolerated, in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientData {
    pub type_: String,
    pub challenge: String,
    pub origin: String,
}

/// Parses clientDataJSON as it was signed (never re-serialised).
pub fn parse_client_data(bytes: &[u8]) -> Result<ClientData, Refusal> {
    let bad = |problem| Refusal::Malformed { field: "clientDataJSON", problem };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("is not JSON"))?;
    let member = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(ClientData {
        type_: member("type").ok_or_else(|| bad("has no type"))?,
        challenge: member("challenge").ok_or_else(|| bad("has no challenge"))?,
        origin: member("origin").ok_or_else(|| bad("has no origin"))?,
    })
}

/// Checks the assertion's signature over `authenticatorData ‖ SHA-256(clientDataJSON)` with the
/// credential's public key.
pub fn check_signature(
    key: &COSEKey,
    authenticator_data: &[u8],
    client_data_json: &[u8],
    signature: &[u8],
) -> Result<(), Refusal> {
    let mut signed = authenticator_data.to_vec();
    signed.extend_from_slice(&Sha256::digest(client_data_json));
    match key.verify_signature(signature, &signed) {
        Ok(true) => Ok(()),
        _ => Err(Refusal::BadSignature),
    }
}

/// What a verified assertion says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub counter: u32,
    pub user_verified: bool,
}

/// What an assertion must prove.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub request_id: &'a str,
    pub safe_tx_hash: &'a B256,
    /// The owner whose approval this assertion stands beside.
    pub owner: &'a Address,
    pub require_user_verification: bool,
    /// The counter stored for the key, live; None offline.
    pub stored_counter: Option<u32>,
}

/// Verifies `assertion` by the WebAuthn steps for this approval, with the credential's key.
pub fn verify(
    rp: &RelyingParty,
    key: &COSEKey,
    assertion: &Assertion,
    expected: &Expected<'_>,
) -> Result<Verified, Refusal> {
    let client_data_json = decode("clientDataJSON", &assertion.client_data_json)?;
    let authenticator_data = decode("authenticatorData", &assertion.authenticator_data)?;
    let signature = decode("signature", &assertion.signature)?;
    let client = parse_client_data(&client_data_json)?;
    if client.type_ != "webauthn.get" {
        return Err(Refusal::WrongType);
    }
    let challenge = approval_challenge(expected.request_id, expected.safe_tx_hash, expected.owner);
    let claimed = decode("clientDataJSON.challenge", &client.challenge)?;
    if claimed != challenge {
        return Err(Refusal::OtherApproval);
    }
    // Origins compare parsed: a client may write a trailing slash.
    let origin = Url::parse(&client.origin).map_err(|_| Refusal::WrongOrigin)?;
    if origin.origin() != rp.origin.origin() {
        return Err(Refusal::WrongOrigin);
    }
    let data = parse_authenticator_data(&authenticator_data)?;
    if data.rp_id_hash != <[u8; 32]>::from(Sha256::digest(rp.id.as_bytes())) {
        return Err(Refusal::WrongRpId);
    }
    if !data.user_present {
        return Err(Refusal::NoUserPresence);
    }
    if expected.require_user_verification && !data.user_verified {
        return Err(Refusal::NoUserVerification);
    }
    check_signature(key, &authenticator_data, &client_data_json, &signature)?;
    // A key that keeps no counter answers 0 every time (WebAuthn §6.1.1).
    if let Some(stored) = expected.stored_counter {
        if data.counter != 0 || stored != 0 {
            if data.counter == stored {
                return Err(Refusal::Replayed { counter: data.counter });
            }
            if data.counter < stored {
                return Err(Refusal::CounterWentBack { stored, counter: data.counter });
            }
        }
    }
    Ok(Verified { counter: data.counter, user_verified: data.user_verified })
}

/// A stored approval with its assertion, everything needed to check it again offline, as
/// the queue recorded it when it took the approval (its relying party and policy then).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredApproval {
    pub request_id: String,
    pub safe_tx_hash: B256,
    /// The owner whose approval the assertion stands beside.
    pub owner: Address,
    /// The queue member that owner is, whose confirmed key made the assertion.
    pub member: String,
    pub relying_party: RelyingParty,
    pub user_verification_required: bool,
    /// The credential's public key, in webauthn-rs-core's serde form.
    pub public_key: COSEKey,
    pub assertion: Assertion,
}

impl StoredApproval {
    /// SHA-256 of the public key's serde form, to compare with the queue's key list
    /// (`GET /v1/fido/credentials`): the file carries its own key, so what it proves offline
    /// holds for that key only.
    pub fn key_fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }
}

/// SHA-256 of a public key's serde form, in hex.
pub fn fingerprint(key: &COSEKey) -> String {
    hex_of(&Sha256::digest(serde_json::to_vec(key).unwrap_or_default()))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-verifies a stored approval with no server state (the counter is not checked offline).
/// It proves that the key in the file signed, for a person's touch, the challenge of this
/// owner's approval of this request at this safeTxHash; that the key is the member's
/// confirmed one is for the queue's key list to say ([`StoredApproval::key_fingerprint`]).
pub fn reverify(stored: &StoredApproval) -> Result<Verified, Refusal> {
    let rp = RelyingParty::new(&stored.relying_party.id, stored.relying_party.origin.as_str())?;
    let expected = Expected {
        request_id: &stored.request_id,
        safe_tx_hash: &stored.safe_tx_hash,
        owner: &stored.owner,
        require_user_verification: stored.user_verification_required,
        stored_counter: None,
    };
    verify(&rp, &stored.public_key, &stored.assertion, &expected)
}

/// The fuzz target's entry point: every parser of an assertion or a stored approval, on the
/// same bytes. None may panic.
pub fn fuzz_assertion(data: &[u8]) {
    let _ = parse_authenticator_data(data);
    let _ = parse_client_data(data);
    if let Ok(stored) = serde_json::from_slice::<StoredApproval>(data) {
        let _ = reverify(&stored);
    }
}
