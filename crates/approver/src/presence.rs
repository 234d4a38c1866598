//! The approver's FIDO2 security key: registering it with the queue, and the assertion an
//! approval needs where the vault's presence policy asks for one.
//!
//! The key is reached over USB HID with CTAP2 through webauthn-authenticator-rs (its `usb`
//! transport). A test build may use the same crate's software key instead (`simulators`),
//! which implements the same backend trait. Key operations block on the person (a touch, a
//! PIN), so they run on tokio's blocking pool.

use std::fmt;
use std::time::Duration;

use alloy_primitives::{Address, B256};
use countersign_fido::{approval_challenge, Assertion};
use serde_json::{json, Value};
use url::Url;
use webauthn_authenticator_rs::error::{CtapError, WebauthnCError};
use webauthn_authenticator_rs::types::{CableRequestType, CableState, EnrollSampleStatus};
use webauthn_authenticator_rs::ui::UiCallback;
use webauthn_authenticator_rs::AuthenticatorBackend;
use webauthn_rs_proto::{
    AllowCredentials, CreationChallengeResponse, PublicKeyCredential,
    PublicKeyCredentialRequestOptions, RegisterPublicKeyCredential, UserVerificationPolicy,
};

use crate::Problem;

/// Whether this build holds the software key that `COUNTERSIGN_FIDO_SOFT_TOKEN` selects.
pub const SOFTWARE_KEY_BUILT: bool = cfg!(feature = "simulators");

/// How long to wait for a security key to be plugged in, and for the person to answer on it.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(30);
pub const PERSON_TIMEOUT_MS: u32 = 60_000;

/// What the key asks of the person, as the shell (a terminal, a window) asks it.
pub trait KeyPrompts: Send + Sync + fmt::Debug {
    /// The key's PIN; None when the person gives none.
    fn pin(&self) -> Option<String>;
    /// Tell the person to touch the key.
    fn touch(&self);
}

#[derive(Debug)]
struct Ui<'a>(&'a dyn KeyPrompts);

impl UiCallback for Ui<'_> {
    fn request_pin(&self) -> Option<String> {
        self.0.pin()
    }
    fn request_touch(&self) {
        self.0.touch();
    }
    fn processing(&self) {}
    fn fingerprint_enrollment_feedback(&self, _: u32, _: Option<EnrollSampleStatus>) {}
    fn cable_qr_code(&self, _: CableRequestType, _: String) {}
    fn dismiss_qr_code(&self) {}
    fn cable_status_update(&self, _: CableState) {}
}

/// Where the security key is.
#[derive(Debug, Clone)]
pub enum SecurityKey {
    /// A FIDO2 key over USB HID (CTAP2).
    Usb,
    /// webauthn-authenticator-rs's software key, kept in a file (tests only).
    #[cfg(feature = "simulators")]
    Soft(std::path::PathBuf),
}

impl SecurityKey {
    /// Whether this is the software key, a test double.
    pub fn is_software(&self) -> bool {
        match self {
            SecurityKey::Usb => false,
            #[cfg(feature = "simulators")]
            SecurityKey::Soft(_) => true,
        }
    }

    /// USB, unless a test build is pointed at a software key by `COUNTERSIGN_FIDO_SOFT_TOKEN`.
    pub fn from_env() -> Self {
        #[cfg(feature = "simulators")]
        if let Some(path) = std::env::var_os("COUNTERSIGN_FIDO_SOFT_TOKEN") {
            return SecurityKey::Soft(path.into());
        }
        SecurityKey::Usb
    }

