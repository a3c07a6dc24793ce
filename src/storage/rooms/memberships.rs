//! `room_memberships`: the current membership of each user in each room.

use super::*;

impl Db {
    /// Records a user's membership as of `stream`.
    pub async fn set_membership(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        user_id: &str,
        membership: &str,
        event_id: &str,
        stream: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
             event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(membership)
        .bind(event_id)
        .bind(stream)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// A user's current membership in a room: `(membership, event_id, stream)`.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT membership, event_id, stream_ordering FROM room_memberships WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A user's membership as reads see it: like [`Db::membership`], but `None` once the user
    /// has forgotten the room (a forgotten room reads as one never joined).
    pub async fn remembered_membership(&self, room_id: &str, user_id: &str) -> Result<Option<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT membership, event_id, stream_ordering FROM room_memberships \
             WHERE room_id = $1 AND user_id = $2 AND forgotten = 0",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Members of a room with a given membership.
    pub async fn members_with(&self, room_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = $2 ORDER BY user_id",
        )
        .bind(room_id)
        .bind(membership)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// All membership rows of a room: `(user_id, membership)`.
    pub async fn all_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, membership FROM room_memberships WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(self.pool())
            .await?)
    }

    /// Rooms where the user has the given membership.
    pub async fn rooms_with_membership(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT room_id FROM room_memberships WHERE user_id = $1 AND membership = $2 ORDER BY room_id",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Marks a left room as forgotten for the user.
    pub async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE room_memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
