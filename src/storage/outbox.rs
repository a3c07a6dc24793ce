//! The federation outbox: what this server owes each destination (`federation_outbox`, one row
//! per PDU or EDU, queued in the same transaction as whatever produced it) and the one
//! transaction in flight per destination (`federation_txns_out`, persisted before its first
//! attempt so that every retry repeats the same id and body).
//!
//! Every row of both tables is written and read here; the sender in
//! `crate::delivery::federation` decides what to pack and when.

use std::collections::HashMap;

use super::{Db, WriteTx, now_ms};
/// Outbox queries fail only as the database does.
type Result<T, E = sqlx::Error> = std::result::Result<T, E>;

/// What a destination is owed.
#[derive(Debug, Clone, Copy)]
pub enum Outbox<'a> {
    /// A PDU, by event id (read from `events` when the transaction is packed).
    Pdu(&'a str),
    /// An EDU, as its JSON (`{"edu_type": …, "content": …}`).
    Edu(&'a str),
}

impl Outbox<'_> {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Outbox::Pdu(event_id) => ("pdu", event_id),
            Outbox::Edu(json) => ("edu", json),
        }
    }
}

/// A queued row as the sender reads it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Queue position (also orders the rows of a destination).
    pub id: i64,
    /// `pdu` or `edu`.
    pub kind: String,
    /// Event id (PDU) or JSON (EDU).
    pub payload: String,
}

/// A transaction persisted before its first attempt.
#[derive(Debug, Clone)]
pub struct TxnOut {
    /// Transaction id, reused by every retry.
    pub txn_id: String,
    /// The exact body sent.
    pub body: String,
    /// The outbox rows it carries, deleted when it is delivered.
    pub outbox_ids: Vec<i64>,
}

/// `(id, destination, kind, payload, created_ts)`: a row buffered by a deferring transaction.
pub(super) type OutboxInsert = (i64, String, String, String, i64);

impl Db {
    /// Queues a PDU or EDU for `destination` in `tx` (so it is owed exactly when `tx` commits).
    pub async fn queue_outbox(&self, tx: &mut WriteTx, destination: &str, item: Outbox<'_>) -> Result<()> {
        let id = Db::next_stream_position(tx, "federation_outbox").await?;
        let (kind, payload) = item.parts();
        let row = (id, destination.to_owned(), kind.to_owned(), payload.to_owned(), now_ms());
        if tx.pending.enabled {
            tx.pending.outbox.push(row);
            return Ok(());
        }
        write_outbox(tx, &[row]).await?;
        Ok(())
    }

    /// Destinations with queued rows or a transaction in flight.
    pub async fn outbox_destinations(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT destination FROM federation_outbox UNION SELECT destination FROM federation_txns_out",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Drops everything queued for `destination` (a name that cannot be a server).
    pub async fn outbox_drop_destination(&self, destination: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM federation_outbox WHERE destination = $1")
            .bind(destination)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The PDUs queued for `destination`: `(row id, room id)`.
    pub async fn outbox_pdu_rooms(&self, destination: &str) -> Result<Vec<(i64, String)>> {
        sqlx::query_as(
            "SELECT o.id, e.room_id FROM federation_outbox o JOIN events e ON e.event_id = o.payload \
             WHERE o.destination = $1 AND o.kind = 'pdu'",
        )
        .bind(destination)
        .fetch_all(self.pool())
        .await
    }

    /// Deletes the PDUs queued for `destination` in each room of `keep` that are older than
    /// the row kept for that room.
    pub async fn outbox_keep_newest(&self, destination: &str, keep: &HashMap<String, i64>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for (room, newest) in keep {
            sqlx::query(
                "DELETE FROM federation_outbox WHERE destination = $1 AND kind = 'pdu' AND id < $2 \
                 AND payload IN (SELECT event_id FROM events WHERE room_id = $3)",
            )
            .bind(destination)
            .bind(newest)
            .bind(room)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The first `limit` rows queued for `destination`, in queue order.
    pub async fn outbox_head(&self, destination: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, kind, payload FROM federation_outbox WHERE destination = $1 ORDER BY id LIMIT {limit}",
        )))
        .bind(destination)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(id, kind, payload)| OutboxRow { id, kind, payload }).collect())
    }

    /// The transaction in flight for `destination`, if any.
    pub async fn txn_out_pending(&self, destination: &str) -> Result<Option<TxnOut>> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT txn_id, body, outbox_ids FROM federation_txns_out WHERE destination = $1")
                .bind(destination)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(txn_id, body, ids)| TxnOut {
            txn_id,
            body,
            outbox_ids: serde_json::from_str(&ids).unwrap_or_default(),
        }))
    }

    /// Persists a new transaction for `destination` before its first attempt.
    pub async fn txn_out_persist(&self, destination: &str, txn: &TxnOut) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO federation_txns_out (destination, txn_id, body, outbox_ids, created_ts) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(destination)
        .bind(&txn.txn_id)
        .bind(&txn.body)
        .bind(serde_json::to_string(&txn.outbox_ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a delivered transaction and its outbox rows, in one database transaction.
    pub async fn txn_out_complete(&self, destination: &str, txn: &TxnOut) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for id in &txn.outbox_ids {
            sqlx::query("DELETE FROM federation_outbox WHERE id = $1").bind(id).execute(&mut *tx.tx).await?;
        }
        sqlx::query("DELETE FROM federation_txns_out WHERE destination = $1 AND txn_id = $2")
            .bind(destination)
            .bind(&txn.txn_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Per destination with queued rows: how many, and the oldest one's `created_ts` (metrics).
    /// One grouped scan of the outbox, which is small unless a destination is down.
    pub async fn outbox_depths(&self) -> Result<Vec<(String, i64, i64)>> {
        sqlx::query_as("SELECT destination, COUNT(*), MIN(created_ts) FROM federation_outbox GROUP BY destination")
            .fetch_all(self.pool())
            .await
    }
}

/// Writes outbox rows, many per statement.
pub(super) async fn write_outbox(tx: &mut WriteTx, rows: &[OutboxInsert]) -> Result<()> {
    for chunk in rows.chunks(super::rooms::ROWS_PER_STATEMENT) {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO federation_outbox (id, destination, kind, payload, created_ts) VALUES {}",
            super::rooms::values_clause(tx.backend, chunk.len(), 5)
        ));
        let mut q = sqlx::query(sql);
        for (id, d, k, p, ts) in chunk {
            q = q.bind(*id).bind(d.as_str()).bind(k.as_str()).bind(p.as_str()).bind(*ts);
        }
        q.execute(&mut *tx.tx).await?;
    }
    Ok(())
}
