//! The command line, as clap reads it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Countersign: review and co-sign Safe withdrawals. What you see is what you sign.
#[derive(Debug, Parser)]
#[command(name = "countersign", version, about, max_term_width = 100)]
pub struct Cli {
    /// The folder of the local store (default: $XDG_DATA_HOME/countersign).
    #[arg(long, global = true, env = "COUNTERSIGN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Read the store's passphrase from this file (first line) instead of asking.
    #[arg(long, global = true, env = "COUNTERSIGN_PASSPHRASE_FILE", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,

    /// Extra token list (JSON, same shape as the shipped one) for naming amounts.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_list: Option<PathBuf>,

    /// Log state changes to standard error (COUNTERSIGN_LOG takes tracing filters).
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the local store, its data key wrapped by the OS keyring or a passphrase.
    Init {
        /// Protect the data key with a passphrase (Argon2id) instead of the OS keyring.
        #[arg(long)]
        passphrase: bool,
    },
    /// Decode, hash and guard a Safe transaction (or hash EIP-712 typed data).
    Inspect {
        /// A Safe Transaction Service JSON file, or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        vault: VaultFlags,
        /// Use this policy file instead of the store's policy (inspection only).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Do not open the local store: no pinned records, no history, nothing logged.
        #[arg(long)]
        no_store: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, refuse on any guard, then sign with a local key and print the signature.
    Sign {
        file: PathBuf,
        #[command(flatten)]
        key: KeyChoice,
        /// Sign without asking (for scripts); the checks still run.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Recover the signer of an owner signature over a Safe transaction.
    Verify {
        file: PathBuf,
        /// The 65-byte signature, 0x-prefixed hex.
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        vault: VaultFlags,
        #[arg(long)]
        json: bool,
    },
    /// Signing keys in the local store.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Vault records pinned in the local store.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// The local policy the guards enforce.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Incidents opened by the tripwire.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// The local hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The reference approval queue: serve it, administer it, connect to it, submit to it.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// This member's FIDO2 security key (USB HID, CTAP2).
    #[command(subcommand)]
    Fido(FidoCommand),
    /// Fetch the queue's changes into the local store and check every request again.
    Sync,
    /// The synced requests, from the local store (works offline).
    List,
    /// One synced request, reviewed against the local vault record and policy.
    Show { id: String },
    /// Review, sign and send an approval of a synced request.
    Approve {
        id: String,
        #[command(flatten)]
        key: KeyChoice,
        /// Sign without asking at the terminal (for scripts); every check still runs.
        #[arg(long)]
        yes: bool,
    },
    /// Reject a synced request on the queue, saying why.
    Reject {
        /// The request id.
        id: String,
        /// Why, in words: at least one letter or digit, at most 1000 characters.
        #[arg(long)]
        reason: String,
    },
    /// Delete the local store and its keyring entry.
    Erase {
        /// Confirm: this destroys every key in the store.
        #[arg(long)]
        yes: bool,
    },
}

/// The vault a request is for, when the store has no record of it (or to pick among several).
#[derive(Debug, Args, Clone, Default)]
pub struct VaultFlags {
    #[arg(long, value_name = "N")]
    pub chain_id: Option<u64>,
    #[arg(long, value_name = "X.Y.Z")]
    pub safe_version: Option<String>,
    #[arg(long, value_name = "N")]
    pub next_nonce: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct KeyChoice {
    /// The key's address or label (default: the only key in the store, or of --signer's kind).
    #[arg(long, value_name = "ADDRESS|LABEL")]
    pub key: Option<String>,
    /// The kind of signer (software, ledger, hsm); the chosen key must be of that kind. An
    /// HSM's PIN is read from COUNTERSIGN_HSM_PIN, else asked for at the terminal.
    #[arg(long, value_enum, value_name = "KIND")]
    pub signer: Option<SignerKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignerKind {
    Software,
    Ledger,
    Hsm,
}

impl SignerKind {
    /// The store's name for the kind.
    pub fn name(self) -> &'static str {
        match self {
            SignerKind::Software => "software",
            SignerKind::Ledger => "ledger",
            SignerKind::Hsm => "hsm",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a new secp256k1 key and seal it in the store.
    New {
        #[arg(long)]
        label: Option<String>,
    },
    /// Import a key from a hex file or an Ethereum keystore v3 file.
    Import {
        /// A file holding the private key as 64 hex digits.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "keystore",
            required_unless_present = "keystore"
        )]
        hex_file: Option<PathBuf>,
        /// An Ethereum keystore v3 JSON file.
        #[arg(long, value_name = "FILE")]
        keystore: Option<PathBuf>,
        /// The keystore's password file (asked for when absent).
        #[arg(long, value_name = "FILE", requires = "keystore")]
        password_file: Option<PathBuf>,
        #[arg(long)]
        label: Option<String>,
    },
    /// Enroll a Ledger account: the device shows its address, to be confirmed there.
    AddLedger {
        /// Ledger Live's account index: the path 44'/60'/N'/0/0.
        #[arg(long, value_name = "N", conflicts_with = "path")]
        account: Option<u32>,
        /// A full BIP-32 path instead, such as m/44'/60'/0'/0/1.
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
        /// Read the address without showing it on the device for confirmation.
        #[arg(long)]
        no_confirm: bool,
        /// A name for the key in this store.
        #[arg(long)]
        label: Option<String>,
    },
    /// Enroll a secp256k1 key in a PKCS#11 token, found by its label or made there with
    /// --generate. The PIN is read from COUNTERSIGN_HSM_PIN, else asked for; it is not kept.
    AddHsm {
        /// The token's PKCS#11 module.
        #[arg(long, value_name = "FILE", default_value = countersign_signers::hsm::SOFTHSM_MODULE)]
        module: PathBuf,
        /// The token's label.
        #[arg(long, value_name = "LABEL")]
        token: String,
        /// The key's label in the token.
        #[arg(long, value_name = "LABEL")]
        key_label: String,
        /// Make the key in the token when none has that label.
        #[arg(long)]
        generate: bool,
        /// A name for the key in this store.
        #[arg(long)]
        label: Option<String>,
    },
    /// List the keys in the store.
    List,
    /// Print a key's address.
    Address {
        #[command(flatten)]
        key: KeyChoice,
    },
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Pin a vault record: chain, Safe address, Safe version, owners, threshold, next nonce.
    Add {
        #[arg(long, value_name = "N")]
        chain_id: u64,
        #[arg(long, value_name = "ADDRESS")]
        address: String,
        #[arg(long, value_name = "X.Y.Z")]
        safe_version: String,
        /// An owner address; repeat for each owner.
        #[arg(long = "owner", value_name = "ADDRESS")]
        owners: Vec<String>,
        #[arg(long, value_name = "N")]
        threshold: Option<u32>,
        #[arg(long, value_name = "N")]
        next_nonce: Option<String>,
        #[arg(long)]
        label: Option<String>,
    },
    /// List pinned vaults.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one vault record.
    Show {
        address: String,
        #[arg(long, value_name = "N")]
        chain_id: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Show the connected queue's record of a vault and, with --yes, pin it in place of ours.
    AcceptQueue {
        address: String,
        #[arg(long, value_name = "N")]
        chain_id: u64,
        /// Replace the pinned record (owners, threshold, version) with the queue's.
        #[arg(long)]
        yes: bool,
    },
    /// Record the vault's next nonce after transactions executed.
    SetNextNonce {
        address: String,
        #[arg(long, value_name = "N")]
        chain_id: u64,
        #[arg(long, value_name = "N")]
        next_nonce: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force.
    Show,
    /// Replace the policy with a policy file.
    Set { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// List open incidents (all with --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Clear open incidents, saying why: every one named, or none if one is not open.
    Clear {
        /// The incidents' ids, as `incident list` shows them.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why they may be cleared: who checked what, and how.
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the chain; names the first bad entry.
    Verify {
        /// Verify an exported log file instead of the store's log (needs no store).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With --file: the head hash `audit verify` printed, so a cut-off tail is found too.
        #[arg(long, value_name = "HEX", requires = "file")]
        head: Option<String>,
    },
    /// Write the log as JSON lines (to standard output without a file).
    Export { file: Option<PathBuf> },
    /// Check a stored FIDO2 approval again, offline: the assertion, bound to its request and
    /// safeTxHash, against the credential's public key (the queue's
    /// `GET /v1/requests/ID/approvals/OWNER/fido` hands the file out). Needs no store.
    VerifyApproval { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Serve the queue over TLS 1.3; prints `url: …` and `pin-sha256: …` and runs until stopped.
    Serve {
        /// Where the queue keeps its TLS key (made on first start).
        #[arg(long = "queue-dir", value_name = "DIR")]
        queue_dir: PathBuf,
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// A `postgres://` URL; the default is a SQLite file in the queue folder.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The queue's own policy file (an approver's local policy may be stricter).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Accept connections only from this network (CIDR, like 10.1.0.0/16); repeat for each.
        #[arg(long = "allow-ip", value_name = "CIDR")]
        allow_ip: Vec<String>,
        /// The FIDO2 relying party id, a domain name (security keys bind to it for good).
        #[arg(long, value_name = "DOMAIN", requires = "fido_origin")]
        fido_rp_id: Option<String>,
        /// The FIDO2 origin clients use, https://… on the RP id or below it.
        #[arg(long, value_name = "URL", requires = "fido_rp_id")]
        fido_origin: Option<String>,
    },
    /// Store the connection to a queue (sealed): URL, pins, API key, the initiators to trust.
    Connect {
        /// The queue's URL, as it prints it at start (`url: https://…`).
        #[arg(long)]
        url: String,
        /// The queue's SPKI SHA-256 pin (`pin-sha256: …`); give it twice for a key rotation.
        #[arg(long = "pin", value_name = "BASE64", required = true)]
        pins: Vec<String>,
        /// A file holding this approver's API key.
        #[arg(long, value_name = "FILE")]
        api_key_file: PathBuf,
        /// An initiator address whose requests this approver accepts; repeat for each.
        #[arg(long = "initiator", value_name = "ADDRESS", required = true)]
        initiators: Vec<String>,
    },
    /// Sign the intent of a Safe transaction with a local key and submit it (initiators).
    Submit {
        file: PathBuf,
        /// The request id: 1 to 64 of A-Z a-z 0-9 - _.
        #[arg(long)]
        id: String,
        #[arg(long, value_name = "N")]
        chain_id: u64,
        #[command(flatten)]
        key: KeyChoice,
    },
    /// Set a vault record on the queue (admins).
    #[command(subcommand)]
    Vault(QueueVaultCommand),
    /// Add a member to the queue (admins).
    #[command(subcommand)]
    Member(QueueMemberCommand),
    /// Make an API key for a member (admins); printed once.
    #[command(subcommand, name = "api-key")]
    ApiKey(QueueApiKeyCommand),
    /// FIDO2 security keys (admin): list, confirm, revoke, and a vault's presence policy.
    #[command(subcommand)]
    Fido(QueueFidoCommand),
    /// The queue's own audit log, read from its database.
    #[command(subcommand)]
    Audit(QueueAuditCommand),
    /// Connect to a queue with its pin and ask for its health: the onboarding connection test.
    Ping {
        #[arg(long)]
        url: String,
        /// The queue's SPKI SHA-256 pin, base64; repeat once for a rotation.
        #[arg(long = "pin", value_name = "BASE64", required = true)]
        pins: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FidoCommand {
    /// Register your security key with the connected queue; it counts once an admin confirms
    /// it. The PIN comes from COUNTERSIGN_FIDO_PIN, else the terminal.
    Register,
}

#[derive(Debug, Subcommand)]
pub enum QueueFidoCommand {
    /// Every member's security keys, with each public key's SHA-256.
    List {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Confirm a member's key, after checking with them that the key is theirs.
    Confirm {
        #[command(flatten)]
        connection: AdminConnection,
        id: String,
    },
    /// Revoke a key for good (lost, or cloned).
    Revoke {
        #[command(flatten)]
        connection: AdminConnection,
        id: String,
    },
    /// Set a vault's presence policy from a JSON file: `{"all": true}` or
    /// `{"thresholds": {"native" | TOKEN: "base units"}, "userVerification": true}`.
    Policy {
        #[command(flatten)]
        connection: AdminConnection,
        #[arg(long, value_name = "N")]
        chain_id: u64,
        #[arg(long, value_name = "ADDRESS")]
        address: String,
        #[arg(long, value_name = "FILE")]
        policy_file: PathBuf,
    },
}

// How an admin command reaches the queue. (A `///` comment here would become the
// description of every subcommand that flattens it and has none of its own.)
#[derive(Debug, Args, Clone)]
pub struct AdminConnection {
    /// The queue's URL, as it prints it at start (`url: https://…`).
    #[arg(long)]
    pub url: String,
    /// The queue's SPKI SHA-256 pin (`pin-sha256: …`); give it twice for a key rotation.
    #[arg(long = "pin", value_name = "BASE64", required = true)]
    pub pins: Vec<String>,
    /// A file holding an admin's API key.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum QueueVaultCommand {
    /// Set a vault record on the queue (admins): chain, Safe, version, owners, threshold,
    /// next nonce. Setting it again closes the vault's open requests.
    Add {
        #[command(flatten)]
        connection: AdminConnection,
        #[arg(long, value_name = "N")]
        chain_id: u64,
        #[arg(long, value_name = "ADDRESS")]
        address: String,
        #[arg(long, value_name = "X.Y.Z")]
        safe_version: String,
        #[arg(long = "owner", value_name = "ADDRESS", required = true)]
        owners: Vec<String>,
        #[arg(long, value_name = "N")]
        threshold: u32,
        #[arg(long, value_name = "N")]
        next_nonce: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueMemberCommand {
    /// Add a member with a role and, for initiators and approvers, a signing address.
    Add {
        #[command(flatten)]
        connection: AdminConnection,
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// initiator, approver, viewer or admin.
        #[arg(long)]
        role: String,
        #[arg(long, value_name = "ADDRESS")]
        address: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueApiKeyCommand {
    /// Make a new API key for a member; printed once, stored hashed.
    New {
        #[command(flatten)]
        connection: AdminConnection,
        /// The member id.
        member: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAuditCommand {
    /// Verify the queue's hash chain; names the first bad entry.
    Verify {
        #[arg(long = "queue-dir", value_name = "DIR")]
        queue_dir: PathBuf,
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
}
