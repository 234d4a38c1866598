-- What the queue screen's row of a synced request is read from: a small part of its body,
-- sealed in a table of its own (beside a large body in one record it would be read through
-- the body's overflow pages), so that listing 10,000 requests reads, opens and parses little.
-- `created_at` repeats the sealed part's creation time in the clear, only to find the newest
-- rows first; each row read by it is checked against its sealed part. Requests synced before
-- this table have no row here and are read from their body.
CREATE TABLE queue_rows (
    id         TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    sealed_row BLOB NOT NULL
) STRICT;
CREATE INDEX queue_rows_newest ON queue_rows (created_at DESC, id);
