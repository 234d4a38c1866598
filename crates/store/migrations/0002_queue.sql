-- The connection to an approval queue and the local, sealed copy of its requests.

CREATE TABLE queue_config (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    cursor        INTEGER NOT NULL,
    sealed_config BLOB NOT NULL
) STRICT;

CREATE TABLE queue_requests (
    id           TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL,
    payload_hash TEXT NOT NULL,
    sealed_body  BLOB NOT NULL
) STRICT;