    /// Runs one operation on the key, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        prompts: std::sync::Arc<dyn KeyPrompts>,
        operation: impl FnOnce(&mut dyn AuthenticatorBackend) -> Result<T, WebauthnCError>
            + Send
            + 'static,
    ) -> Result<T, Problem> {
        let key = self.clone();
        let handle = tokio::runtime::Handle::current();
        let task =
            tokio::task::spawn_blocking(move || key.run_blocking(&handle, &*prompts, operation));
        task.await
            .map_err(|_| Problem::other("fido_failed", "the security key call did not finish"))?
    }

    fn run_blocking<T>(
        &self,
        handle: &tokio::runtime::Handle,
        prompts: &dyn KeyPrompts,
        operation: impl FnOnce(&mut dyn AuthenticatorBackend) -> Result<T, WebauthnCError>,
    ) -> Result<T, Problem> {
        self.run_within(handle, prompts, FIND_TIMEOUT, operation)
    }

    /// Looks for a key for at most `timeout` and does nothing with it: what the app and the
    /// tests use to say whether one is there.
    pub async fn probe(&self, timeout: Duration) -> Result<(), Problem> {
        let key = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            key.run_within(&handle, &SilentPrompts, timeout, |_| Ok(()))
        })
        .await
        .map_err(|_| Problem::other("fido_failed", "the security key call did not finish"))?
    }

    fn run_within<T>(
        &self,
        handle: &tokio::runtime::Handle,
        prompts: &dyn KeyPrompts,
        timeout: Duration,
        operation: impl FnOnce(&mut dyn AuthenticatorBackend) -> Result<T, WebauthnCError>,
    ) -> Result<T, Problem> {
        match self {
            SecurityKey::Usb => {
                use webauthn_authenticator_rs::ctap2::select_one_device;
                use webauthn_authenticator_rs::transport::Transport;
                use webauthn_authenticator_rs::usb::USBTransport;
                let ui = Ui(prompts);
                let transport = handle.block_on(USBTransport::new()).map_err(key_problem)?;
                let devices = handle.block_on(transport.watch()).map_err(key_problem)?;
                let found = handle
                    .block_on(async {
                        tokio::time::timeout(timeout, select_one_device(devices, &ui)).await
                    })
                    .ok()
                    .flatten();
                let Some(mut key) = found else { return Err(no_key()) };
                operation(&mut key).map_err(key_problem)
            }
            #[cfg(feature = "simulators")]
            SecurityKey::Soft(path) => {
                use webauthn_authenticator_rs::softtoken::SoftToken;
                let mut token = match std::fs::read(path) {
                    Ok(bytes) => SoftToken::from_cbor(&bytes).map_err(key_problem)?,
                    Err(_) => SoftToken::new(false).map_err(key_problem)?.0,
                };
                prompts.touch();
                let done = operation(&mut token).map_err(key_problem)?;
                let bytes = token.to_cbor().map_err(key_problem)?;
                std::fs::write(path, bytes)
                    .map_err(|e| Problem::other("fido_failed", format!("the software key: {e}")))?;
                Ok(done)
            }
        }
    }

    async fn register(
        &self,
        prompts: std::sync::Arc<dyn KeyPrompts>,
        origin: Url,
        options: CreationChallengeResponse,
    ) -> Result<RegisterPublicKeyCredential, Problem> {
        self.run(prompts, move |key| {
            key.perform_register(origin, options.public_key, PERSON_TIMEOUT_MS)
        })
        .await
    }

    async fn assert(
        &self,
        prompts: std::sync::Arc<dyn KeyPrompts>,
        origin: Url,
        options: PublicKeyCredentialRequestOptions,
    ) -> Result<PublicKeyCredential, Problem> {
        self.run(prompts, move |key| key.perform_auth(origin, options, PERSON_TIMEOUT_MS)).await
    }
}

/// Prompts for a probe, which asks the person nothing.
#[derive(Debug)]
struct SilentPrompts;

impl KeyPrompts for SilentPrompts {
    fn pin(&self) -> Option<String> {
        None
    }
    fn touch(&self) {}
}

fn no_key() -> Problem {
    Problem::other("fido_no_key", "no security key found: plug it in and try again")
}

