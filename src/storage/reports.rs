//! SQL of reports: rooms, events and users that local users reported to the server's
//! moderators (`POST .../report`). They are kept for the operator to read; nothing is sent.

use super::{Db, now_ms};
use crate::error::Result;

/// What a report is about.
#[derive(Debug, Clone, Copy)]
pub enum Reported<'a> {
    Room { room_id: &'a str },
    Event { room_id: &'a str, event_id: &'a str },
    User { user_id: &'a str },
}

impl Db {
    /// Stores a report under `report_id`.
    pub async fn insert_report(
        &self,
        report_id: &str,
        reporter: &str,
        what: Reported<'_>,
        reason: Option<&str>,
    ) -> Result<()> {
        let (kind, room_id, event_id, user_id) = match what {
            Reported::Room { room_id } => ("room", Some(room_id), None, None),
            Reported::Event { room_id, event_id } => ("event", Some(room_id), Some(event_id), None),
            Reported::User { user_id } => ("user", None, None, Some(user_id)),
        };
        sqlx::query(
            "INSERT INTO reports (report_id, kind, reporter, room_id, event_id, target_user_id, reason, received_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(report_id)
        .bind(kind)
        .bind(reporter)
        .bind(room_id)
        .bind(event_id)
        .bind(user_id)
        .bind(reason)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether this server knows `user_id`: a local account, or a member of a room it holds.
    pub async fn user_known(&self, user_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM users WHERE user_id = $1 UNION ALL SELECT 1 FROM room_memberships WHERE user_id = $1 LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }
}
