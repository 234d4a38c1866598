-- What the queue screen's row of a synced request is read from, sealed beside the whole
-- body: a small part of it, so that listing 10,000 requests opens and parses little. Rows
-- synced before this column have it NULL and are read from their body.
ALTER TABLE queue_requests ADD COLUMN sealed_row BLOB;