/// The client crate's failures, as people-sized problems with their own codes.
fn key_problem(error: WebauthnCError) -> Problem {
    match error {
        WebauthnCError::NoHidDevices | WebauthnCError::NoSelectedToken => no_key(),
        WebauthnCError::Ctap(CtapError::Ctap2PinInvalid | CtapError::Ctap2PinAuthInvalid) => {
            Problem::refused("fido_wrong_pin", "the security key refused the PIN")
        }
        WebauthnCError::Ctap(
            CtapError::Ctap2PinBlocked
            | CtapError::Ctap2PinAuthBlocked
            | CtapError::Ctap2UserVerificationBlocked,
        ) => Problem::refused(
            "fido_pin_blocked",
            "the security key's PIN is blocked after too many wrong tries: reset the key",
        ),
        WebauthnCError::Ctap(CtapError::Ctap2NoCredentials | CtapError::Ctap2InvalidCredential) => {
            Problem::refused(
                "fido_key_not_registered",
                "this security key is not the one registered for you: use that key",
            )
        }
        WebauthnCError::Ctap(
            CtapError::Ctap2UserActionTimeout
            | CtapError::Ctap2ActionTimeout
            | CtapError::Ctap1Timeout,
        ) => Problem::other("fido_timeout", "the security key was not touched in time; try again"),
        WebauthnCError::Cancelled
        | WebauthnCError::Ctap(CtapError::Ctap2OperationDenied | CtapError::Ctap2KeepAliveCancel) => {
            Problem::refused("fido_declined", "the request was declined on the security key")
        }
        WebauthnCError::Ctap(CtapError::Ctap2PinNotSet) => Problem::refused(
            "fido_pin_not_set",
            "the security key has no PIN, which this vault's policy needs: set one",
        ),
        WebauthnCError::PermissionDenied => Problem::other(
            "fido_permission",
            "the security key cannot be opened: this user may not use USB HID devices",
        ),
        other => Problem::other("fido_failed", format!("the security key failed: {other}")),
    }
}

/// The queue's relying party, checked as WebAuthn requires (a domain-like id, the origin's
/// host or a parent of it).
// Limitation: the relying party is read from the queue each time, not pinned at connect
// time; what a lying queue can obtain with it is bounded in the README.
async fn origin(session: &countersign_sync::client::Session) -> Result<(String, Url), Problem> {
    let config = session.get("/v1/fido/config").await?;
    let rp = countersign_fido::RelyingParty::new(
        config["rpId"].as_str().unwrap_or_default(),
        config["origin"].as_str().unwrap_or_default(),
    )
    .map_err(|e| {
        Problem::other("fido_bad_relying_party", format!("the queue's relying party: {e}"))
    })?;
    Ok((rp.id, rp.origin))
}

/// Registers the key with the queue for this member; an admin must confirm it before it
/// counts. Returns the queue's answer (the credential id, unconfirmed).
pub async fn register(
    session: &countersign_sync::client::Session,
    key: &SecurityKey,
    prompts: std::sync::Arc<dyn KeyPrompts>,
) -> Result<Value, Problem> {
    let (rp_id, origin) = origin(session).await?;
    let started = session.post("/v1/fido/registrations", &json!({})).await?;
    let options: CreationChallengeResponse = serde_json::from_value(started["options"].clone())
        .map_err(|e| Problem::other("fido_failed", format!("the queue's options: {e}")))?;
    // The key makes a credential for the queue's relying party only, and never a resident one
    // (which would take one of the key's slots, or replace a passkey of the same site).
    if options.public_key.rp.id != rp_id {
        return Err(Problem::refused(
            "fido_bad_relying_party",
            "the queue asked for a key for another relying party than its own; nothing was made",
        ));
    }
    let resident =
        options.public_key.authenticator_selection.as_ref().is_some_and(|s| s.require_resident_key);
    if resident {
        return Err(Problem::refused(
            "fido_bad_relying_party",
            "the queue asked for a resident key; Countersign registers only non-resident keys",
        ));
    }
    let credential = key.register(prompts, origin, options).await?;
    Ok(session.post("/v1/fido/registrations/finish", &json!({ "credential": credential })).await?)
}

