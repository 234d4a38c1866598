//! The queue connection (URL, pins, API key, pinned initiators) and the offline copy of the
//! queue's requests, all sealed.

use countersign_core::secret::SecretBytes;
use sqlx::{Row, Sqlite, Transaction};

use crate::seal::Place;
use crate::{Store, StoreError};

const CONFIG: Place<'static> = Place { table: "queue_config", column: "sealed_config", row: "1" };

/// One cached request: the queue's view as last synced, and the hash of its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRequest {
    pub id: String,
    pub seq: i64,
    pub payload_hash: String,
    pub body: serde_json::Value,
}

impl Store {
    /// Replaces the queue connection. The config holds the API key: it is only ever sealed.
    pub async fn set_queue_config(&self, config: &SecretBytes) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(CONFIG, config.expose())?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM queue_config").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM queue_requests").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM queue_rows").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO queue_config (id, cursor, sealed_config) VALUES (1, 0, ?)")
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        self.audit_in(&mut tx, "queue_connected", &serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the credentials of the same queue (a pin rotation, a new API key), keeping the
    /// synced copy, its marks and the cursor. `NotFound` when no queue is connected.
    pub async fn update_queue_config(&self, config: &SecretBytes) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(CONFIG, config.expose())?;
        let mut tx = self.begin().await?;
        let updated = sqlx::query("UPDATE queue_config SET sealed_config = ? WHERE id = 1")
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::NotFound { what: "a queue connection".into() });
        }
        self.audit_in(&mut tx, "queue_credentials_changed", &serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The sealed queue connection and the sync cursor, if a queue is configured.
    pub async fn queue_config(&self) -> Result<Option<(SecretBytes, i64)>, StoreError> {
        let row = sqlx::query("SELECT cursor, sealed_config FROM queue_config WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let config = self.sealer.open(CONFIG, &row.get::<Vec<u8>, _>("sealed_config"))?;
        Ok(Some((config, row.get("cursor"))))
    }

    pub async fn cached_request(&self, id: &str) -> Result<Option<CachedRequest>, StoreError> {
        let row = sqlx::query(
            "SELECT id, seq, payload_hash, sealed_body FROM queue_requests WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| self.open_cached(&row)).transpose()
    }

    /// The id and payload hash of every cached request, without opening any sealed body.
    pub async fn cached_payload_hashes(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT id, payload_hash FROM queue_requests")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|row| (row.get("id"), row.get("payload_hash"))).collect())
    }

    pub async fn cached_requests(&self) -> Result<Vec<CachedRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, seq, payload_hash, sealed_body FROM queue_requests ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.open_cached(row)).collect()
    }

    /// Every synced request with only what its row on the queue screen shows (see
    /// [`RowPart`]): the same fields as the body, far fewer bytes to open and parse. A request
    /// without a row part (its body did not open when the store was opened) is read from its
    /// body, which reports it.
    pub async fn cached_rows(&self) -> Result<Vec<CachedRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.id, r.seq, r.payload_hash, w.sealed_row FROM queue_requests r \
             LEFT JOIN queue_rows w ON w.id = r.id ORDER BY r.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get("id");
            let Some(sealed) = row.get::<Option<Vec<u8>>, _>("sealed_row") else {
                // Synced before rows were kept apart.
                let mut cached = self.cached_request(&id).await?.ok_or_else(|| {
                    StoreError::Corrupt { detail: format!("cached request {id}") }
                })?;
                cached.body = row_part(&cached.body);
                out.push(cached);
                continue;
            };
            let body = self.open_row_part(&id, &sealed)?;
            out.push(CachedRequest {
                id,
                seq: row.get("seq"),
                payload_hash: row.get("payload_hash"),
                body,
            });
        }
        Ok(out)
    }

    /// The row parts of the `limit` most recently created synced requests, newest first, for
    /// a first screenful before [`Self::cached_rows`] has read them all. Requests synced
    /// before row parts were kept are not among them. A row whose clear creation time differs
    /// from its sealed part's is reported as tampered.
    pub async fn newest_rows(&self, limit: u32) -> Result<Vec<CachedRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.id, r.seq, r.payload_hash, w.created_at, w.sealed_row FROM queue_rows w \
             JOIN queue_requests r ON r.id = w.id ORDER BY w.created_at DESC, w.id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.get("id");
                let body = self.open_row_part(&id, &row.get::<Vec<u8>, _>("sealed_row"))?;
                if created_at(&body) != row.get::<i64, _>("created_at") {
                    return Err(StoreError::Tampered {
                        table: "queue_rows",
                        column: "created_at",
                        row: id,
                    });
                }
                Ok(CachedRequest {
                    id,
                    seq: row.get("seq"),
                    payload_hash: row.get("payload_hash"),
                    body,
                })
            })
            .collect()
    }

    /// Seals the row part of every synced request that has none (synced before row parts were
    /// kept), in one transaction, when the store is opened. A body that does not open is left
    /// as it is, to be reported when it is read.
    pub(crate) async fn fill_row_parts(&self) -> Result<(), StoreError> {
        let missing = sqlx::query(
            "SELECT r.id, r.seq, r.payload_hash, r.sealed_body FROM queue_requests r \
             LEFT JOIN queue_rows w ON w.id = r.id WHERE w.id IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut parts = Vec::new();
        for row in &missing {
            let Ok(cached) = self.open_cached(row) else { continue };
            let sealed = self.seal_row_part(&cached)?;
            parts.push((cached, sealed));
        }
        // Nothing to write, nothing begun: a store on a read-only disk still opens.
        if parts.is_empty() {
            return Ok(());
        }
        let parts: Vec<(&CachedRequest, &[u8])> =
            parts.iter().map(|(cached, sealed)| (cached, sealed.as_slice())).collect();
        let mut tx = self.begin().await?;
        // Read before this transaction: a part another process wrote meanwhile is newer.
        write_row_parts(&mut tx, &parts, Existing::Keep).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The body and the row part of `request`, sealed for its row.
    fn seal_cached(&self, request: &CachedRequest) -> Result<Sealed, StoreError> {
        let place = Place { table: "queue_requests", column: "sealed_body", row: &request.id };
        let body = self.sealer.seal(place, request.body.to_string().as_bytes())?;
        Ok((body, self.seal_row_part(request)?))
    }

    /// The row part of `request`, sealed for its row.
    fn seal_row_part(&self, request: &CachedRequest) -> Result<Vec<u8>, StoreError> {
        let part = serde_json::to_vec(&RowPart(&request.body))
            .map_err(|_| StoreError::Corrupt { detail: format!("cached row {}", request.id) })?;
        self.sealer.seal(row_place(&request.id), &part)
    }

    /// The row part sealed for request `id`, opened.
    fn open_row_part(&self, id: &str, sealed: &[u8]) -> Result<serde_json::Value, StoreError> {
        let plain = self.sealer.open(row_place(id), sealed)?;
        serde_json::from_slice(plain.expose())
            .map_err(|_| StoreError::Corrupt { detail: format!("cached row {id}") })
    }

    fn open_cached(&self, row: &sqlx::sqlite::SqliteRow) -> Result<CachedRequest, StoreError> {
        let id: String = row.get("id");
        let place = Place { table: "queue_requests", column: "sealed_body", row: &id };
        let plain = self.sealer.open(place, &row.get::<Vec<u8>, _>("sealed_body"))?;
        let body = serde_json::from_slice(plain.expose())
            .map_err(|_| StoreError::Corrupt { detail: format!("cached request {id}") })?;
        Ok(CachedRequest { id, seq: row.get("seq"), payload_hash: row.get("payload_hash"), body })
    }

    /// Adds `mark` to a synced request's marks, read and written in one transaction, leaving
    /// the cursor alone; a mark it has already is not added again (a rejection sent twice
    /// marks once). Returns whether the request was there.
    pub async fn add_mark(&self, id: &str, mark: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT id, seq, payload_hash, sealed_body FROM queue_requests WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let mut cached = self.open_cached(&row)?;
        if let Some(list) = cached.body["countersign"]["marks"].as_array_mut() {
            if list.iter().any(|kept| kept.as_str() == Some(mark)) {
                return Ok(true);
            }
            list.push(serde_json::Value::from(mark));
        } else {
            cached.body["countersign"]["marks"] = serde_json::json!([mark]);
        }
        let (sealed, sealed_row) = self.seal_cached(&cached)?;
        sqlx::query("UPDATE queue_requests SET sealed_body = ? WHERE id = ?")
            .bind(sealed)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        write_row_parts(&mut tx, &[(&cached, &sealed_row)], Existing::Replace).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores a batch of synced requests and the new cursor in one transaction, so a sync cut
    /// short resumes from the last batch it finished, without duplicates.
    pub async fn store_synced(
        &self,
        requests: &[CachedRequest],
        cursor: i64,
    ) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(requests.len());
        for request in requests {
            sealed.push(self.seal_cached(request)?);
        }
        let mut tx = self.begin().await?;
        // A mark written here since the sync read its copies (a rejection, say) is kept: the
        // copies stored now carry every mark the stored ones have.
        let merged = self.with_stored_marks(&mut tx, requests).await?;
        let mut requests: Vec<&CachedRequest> = requests.iter().collect();
        for (i, request) in &merged {
            sealed[*i] = self.seal_cached(request)?;
            requests[*i] = request;
        }
        // Rows go in a hundred to a statement: one statement a row costs more in round trips
        // to SQLite's thread than the writing itself.
        let rows: Vec<(&CachedRequest, Sealed)> = requests.into_iter().zip(sealed).collect();
        for chunk in rows.chunks(100) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO queue_requests (id, seq, payload_hash, sealed_body) ",
            );
            insert.push_values(chunk, |mut row, (request, (body, _))| {
                row.push_bind(&request.id)
                    .push_bind(request.seq)
                    .push_bind(&request.payload_hash)
                    .push_bind(body.as_slice());
            });
            insert.push(
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, \
                 payload_hash = excluded.payload_hash, sealed_body = excluded.sealed_body",
            );
            insert.build().execute(&mut *tx).await?;
            let parts: Vec<(&CachedRequest, &[u8])> =
                chunk.iter().map(|(request, (_, part))| (*request, part.as_slice())).collect();
            write_row_parts(&mut tx, &parts, Existing::Replace).await?;
        }
        sqlx::query("UPDATE queue_config SET cursor = ? WHERE id = 1")
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// The requests of `requests` whose stored copy has marks they lack, by index, with those
    /// marks added after their own: read inside the writing transaction, so that no mark
    /// written meanwhile is lost.
    async fn with_stored_marks(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        requests: &[CachedRequest],
    ) -> Result<Vec<(usize, CachedRequest)>, StoreError> {
        let index: std::collections::HashMap<&str, usize> =
            requests.iter().enumerate().map(|(i, r)| (r.id.as_str(), i)).collect();
        let mut merged = Vec::new();
        for chunk in requests.chunks(100) {
            let mut select = sqlx::QueryBuilder::<Sqlite>::new(
                "SELECT id, seq, payload_hash, sealed_body FROM queue_requests WHERE id IN (",
            );
            let mut ids = select.separated(", ");
            for request in chunk {
                ids.push_bind(&request.id);
            }
            select.push(")");
            for row in select.build().fetch_all(&mut **tx).await? {
                let stored = self.open_cached(&row)?;
                let Some(&i) = index.get(stored.id.as_str()) else { continue };
                let mut request = requests[i].clone();
                let theirs = marks_of(&stored.body);
                let mut ours = marks_of(&request.body);
                let missing: Vec<String> =
                    theirs.into_iter().filter(|mark| !ours.contains(mark)).collect();
                if missing.is_empty() {
                    continue;
                }
                ours.extend(missing);
                request.body["countersign"]["marks"] = serde_json::json!(ours);
                merged.push((i, request));
            }
        }
        Ok(merged)
    }
}

