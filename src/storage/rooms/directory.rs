//! Room aliases and the public room directory.

use super::*;

impl Db {
    /// Alias → room.
    pub async fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Adds an alias; false if taken.
    pub async fn insert_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let added = self.insert_alias_in(&mut tx, alias, room_id, creator).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Adds an alias in `tx` (a new room's alias is created with it); false if taken.
    pub async fn insert_alias_in(&self, tx: &mut WriteTx, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(alias)
        .bind(room_id)
        .bind(creator)
        .execute(&mut *tx.tx)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Points an alias at another room (a room upgrade moves the old room's aliases).
    pub async fn move_alias(&self, alias: &str, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE room_aliases SET room_id = $1 WHERE alias = $2")
            .bind(room_id)
            .bind(alias)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(self.pool()).await?;
        Ok(())
    }

    /// Local aliases of a room.
    pub async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Publishes a room in the directory in `tx` (a room created public).
    pub async fn publish_room_in(&self, tx: &mut WriteTx, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_public = 1 WHERE room_id = $1").bind(room_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// Publishes or unpublishes a room in the directory.
    pub async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_public = $1 WHERE room_id = $2")
            .bind(public as i64)
            .bind(room_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether a room is published.
    pub async fn is_room_public(&self, room_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT is_public FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some_and(|r| r.0 != 0))
    }

    /// Published rooms.
    pub async fn public_rooms(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
