//! Tables of simplified sliding sync (migration 11): each connection's state per position, and
//! the per-room reads that build its room lists (bump stamps, encryption and room types).
//!
//! A connection `(user, device, conn_id)` keeps at most two positions: the one its client sent
//! last and the one answered to it. Positions are random, so one of a connection that was reset
//! (a request without `pos`) or expired never matches again.

use std::collections::HashMap;

use super::{Db, now_ms, placeholders};
use crate::error::Result;

/// Room lists are bound in chunks so that no statement exceeds the backends' bind limits.
const ROOM_CHUNK: usize = 500;

/// A connection: the user, the device and the client's `conn_id` (`""` when it sent none).
#[derive(Debug, Clone, Copy)]
pub struct ConnKey<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Their device.
    pub device_id: &'a str,
    /// The client's connection id.
    pub conn_id: &'a str,
}

/// What one room's current state says for list filters.
#[derive(Debug, Clone, Default)]
pub struct RoomFacts {
    /// `m.room.encryption` is set.
    pub encrypted: bool,
    /// The `type` of `m.room.create` (None: an ordinary room).
    pub room_type: Option<String>,
    /// Whether the room's current state is known here at all (not for an invite from another
    /// server before joining).
    pub known: bool,
}

impl Db {
    /// The state of a connection at `pos`, if the connection has that position; marks it used.
    pub async fn sliding_position(&self, key: ConnKey<'_>, pos: i64) -> Result<Option<String>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT state, last_used_ts FROM sliding_sync_positions \
             WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 AND pos = $4",
        )
        .bind(key.user_id)
        .bind(key.device_id)
        .bind(key.conn_id)
        .bind(pos)
        .fetch_optional(self.pool())
        .await?;
        let Some((state, used)) = row else { return Ok(None) };
        // Written at most once an hour, so that long-polls that follow one another cost no write.
        let now = now_ms();
        if now - used > 3_600_000 {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE sliding_sync_positions SET last_used_ts = $5 \
                 WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 AND pos = $4",
            )
            .bind(key.user_id)
            .bind(key.device_id)
            .bind(key.conn_id)
            .bind(pos)
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
            tx.commit().await?;
        }
        Ok(Some(state))
    }

    /// Stores a new position of a connection, keeping only `keep` (the position the client
    /// sent, None for a new connection) beside it. A new connection also drops the device's
    /// least recently used connections beyond `max_conns`.
    pub async fn sliding_store(
        &self,
        key: ConnKey<'_>,
        keep: Option<i64>,
        pos: i64,
        state: &str,
        max_conns: i64,
    ) -> Result<()> {
        let now = now_ms();
        // Every response waits for this commit; waiting for the disk too (an fsync, a few ms,
        // most of a woken long-poll's time) buys nothing: a position lost with a crash is
        // answered with `M_UNKNOWN_POS`, never with wrong data, and the client starts a new
        // connection. The database stays consistent either way.
        let mut tx = self.begin_unsynced_write().await?;
        sqlx::query(
            "DELETE FROM sliding_sync_positions WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 \
             AND pos <> $4",
        )
        .bind(key.user_id)
        .bind(key.device_id)
        .bind(key.conn_id)
        // No position is negative: a new connection keeps nothing.
        .bind(keep.unwrap_or(-1))
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query(
            "INSERT INTO sliding_sync_positions (user_id, device_id, conn_id, pos, state, last_used_ts) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.user_id)
        .bind(key.device_id)
        .bind(key.conn_id)
        .bind(pos)
        .bind(state)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        if keep.is_none() {
            let conns: Vec<(String, i64)> = sqlx::query_as(
                "SELECT conn_id, MAX(last_used_ts) AS used FROM sliding_sync_positions \
                 WHERE user_id = $1 AND device_id = $2 GROUP BY conn_id ORDER BY used DESC, conn_id",
            )
            .bind(key.user_id)
            .bind(key.device_id)
            .fetch_all(&mut *tx.tx)
            .await?;
            for (conn, _) in conns.iter().skip(max_conns.max(1) as usize) {
                sqlx::query(
                    "DELETE FROM sliding_sync_positions WHERE user_id = $1 AND device_id = $2 AND conn_id = $3",
                )
                .bind(key.user_id)
                .bind(key.device_id)
                .bind(conn)
                .execute(&mut *tx.tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets every position of a connection (a request without `pos` starts it afresh).
    pub async fn sliding_reset(&self, key: ConnKey<'_>) -> Result<()> {
        let any: Option<(i64,)> = sqlx::query_as(
            "SELECT pos FROM sliding_sync_positions WHERE user_id = $1 AND device_id = $2 AND conn_id = $3 LIMIT 1",
        )
        .bind(key.user_id)
        .bind(key.device_id)
        .bind(key.conn_id)
        .fetch_optional(self.pool())
        .await?;
        if any.is_none() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM sliding_sync_positions WHERE user_id = $1 AND device_id = $2 AND conn_id = $3")
            .bind(key.user_id)
            .bind(key.device_id)
            .bind(key.conn_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the positions unused since `before` (ms since the epoch); returns how many.
    pub async fn sliding_expire(&self, before: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("DELETE FROM sliding_sync_positions WHERE last_used_ts < $1")
            .bind(before)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected())
    }

    /// For each of `rooms`, the stream position of its latest timeline event of one of `types`
    /// at or before `upto` (rooms without one are absent).
    pub async fn latest_of_types(&self, rooms: &[&str], types: &[&str], upto: i64) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        for chunk in rooms.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, MAX(stream_ordering) FROM events WHERE stream_ordering <= $1 AND outlier = 0 \
                 AND rejected = 0 AND event_type IN ({}) AND room_id IN ({}) GROUP BY room_id",
                placeholders(2, types.len()),
                placeholders(2 + types.len(), chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, i64)>(sql).bind(upto);
            for t in types {
                q = q.bind(*t);
            }
            for r in chunk {
                q = q.bind(*r);
            }
            out.extend(q.fetch_all(self.pool()).await?);
        }
        Ok(out)
    }

    /// The stream position of a room's latest timeline event at or before `upto`.
    pub async fn latest_in_room(&self, room_id: &str, upto: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT stream_ordering FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND outlier = 0 \
             AND rejected = 0 ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(upto)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Encryption and room type of each of `rooms`, from their current state.
    pub async fn room_facts(&self, rooms: &[&str]) -> Result<HashMap<String, RoomFacts>> {
        let mut out: HashMap<String, RoomFacts> = HashMap::new();
        for chunk in rooms.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT cs.room_id, cs.event_type, e.json FROM current_state cs JOIN events e \
                 ON e.event_id = cs.event_id WHERE cs.state_key = '' \
                 AND cs.event_type IN ('m.room.create', 'm.room.encryption') AND cs.room_id IN ({})",
                placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, String)>(sql);
            for r in chunk {
                q = q.bind(*r);
            }
            for (room, kind, json) in q.fetch_all(self.pool()).await? {
                let facts = out.entry(room).or_default();
                facts.known = true;
                if kind == "m.room.encryption" {
                    facts.encrypted = true;
                } else {
                    let pdu: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                    facts.room_type = pdu["content"]["type"].as_str().map(str::to_owned);
                }
            }
        }
        Ok(out)
    }
}