/// The marks on a cached request's body.
fn marks_of(body: &serde_json::Value) -> Vec<String> {
    body["countersign"]["marks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

/// A synced request's creation time as the queue gave it (0 when it gave none).
fn created_at(body: &serde_json::Value) -> i64 {
    body["createdAt"].as_i64().unwrap_or(0)
}

/// A synced request's body and row part, sealed.
type Sealed = (Vec<u8>, Vec<u8>);

/// What writing a row part does with one already there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Existing {
    Replace,
    Keep,
}

/// Writes the sealed row parts of `parts` inside `tx`, a hundred to a statement.
async fn write_row_parts(
    tx: &mut Transaction<'_, Sqlite>,
    parts: &[(&CachedRequest, &[u8])],
    existing: Existing,
) -> Result<(), StoreError> {
    for chunk in parts.chunks(100) {
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO queue_rows (id, created_at, sealed_row) ",
        );
        insert.push_values(chunk, |mut row, (request, part)| {
            row.push_bind(&request.id).push_bind(created_at(&request.body)).push_bind(*part);
        });
        insert.push(match existing {
            Existing::Replace => {
                " ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, \
                 sealed_row = excluded.sealed_row"
            }
            Existing::Keep => " ON CONFLICT (id) DO NOTHING",
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Where a request's row part is sealed.
fn row_place(id: &str) -> Place<'_> {
    Place { table: "queue_rows", column: "sealed_row", row: id }
}

/// The part of a synced request's body that its row on the queue screen is read from, in the
/// body's own shape: its state, chain, creation time, the transaction, and what Countersign
/// noted (`countersign`: Safe, nonce, marks, verified approvers). Not the approvals'
/// signatures, the initiator's signature or the queue's other fields.
struct RowPart<'a>(&'a serde_json::Value);

impl RowPart<'_> {
    const KEYS: [&'static str; 7] =
        ["id", "seq", "state", "chainId", "createdAt", "transaction", "countersign"];
}

impl serde::Serialize for RowPart<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        for key in Self::KEYS {
            if let Some(value) = self.0.get(key) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// [`RowPart`] of `body`, as a value.
pub fn row_part(body: &serde_json::Value) -> serde_json::Value {
    serde_json::to_value(RowPart(body)).unwrap_or_default()
}
