//! SQL of room administration (`/_synapse/admin/v1/rooms/{roomId}/block`, room deletion and
//! purging, forward extremities): tables `blocked_rooms` and `room_deletions` (migration 20),
//! and the purge of every row a room left behind.

use super::{Db, now_ms};
use crate::error::Result;

/// One room deletion as `delete_status` reports it.
#[derive(Debug, Clone)]
pub struct RoomDeletion {
    /// The opaque id handed out by `DELETE /_synapse/admin/v2/rooms/{roomId}`.
    pub delete_id: String,
    /// The room being deleted.
    pub room_id: String,
    /// `shutting_down`, `purging`, `complete` or `failed`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The JSON of `shutdown_room`.
    pub result: String,
}

type DeletionRow = (String, String, String, Option<String>, String);

fn deletion((delete_id, room_id, status, error, result): DeletionRow) -> RoomDeletion {
    RoomDeletion { delete_id, room_id, status, error, result }
}

/// A forward extremity of a room, as the admin API lists it.
#[derive(Debug, Clone)]
pub struct Extremity {
    /// The event.
    pub event_id: String,
    /// Its state group (`None` for a rejected or outlier event).
    pub state_group: Option<i64>,
    /// Its depth.
    pub depth: i64,
    /// When it was sent (Myelin does not record the reception time separately).
    pub received_ts: i64,
}

/// Tables with a `room_id` column whose rows a purge deletes (the `events` table and those
/// keyed by event or state group go separately, first). Reports are kept for the moderators.
const ROOM_TABLES: &[&str] = &[
    "forward_extremities",
    "current_state",
    "room_memberships",
    "room_aliases",
    "receipts",
    "account_data",
    "event_push_actions",
    "typing",
    "appservice_room_list",
    "state_groups",
    "rooms",
];

impl Db {
    /// Who blocked the room, if it is blocked.
    pub async fn room_blocked_by(&self, room_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT user_id FROM blocked_rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Blocks (keeping the first blocker) or unblocks a room.
    pub async fn set_room_blocked(&self, room_id: &str, by: &str, block: bool) -> Result<()> {
        let q = if block {
            sqlx::query(
                "INSERT INTO blocked_rooms (room_id, user_id, blocked_ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(room_id)
            .bind(by)
            .bind(now_ms())
        } else {
            sqlx::query("DELETE FROM blocked_rooms WHERE room_id = $1").bind(room_id)
        };
        q.execute(self.pool()).await?;
        Ok(())
    }

    /// Records a new room deletion.
    pub async fn insert_room_deletion(&self, delete_id: &str, room_id: &str, status: &str, result: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO room_deletions (delete_id, room_id, status, result, created_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(delete_id)
        .bind(room_id)
        .bind(status)
        .bind(result)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Updates the status of a room deletion.
    pub async fn update_room_deletion(
        &self,
        delete_id: &str,
        status: &str,
        error: Option<&str>,
        result: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE room_deletions SET status = $1, error = $2, result = $3 WHERE delete_id = $4")
            .bind(status)
            .bind(error)
            .bind(result)
            .bind(delete_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// One room deletion.
    pub async fn room_deletion(&self, delete_id: &str) -> Result<Option<RoomDeletion>> {
        let row: Option<DeletionRow> =
            sqlx::query_as("SELECT delete_id, room_id, status, error, result FROM room_deletions WHERE delete_id = $1")
                .bind(delete_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(deletion))
    }

    /// The deletions of a room, oldest first.
    pub async fn room_deletions_of(&self, room_id: &str) -> Result<Vec<RoomDeletion>> {
        let rows: Vec<DeletionRow> = sqlx::query_as(
            "SELECT delete_id, room_id, status, error, result FROM room_deletions WHERE room_id = $1 \
             ORDER BY created_ts, delete_id",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(deletion).collect())
    }

    /// Marks deletions left running by a process that stopped as failed, so that the room can
    /// be deleted again (run at start-up and before a new deletion of the room).
    pub async fn fail_stale_room_deletions(&self, room_id: &str, older_than_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE room_deletions SET status = 'failed', error = 'interrupted' \
             WHERE room_id = $1 AND status IN ('shutting_down', 'purging') AND created_ts < $2",
        )
        .bind(room_id)
        .bind(now_ms() - older_than_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The forward extremities of a room.
    pub async fn admin_forward_extremities(&self, room_id: &str) -> Result<Vec<Extremity>> {
        let rows: Vec<(String, Option<i64>, i64, i64)> = sqlx::query_as(
            "SELECT e.event_id, e.state_group, e.topological_ordering AS depth, e.origin_server_ts AS received_ts \
             FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = $1 ORDER BY e.topological_ordering, e.event_id",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(event_id, state_group, depth, received_ts)| Extremity { event_id, state_group, depth, received_ts })
            .collect())
    }

    /// How many of the room's events wait in the federation outbox and are not yet packed into
    /// a transaction (a packed transaction holds the PDUs themselves; its outbox rows stay
    /// until it is delivered).
    pub async fn room_pdus_queued(&self, room_id: &str) -> Result<usize> {
        let queued: Vec<(i64,)> = sqlx::query_as(
            "SELECT o.id FROM federation_outbox o JOIN events e ON e.event_id = o.payload \
             WHERE o.kind = 'pdu' AND e.room_id = $1",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        if queued.is_empty() {
            return Ok(0);
        }
        // At most one transaction in flight per destination: a small table.
        let packed: Vec<(String,)> =
            sqlx::query_as("SELECT outbox_ids FROM federation_txns_out").fetch_all(self.pool()).await?;
        let packed: std::collections::HashSet<i64> =
            packed.iter().flat_map(|(ids,)| serde_json::from_str::<Vec<i64>>(ids).unwrap_or_default()).collect();
        Ok(queued.iter().filter(|(id,)| !packed.contains(id)).count())
    }

    /// Deletes every event, state group and per-room row of a room, in one transaction.
    pub async fn purge_room(&self, room_id: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let mut deleted = 0;
        // Rows keyed by event id or state group first, while `events` / `state_groups` still
        // say which ones belong to the room.
        for sql in [
            "DELETE FROM event_edges WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
            "DELETE FROM client_txns WHERE event_id IN (SELECT event_id FROM events WHERE room_id = $1)",
            "DELETE FROM state_group_entries WHERE group_id IN (SELECT id FROM state_groups WHERE room_id = $1)",
            "DELETE FROM events WHERE room_id = $1",
        ] {
            deleted += sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_id).execute(&mut *tx.tx).await?.rows_affected();
        }
        for table in ROOM_TABLES {
            let sql = format!("DELETE FROM {table} WHERE room_id = $1");
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_id).execute(&mut *tx.tx).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
