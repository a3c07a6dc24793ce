//! The device lists of remote users as this server caches them.

use super::*;

impl Db {
    /// The cached device list of a remote user: `Some((stream_id, stale))` if we track it.
    pub async fn e2e_remote_list_state(&self, user_id: &str) -> SqlResult<Option<(i64, bool)>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT stream_id, stale FROM e2e_remote_device_lists WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(s, st)| (s, st != 0)))
    }

    /// Sets the cached device-list position of a remote user.
    pub async fn e2e_set_remote_list_state(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        stream_id: i64,
        stale: bool,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_remote_device_lists (user_id, stream_id, stale, updated_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = excluded.stale, \
             updated_ts = excluded.updated_ts",
        )
        .bind(user_id)
        .bind(stream_id)
        .bind(stale as i64)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Upserts (or with `keys == None && deleted` removes) one cached remote device.
    pub async fn e2e_put_remote_device(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        keys: Option<&str>,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_remote_devices (user_id, device_id, display_name, key_json) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name, \
             key_json = COALESCE(excluded.key_json, e2e_remote_devices.key_json)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(display_name)
        .bind(keys)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Removes one cached remote device.
    pub async fn e2e_delete_remote_device(&self, tx: &mut WriteTx, user_id: &str, device_id: &str) -> SqlResult<()> {
        sqlx::query("DELETE FROM e2e_remote_devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Removes every cached device of a remote user (before a full resync).
    pub async fn e2e_clear_remote_devices(&self, tx: &mut WriteTx, user_id: &str) -> SqlResult<()> {
        sqlx::query("DELETE FROM e2e_remote_devices WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// The cached devices of a remote user: `(device_id, display_name, key_json)`.
    pub async fn e2e_remote_devices(&self, user_id: &str) -> SqlResult<Vec<DeviceWithKeys>> {
        let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT device_id, display_name, key_json FROM e2e_remote_devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(device_id, display_name, keys)| DeviceWithKeys { device_id, display_name, keys })
            .collect())
    }
}
