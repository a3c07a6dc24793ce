//! `e2e_device_keys`: the DeviceKeys each local device uploaded.

use super::*;

impl Db {
    /// The DeviceKeys JSON of a local device.
    pub async fn e2e_device_keys(&self, user_id: &str, device_id: &str) -> SqlResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a device's keys.
    pub async fn e2e_set_device_keys(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        json: &str,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Every existing device of a local user with its keys (devices without keys included).
    pub async fn e2e_devices_of(&self, user_id: &str) -> SqlResult<Vec<DeviceWithKeys>> {
        let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT d.device_id, d.display_name, k.key_json FROM devices d LEFT JOIN e2e_device_keys k \
             ON k.user_id = d.user_id AND k.device_id = d.device_id WHERE d.user_id = $1 ORDER BY d.device_id",
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
