//! SQL of server notices: each user's notices room (table `server_notice_rooms`, migration 20).

use super::{Db, now_ms};
use crate::error::Result;

impl Db {
    /// The user's server-notices room, if one was made.
    pub async fn server_notice_room(&self, user_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT room_id FROM server_notice_rooms WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Records (or replaces) the user's server-notices room.
    pub async fn set_server_notice_room(&self, user_id: &str, room_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The event a notice sent under `(admin, txn_id)` became.
    pub async fn server_notice_txn(&self, admin: &str, txn_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT event_id FROM server_notice_txns WHERE user_id = $1 AND txn_id = $2")
                .bind(admin)
                .bind(txn_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Remembers the event a notice sent under `(admin, txn_id)` became.
    pub async fn set_server_notice_txn(&self, admin: &str, txn_id: &str, event_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO server_notice_txns (user_id, txn_id, event_id, created_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(admin)
        .bind(txn_id)
        .bind(event_id)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
