-- Countersign's local store. Columns named `sealed_*` hold AES-256-GCM ciphertext whose
-- associated data names the table, the column and the row (see src/seal.rs).

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE keys (
    id            TEXT PRIMARY KEY,          -- the lower-case hex address
    address       TEXT NOT NULL UNIQUE,      -- EIP-55
    kind          TEXT NOT NULL,             -- 'software'
    label         TEXT,
    created_at    INTEGER NOT NULL,
    sealed_secret BLOB NOT NULL
) STRICT;

CREATE TABLE vaults (
    id            TEXT PRIMARY KEY,          -- '<chain id>:<lower-case address>'
    chain_id      INTEGER NOT NULL,
    address       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    sealed_record BLOB NOT NULL
) STRICT;

CREATE TABLE policy (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    updated_at  INTEGER NOT NULL,
    sealed_body BLOB NOT NULL
) STRICT;

-- What this installation signed: the tripwire reads it.
CREATE TABLE signatures (
    vault_id      TEXT NOT NULL REFERENCES vaults (id),
    nonce         TEXT NOT NULL,
    safe_tx_hash  TEXT NOT NULL,
    signer        TEXT NOT NULL,
    signed_at     INTEGER NOT NULL,
    sealed_detail BLOB NOT NULL,
    PRIMARY KEY (vault_id, nonce, safe_tx_hash, signer)
) STRICT;

CREATE TABLE incidents (
    id            TEXT PRIMARY KEY,
    vault_id      TEXT NOT NULL REFERENCES vaults (id),
    kind          TEXT NOT NULL,
    opened_at     INTEGER NOT NULL,
    sealed_detail BLOB NOT NULL,
    cleared_at    INTEGER,
    sealed_note   BLOB
) STRICT;

CREATE INDEX incidents_open ON incidents (vault_id) WHERE cleared_at IS NULL;

-- The hash-chained audit log (see src/audit.rs). Plain text: it holds what the approver saw
-- (addresses, amounts, hashes, verdicts), never keys or passphrases.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
