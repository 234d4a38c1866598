-- What the queue screen's row of a synced request is read from: a small part of its body,
-- sealed in a table of its own (beside a large body in one record it would be read through
-- the body's overflow pages), so that listing 10,000 requests reads, opens and parses little.
-- Requests synced before this table have no row here and are read from their body.
CREATE TABLE queue_rows (
    id         TEXT PRIMARY KEY,
    sealed_row BLOB NOT NULL
) STRICT;
