//! SQL of application services: their users, the per-appservice outbox and transaction in
//! flight (migration 13), and the rooms they publish in the directory.

use super::{Db, WriteTx, now_ms};

/// A transaction written before its first attempt: `(txn_id, body, outbox ids as JSON,
/// device-list position)`.
pub type StoredTxn = (String, String, String, Option<i64>);

impl Db {
    /// Whether a user row exists, and which appservice (if any) registered it.
    pub async fn user_appservice(&self, user_id: &str) -> Result<Option<Option<String>>, sqlx::Error> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT appservice_id FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Creates a user owned by an appservice (no password); false if the id is taken.
    pub async fn create_appservice_user(
        &self,
        user_id: &str,
        localpart: &str,
        appservice_id: &str,
    ) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, localpart, password_hash, is_admin, displayname, created_ts, appservice_id) \
             VALUES ($1, $2, NULL, 0, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(localpart)
        .bind(now_ms())
        .bind(appservice_id)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Queues one item for an appservice in the caller's transaction.
    pub async fn insert_appservice_outbox(
        tx: &mut WriteTx,
        appservice_id: &str,
        kind: &str,
        payload: &str,
    ) -> Result<(), sqlx::Error> {
        let id = Db::next_stream_position(tx, "appservice_outbox").await?;
        sqlx::query(
            "INSERT INTO appservice_outbox (id, appservice_id, kind, payload, created_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(appservice_id)
        .bind(kind)
        .bind(payload)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// The transaction in flight for an appservice.
    pub async fn appservice_pending_txn(&self, appservice_id: &str) -> Result<Option<StoredTxn>, sqlx::Error> {
        sqlx::query_as("SELECT txn_id, body, outbox_ids, device_list_pos FROM appservice_txns WHERE appservice_id = $1")
            .bind(appservice_id)
            .fetch_optional(self.pool())
            .await
    }

    /// The oldest `limit` queued items of an appservice: `(id, kind, payload)`.
    pub async fn appservice_outbox(
        &self,
        appservice_id: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, kind, payload FROM appservice_outbox WHERE appservice_id = $1 ORDER BY id LIMIT {limit}"
        )))
        .bind(appservice_id)
        .fetch_all(self.pool())
        .await
    }

    /// Persists a packed transaction before its first attempt.
    pub async fn store_appservice_txn(
        &self,
        appservice_id: &str,
        txn_id: &str,
        body: &str,
        outbox_ids: &str,
        device_list_pos: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO appservice_txns (appservice_id, txn_id, body, outbox_ids, device_list_pos, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(appservice_id)
        .bind(txn_id)
        .bind(body)
        .bind(outbox_ids)
        .bind(device_list_pos)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await
    }

    /// Deletes a delivered transaction and the outbox rows it carried, in one transaction.
    pub async fn complete_appservice_txn(
        &self,
        appservice_id: &str,
        txn_id: &str,
        outbox_ids: &[i64],
        device_list_pos: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        if let Some(pos) = device_list_pos {
            set_device_list_pos(&mut tx, appservice_id, pos).await?;
        }
        for id in outbox_ids {
            sqlx::query("DELETE FROM appservice_outbox WHERE appservice_id = $1 AND id = $2")
                .bind(appservice_id)
                .bind(id)
                .execute(&mut *tx.tx)
                .await?;
        }
        sqlx::query("DELETE FROM appservice_txns WHERE appservice_id = $1 AND txn_id = $2")
            .bind(appservice_id)
            .bind(txn_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// MSC3202: an appservice's device-list position, started at the stream's current end the
    /// first time (an appservice is not sent the changes of before it was registered).
    pub async fn appservice_device_list_pos(&self, appservice_id: &str) -> Result<i64, sqlx::Error> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT device_list_pos FROM appservice_positions WHERE appservice_id = $1")
                .bind(appservice_id)
                .fetch_optional(self.pool())
                .await?;
        if let Some((pos,)) = row {
            return Ok(pos);
        }
        let (end,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(stream_id) FROM device_list_changes").fetch_one(self.pool()).await?;
        let mut tx = self.begin_write().await?;
        set_device_list_pos(&mut tx, appservice_id, end.unwrap_or(0)).await?;
        tx.commit().await?;
        Ok(end.unwrap_or(0))
    }

    /// Stores an appservice's device-list position outside a transaction to it (the changes
    /// since concerned none of its users).
    pub async fn set_appservice_device_list_pos(&self, appservice_id: &str, pos: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        set_device_list_pos(&mut tx, appservice_id, pos).await?;
        tx.commit().await
    }

    /// Users whose device list changed after `from`, with the position of the last change
    /// read (at most `limit` changes).
    pub async fn device_list_changes_after(&self, from: i64, limit: i64) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT stream_id, user_id FROM device_list_changes WHERE stream_id > $1 ORDER BY stream_id LIMIT {limit}",
        )))
        .bind(from)
        .fetch_all(self.pool())
        .await
    }

    /// Publishes (or withdraws) a room in an appservice's network directory.
    pub async fn set_appservice_room_listed(
        &self,
        appservice_id: &str,
        network_id: &str,
        room_id: &str,
        listed: bool,
    ) -> Result<(), sqlx::Error> {
        let sql = if listed {
            "INSERT INTO appservice_room_list (appservice_id, network_id, room_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM appservice_room_list WHERE appservice_id = $1 AND network_id = $2 AND room_id = $3"
        };
        sqlx::query(sql).bind(appservice_id).bind(network_id).bind(room_id).execute(self.pool()).await?;
        Ok(())
    }

    /// Rooms published by appservices: `(appservice_id, network_id, room_id)`, all or of one
    /// network.
    pub async fn appservice_listed_rooms(
        &self,
        network: Option<(&str, &str)>,
    ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        match network {
            Some((appservice_id, network_id)) => {
                sqlx::query_as(
                    "SELECT appservice_id, network_id, room_id FROM appservice_room_list \
                     WHERE appservice_id = $1 AND network_id = $2 ORDER BY room_id",
                )
                .bind(appservice_id)
                .bind(network_id)
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query_as("SELECT appservice_id, network_id, room_id FROM appservice_room_list ORDER BY room_id")
                    .fetch_all(self.pool())
                    .await
            }
        }
    }
}

async fn set_device_list_pos(tx: &mut WriteTx, appservice_id: &str, pos: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO appservice_positions (appservice_id, device_list_pos) VALUES ($1, $2) \
         ON CONFLICT (appservice_id) DO UPDATE SET device_list_pos = $2",
    )
    .bind(appservice_id)
    .bind(pos)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}
