//! What this server knows of other servers: their signing keys (`server_keys`, and the last
//! key document of each in `server_key_responses`, which we serve as a notary) and the
//! transactions they sent us (`federation_txns_in`, whose stored answers make a repeated
//! transaction a no-op).

use super::{Db, now_ms};

type Result<T, E = sqlx::Error> = std::result::Result<T, E>;

/// A key of another server as stored: `(key id, public key (unpadded base64), valid until,
/// expired at)`.
pub type ServerKeyRow = (String, String, i64, Option<i64>);

/// A verified key document to store (see [`Db::store_server_keys`]).
pub struct KeyDocument<'a> {
    /// The server it is of.
    pub server: &'a str,
    /// Its current keys: `(key id, public key)`.
    pub verify_keys: Vec<(&'a str, &'a str)>,
    /// How long the current keys may be used (already capped by the caller).
    pub keys_valid_until: i64,
    /// Its old keys: `(key id, public key, expired at)`.
    pub old_keys: Vec<(&'a str, &'a str, i64)>,
    /// The document as served (to answer notary queries), and its own `valid_until_ts`.
    pub json: String,
    /// The document's `valid_until_ts`.
    pub valid_until: i64,
}

impl Db {
    /// The answer we gave to transaction `txn_id` of `origin`, if we processed it.
    pub async fn federation_txn_answer(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT response FROM federation_txns_in WHERE origin = $1 AND txn_id = $2")
                .bind(origin)
                .bind(txn_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Records our answer to a processed transaction (the first record wins).
    pub async fn record_federation_txn(&self, origin: &str, txn_id: &str, response: &str) -> Result<()> {
        // Through the writer lock: on SQLite a write outside it could make a concurrent writer's
        // transaction fail with SQLITE_BUSY.
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO federation_txns_in (origin, txn_id, response, created_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (origin, txn_id) DO NOTHING",
        )
        .bind(origin)
        .bind(txn_id)
        .bind(response)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored keys of `server`.
    pub async fn server_keys(&self, server: &str) -> Result<Vec<ServerKeyRow>> {
        sqlx::query_as("SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = $1")
            .bind(server)
            .fetch_all(self.pool())
            .await
    }

    /// Stores a verified key document: its current keys (a key seen again keeps the longer
    /// validity it had, unless its public key changed), its old keys as expired, and the
    /// document itself unless we hold one valid for longer.
    pub async fn store_server_keys(&self, doc: &KeyDocument<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (id, key) in &doc.verify_keys {
            sqlx::query(
                "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
                 VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 public_key = excluded.public_key, expired_ts = NULL, valid_until_ts = CASE \
                 WHEN server_keys.public_key = excluded.public_key AND server_keys.valid_until_ts > excluded.valid_until_ts \
                 THEN server_keys.valid_until_ts ELSE excluded.valid_until_ts END",
            )
            .bind(doc.server)
            .bind(id)
            .bind(key)
            .bind(doc.keys_valid_until)
            .execute(&mut *tx.tx)
            .await?;
        }
        for (id, key, expired) in &doc.old_keys {
            sqlx::query(
                "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 expired_ts = excluded.expired_ts",
            )
            .bind(doc.server)
            .bind(id)
            .bind(key)
            .bind(expired)
            .bind(expired)
            .execute(&mut *tx.tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO server_key_responses (server_name, json, valid_until_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (server_name) DO UPDATE SET json = excluded.json, valid_until_ts = excluded.valid_until_ts \
             WHERE excluded.valid_until_ts >= server_key_responses.valid_until_ts",
        )
        .bind(doc.server)
        .bind(&doc.json)
        .bind(doc.valid_until)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last key document stored for `server`.
    pub async fn server_key_document(&self, server: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT json FROM server_key_responses WHERE server_name = $1")
            .bind(server)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.0))
    }
}
