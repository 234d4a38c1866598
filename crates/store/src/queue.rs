//! The queue connection (URL, pins, API key, pinned initiators) and the offline copy of the
//! queue's requests, all sealed.

use countersign_core::secret::SecretBytes;
use sqlx::Row;

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

    fn open_cached(&self, row: &sqlx::sqlite::SqliteRow) -> Result<CachedRequest, StoreError> {
        let id: String = row.get("id");
        let place = Place { table: "queue_requests", column: "sealed_body", row: &id };
        let plain = self.sealer.open(place, &row.get::<Vec<u8>, _>("sealed_body"))?;
        let body = serde_json::from_slice(plain.expose())
            .map_err(|_| StoreError::Corrupt { detail: format!("cached request {id}") })?;
        Ok(CachedRequest { id, seq: row.get("seq"), payload_hash: row.get("payload_hash"), body })
    }

    /// Adds `mark` to a synced request's marks, read and written in one transaction, leaving
    /// the cursor alone. Returns whether the request was there.
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
            list.push(serde_json::Value::from(mark));
        } else {
            cached.body["countersign"]["marks"] = serde_json::json!([mark]);
        }
        let place = Place { table: "queue_requests", column: "sealed_body", row: id };
        let sealed = self.sealer.seal(place, cached.body.to_string().as_bytes())?;
        sqlx::query("UPDATE queue_requests SET sealed_body = ? WHERE id = ?")
            .bind(sealed)
            .bind(id)
            .execute(&mut *tx)
            .await?;
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
            let place = Place { table: "queue_requests", column: "sealed_body", row: &request.id };
            sealed.push(self.sealer.seal(place, request.body.to_string().as_bytes())?);
        }
        let mut tx = self.begin().await?;
        // Rows go in a hundred to a statement: one statement a row costs more in round trips
        // to SQLite's thread than the writing itself.
        let rows: Vec<(&CachedRequest, Vec<u8>)> = requests.iter().zip(sealed).collect();
        for chunk in rows.chunks(100) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO queue_requests (id, seq, payload_hash, sealed_body) ",
            );
            insert.push_values(chunk, |mut row, (request, sealed)| {
                row.push_bind(&request.id)
                    .push_bind(request.seq)
                    .push_bind(&request.payload_hash)
                    .push_bind(sealed.as_slice());
            });
            insert.push(
                " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, \
                 payload_hash = excluded.payload_hash, sealed_body = excluded.sealed_body",
            );
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE queue_config SET cursor = ? WHERE id = 1")
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