/// What the queue says an approval of `id` needs.
pub async fn requirement(
    session: &countersign_sync::client::Session,
    id: &str,
) -> Result<Value, Problem> {
    Ok(session.get(&format!("/v1/requests/{id}/presence")).await?)
}

/// The member's keys an admin confirmed and nobody revoked, as an assertion may name them.
/// None is a refusal: asked before anything is signed.
pub async fn confirmed_keys(
    session: &countersign_sync::client::Session,
) -> Result<Vec<AllowCredentials>, Problem> {
    let keys = session.get("/v1/fido/credentials").await?;
    let allow: Vec<AllowCredentials> = keys["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["confirmed"] == json!(true) && k["revoked"] != json!(true))
        .filter_map(|k| k["credentialId"].as_str())
        .filter_map(|id| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id).ok()
        })
        .map(|id| AllowCredentials { type_: "public-key".into(), id, transports: None })
        .collect();
    if allow.is_empty() {
        return Err(Problem::refused(
            "fido_no_confirmed_key",
            "this approval needs a security key, and you have no key an admin confirmed: \
             register one (countersign fido register) and have it confirmed; nothing was signed",
        ));
    }
    Ok(allow)
}

/// The assertion for `owner`'s approval of `id` at `hash`, by one of `allow` (the member's
/// confirmed keys), as the approval's `fido` member.
#[allow(clippy::too_many_arguments, reason = "what one assertion is made for")]
pub async fn assertion(
    session: &countersign_sync::client::Session,
    key: &SecurityKey,
    prompts: std::sync::Arc<dyn KeyPrompts>,
    allow: Vec<AllowCredentials>,
    id: &str,
    hash: &B256,
    owner: &Address,
    user_verification: bool,
) -> Result<Value, Problem> {
    let (rp_id, origin) = origin(session).await?;
    let options = PublicKeyCredentialRequestOptions {
        challenge: approval_challenge(id, hash, owner).to_vec(),
        timeout: Some(PERSON_TIMEOUT_MS),
        rp_id,
        allow_credentials: allow,
        user_verification: if user_verification {
            UserVerificationPolicy::Required
        } else {
            UserVerificationPolicy::Preferred
        },
        hints: None,
        extensions: None,
    };
    let answer = key.assert(prompts, origin, options).await?;
    serde_json::to_value(Assertion::from_credential(&answer))
        .map_err(|e| Problem::other("fido_failed", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each failure of the client crate a person can act on has its own code and words.
    #[test]
    fn the_client_crates_failures_have_their_own_codes() {
        let cases = [
            (WebauthnCError::NoHidDevices, "fido_no_key", "no security key found"),
            (WebauthnCError::Ctap(CtapError::Ctap2PinInvalid), "fido_wrong_pin", "refused the PIN"),
            (WebauthnCError::Ctap(CtapError::Ctap2PinBlocked), "fido_pin_blocked", "blocked"),
            (WebauthnCError::Ctap(CtapError::Ctap2PinAuthBlocked), "fido_pin_blocked", "blocked"),
            (WebauthnCError::Ctap(CtapError::Ctap2UserActionTimeout), "fido_timeout", "in time"),
            (
                WebauthnCError::Ctap(CtapError::Ctap2NoCredentials),
                "fido_key_not_registered",
                "not the one registered",
            ),
            (WebauthnCError::Ctap(CtapError::Ctap2OperationDenied), "fido_declined", "declined"),
            (WebauthnCError::Ctap(CtapError::Ctap2PinNotSet), "fido_pin_not_set", "no PIN"),
            (WebauthnCError::PermissionDenied, "fido_permission", "cannot be opened"),
        ];
        for (error, code, words) in cases {
            let problem = key_problem(error);
            assert_eq!(problem.code, code);
            assert!(problem.message.contains(words), "{code}: {}", problem.message);
        }
    }
}
