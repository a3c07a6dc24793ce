//! The device-list stream: changes of local devices, who shares a room with whom, and the
//! `m.device_list_update` EDUs queued for other servers in the transaction of a change.

use super::*;

impl Db {
    /// Records that local `user_id`'s device `device_id` (None: cross-signing keys) changed;
    /// returns the stream position. For a device, queues the EDU that `edu` builds from the
    /// change (read here, in the transaction of the change) for every remote server that
    /// shares a room with the user (`deleted` says whether the device is gone).
    pub async fn e2e_record_device_change(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: Option<&str>,
        deleted: bool,
        edu: DeviceListEdu,
    ) -> SqlResult<i64> {
        let prev: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = $1 AND device_id IS NOT NULL",
        )
        .bind(user_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let prev_id = prev.and_then(|p| p.0);
        let stream_id = self.e2e_insert_change(tx, user_id, device_id).await?;
        if let Some(device_id) = device_id {
            let servers = self.e2e_remote_servers_sharing(tx, user_id).await?;
            if !servers.is_empty() {
                let mut change = DeviceListChange {
                    user_id,
                    device_id,
                    stream_id,
                    prev_id,
                    deleted,
                    display_name: None,
                    keys: None,
                    own_signatures: Vec::new(),
                };
                if !deleted {
                    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                        "SELECT d.display_name, k.key_json FROM devices d LEFT JOIN e2e_device_keys k \
                         ON k.user_id = d.user_id AND k.device_id = d.device_id WHERE d.user_id = $1 AND d.device_id = $2",
                    )
                    .bind(user_id)
                    .bind(device_id)
                    .fetch_optional(&mut *tx.tx)
                    .await?;
                    if let Some((name, keys)) = row {
                        change.display_name = name;
                        if keys.is_some() {
                            change.own_signatures = sqlx::query_as(
                                "SELECT signer_key_id, signature FROM e2e_signatures WHERE target_user_id = $1 \
                                 AND target_key_id = $2 AND signer_user_id = $1",
                            )
                            .bind(user_id)
                            .bind(device_id)
                            .fetch_all(&mut *tx.tx)
                            .await?;
                        }
                        change.keys = keys;
                    }
                }
                let edu = edu(&change);
                for server in servers {
                    self.queue_outbox(tx, &server, Outbox::Edu(&edu)).await?;
                }
            }
        }
        Ok(stream_id)
    }

    /// Adds one row to the device-list stream (no EDU): for remote users' changes learnt over
    /// federation, and as the first step of [`Db::e2e_record_device_change`].
    pub async fn e2e_insert_change(&self, tx: &mut WriteTx, user_id: &str, device_id: Option<&str>) -> SqlResult<i64> {
        let stream_id = Db::next_stream_position(tx, DEVICE_LISTS_STREAM).await?;
        sqlx::query(
            "INSERT INTO device_list_changes (stream_id, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)",
        )
        .bind(stream_id)
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(stream_id)
    }

    /// Servers other than the user's own with a member joined to a room the user is joined to.
    pub async fn e2e_remote_servers_sharing(&self, tx: &mut WriteTx, user_id: &str) -> SqlResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON b.room_id = a.room_id \
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(&mut *tx.tx)
        .await?;
        let own = server_of(user_id);
        let mut servers: Vec<String> =
            rows.iter().map(|r| server_of(&r.0).to_owned()).filter(|s| s != own && !s.is_empty()).collect();
        servers.sort();
        servers.dedup();
        Ok(servers)
    }

    /// Hook for accounts storage: a device was created (login, registration) in `tx`.
    pub async fn e2e_device_added(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        edu: DeviceListEdu,
    ) -> SqlResult<()> {
        self.e2e_record_device_change(tx, user_id, Some(device_id), false, edu).await?;
        Ok(())
    }

    /// Hook for accounts storage: devices are being deleted in `tx` (logout, device deletion,
    /// deactivation): their keys go, and each deletion is a device-list change.
    pub async fn e2e_devices_removed(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_ids: &[String],
        edu: DeviceListEdu,
    ) -> SqlResult<()> {
        for device_id in device_ids {
            let existed: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .fetch_optional(&mut *tx.tx)
                .await?;
            for sql in [
                "DELETE FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2",
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2",
                "DELETE FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2",
                "DELETE FROM e2e_signatures WHERE target_user_id = $1 AND target_key_id = $2",
            ] {
                sqlx::query(sql).bind(user_id).bind(device_id).execute(&mut *tx.tx).await?;
            }
            if existed.is_some() {
                self.e2e_record_device_change(tx, user_id, Some(device_id), true, edu).await?;
            }
        }
        Ok(())
    }

    /// Users with a change on the device-list stream in `(from, to]`, restricted to `me` and
    /// the users who share a joined room with `me` now.
    pub async fn e2e_changed_sharing(&self, me: &str, from: i64, to: i64) -> SqlResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT c.user_id FROM device_list_changes c WHERE c.stream_id > $1 AND c.stream_id <= $2 \
             AND (c.user_id = $3 OR EXISTS (SELECT 1 FROM room_memberships a JOIN room_memberships b \
             ON b.room_id = a.room_id WHERE a.user_id = $3 AND a.membership = 'join' \
             AND b.user_id = c.user_id AND b.membership = 'join'))",
        )
        .bind(from)
        .bind(to)
        .bind(me)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Whether any membership changed in `(from, to]` in a room where `me` has a membership: if
    /// not, nobody began or stopped sharing a room with `me` then (the cheap question a woken
    /// `/sync` asks before the joins below).
    pub async fn e2e_memberships_moved(&self, me: &str, from: i64, to: i64) -> SqlResult<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM room_memberships b WHERE b.stream_ordering > $2 AND b.stream_ordering <= $3 \
             AND EXISTS (SELECT 1 FROM room_memberships a WHERE a.room_id = b.room_id AND a.user_id = $1) LIMIT 1",
        )
        .bind(me)
        .bind(from)
        .bind(to)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Users who began to share a joined room with `me` in the event-stream range `(from, to]`:
    /// they joined a room `me` is in, or `me` joined a room they are in.
    pub async fn e2e_newly_sharing(&self, me: &str, from: i64, to: i64) -> SqlResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON b.room_id = a.room_id \
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join' AND b.user_id <> $1 \
             AND ((b.stream_ordering > $2 AND b.stream_ordering <= $3) \
             OR (a.stream_ordering > $2 AND a.stream_ordering <= $3))",
        )
        .bind(me)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Users who may have stopped sharing a room with `me` in the event-stream range
    /// `(from, to]`: they left (or were banned from) a room `me` is or was in, or `me` left a
    /// room they are in. The caller removes those who still share another room.
    pub async fn e2e_maybe_left(&self, me: &str, from: i64, to: i64) -> SqlResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON b.room_id = a.room_id \
             WHERE a.user_id = $1 AND b.user_id <> $1 AND ( \
             (b.membership IN ('leave', 'ban') AND b.stream_ordering > $2 AND b.stream_ordering <= $3 \
              AND a.membership IN ('join', 'leave', 'ban')) \
             OR (a.membership IN ('leave', 'ban') AND a.stream_ordering > $2 AND a.stream_ordering <= $3 \
              AND b.membership = 'join'))",
        )
        .bind(me)
        .bind(from)
        .bind(to)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Every user who shares a joined room with `me` (including `me` when joined anywhere).
    pub async fn e2e_users_sharing(&self, me: &str) -> SqlResult<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON b.room_id = a.room_id \
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
        )
        .bind(me)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The latest device-list position of a user (for federation `user/devices`), 0 if none.
    pub async fn e2e_user_stream_id(&self, user_id: &str) -> SqlResult<i64> {
        let row: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT MAX(stream_id) FROM device_list_changes WHERE user_id = $1 AND device_id IS NOT NULL",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|r| r.0).unwrap_or(0))
    }
}
