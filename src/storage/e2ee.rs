//! Tables of end-to-end encryption (migration 6): device keys, one-time and fallback keys,
//! cross-signing keys and signatures, the device-list stream, remote device lists and key
//! backup. The rules (what may be uploaded, who sees what) live in `crate::e2ee`; this file is
//! SQL only, plus the two hooks that accounts storage calls inside its own transactions when a
//! device appears or disappears ([`Db::e2e_device_added`], [`Db::e2e_devices_removed`]).

use std::collections::BTreeMap;

use super::outbox::Outbox;
use super::{Backend, Db, WriteTx, now_ms};
use crate::ids::server_of;

type SqlResult<T> = Result<T, sqlx::Error>;

/// Name of the `stream_counters` row of the device-list stream.
pub const DEVICE_LISTS_STREAM: &str = "device_lists";

/// Name of the counter that numbers key-backup versions (unique across users, never reused).
/// The counter of key backup version numbers.
pub const BACKUP_VERSION_COUNTER: &str = "room_keys_version";

/// A change of a local device as the servers sharing a room with its user learn it, read in
/// the transaction of the change.
#[derive(Debug, Clone)]
pub struct DeviceListChange<'a> {
    /// The device's user.
    pub user_id: &'a str,
    /// The device.
    pub device_id: &'a str,
    /// The change's position on the device-list stream.
    pub stream_id: i64,
    /// The position of the user's previous device change, if any.
    pub prev_id: Option<i64>,
    /// Whether the device is gone.
    pub deleted: bool,
    /// The device's display name (a device that remains).
    pub display_name: Option<String>,
    /// The device's uploaded DeviceKeys JSON as stored (a device that remains).
    pub keys: Option<String>,
    /// The user's own later signatures of the device, as `(signer key id, signature)`.
    pub own_signatures: Vec<(String, String)>,
}

/// Builds the EDU (JSON text) that tells other servers of a [`DeviceListChange`]; the engine's
/// `crate::e2ee::device_lists::device_list_update_edu`, passed down by whoever changes devices
/// (storage stores the EDU, the protocol says what it holds).
pub type DeviceListEdu = fn(&DeviceListChange<'_>) -> String;

/// A local device with its keys, as `/keys/query` and federation `user/devices` serve it.
#[derive(Debug, Clone)]
pub struct DeviceWithKeys {
    /// Device id.
    pub device_id: String,
    /// Display name from the devices table.
    pub display_name: Option<String>,
    /// The uploaded DeviceKeys JSON, if any.
    pub keys: Option<String>,
}

/// A stored signature from `/keys/signatures/upload`.
#[derive(Debug, Clone)]
pub struct SignatureRow {
    /// Device id or cross-signing public key that was signed.
    pub target_key_id: String,
    /// Who signed.
    pub signer_user_id: String,
    /// `ed25519:<key>` of the signer.
    pub signer_key_id: String,
    /// The signature (unpadded base64).
    pub signature: String,
}

/// A key-backup version.
#[derive(Debug, Clone)]
pub struct BackupVersion {
    /// The version number.
    pub version: i64,
    /// `algorithm` as uploaded.
    pub algorithm: String,
    /// `auth_data` JSON as uploaded.
    pub auth_data: String,
    /// Changes whenever the keys of the version change.
    pub etag: i64,
}

/// One backed-up session.
#[derive(Debug, Clone)]
pub struct BackupSession {
    /// Room of the session.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// `first_message_index`.
    pub first_message_index: i64,
    /// `forwarded_count`.
    pub forwarded_count: i64,
    /// `is_verified`.
    pub is_verified: bool,
    /// The KeyBackupData JSON as uploaded.
    pub json: String,
}

impl Db {
    // ---- device keys -------------------------------------------------------------------

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

    // ---- one-time and fallback keys ----------------------------------------------------

    /// Unclaimed one-time keys of a device per algorithm.
    pub async fn e2e_otk_counts(&self, user_id: &str, device_id: &str) -> SqlResult<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Unclaimed one-time keys per algorithm and the unused fallback key algorithms of a device,
    /// in one statement.
    pub async fn e2e_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> SqlResult<(BTreeMap<String, i64>, Vec<String>)> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT 0, algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 \
             GROUP BY algorithm \
             UNION ALL SELECT 1, algorithm, 0 FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.pool())
        .await?;
        let mut counts = BTreeMap::new();
        let mut fallback = Vec::new();
        for (kind, algorithm, n) in rows {
            if kind == 0 {
                counts.insert(algorithm, n);
            } else {
                fallback.push(algorithm);
            }
        }
        fallback.sort();
        Ok((counts, fallback))
    }

    /// The stored JSON of one one-time key, inside a write transaction.
    pub async fn e2e_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
    ) -> SqlResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT key_json FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// The number of the device's next one-time key upload (one more than any it holds).
    pub async fn e2e_next_otk_upload(&self, tx: &mut WriteTx, user_id: &str, device_id: &str) -> SqlResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(MAX(upload), 0) + 1 FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_one(&mut *tx.tx)
        .await?;
        Ok(n)
    }

    /// Adds a one-time key of upload number `upload` (the caller has checked that the id is new).
    #[allow(clippy::too_many_arguments)]
    pub async fn e2e_insert_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
        upload: i64,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, upload) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .bind(upload)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Removes and returns one one-time key of the device: `(key_id, json)`.
    ///
    /// A single `DELETE ... RETURNING` on a row chosen by a sub-select, so a key is handed out
    /// by exactly one transaction. On PostgreSQL the sub-select skips rows that a concurrent
    /// claim has locked (`FOR UPDATE SKIP LOCKED`), so concurrent claims get different keys
    /// instead of one of them finding its chosen row gone; on SQLite write transactions are
    /// serialised anyway.
    pub async fn e2e_claim_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<Option<(String, String)>> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = \
                 (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY upload, key_id LIMIT 1) RETURNING key_id, key_json"
            }
            Backend::Postgres => {
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = \
                 (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY upload, key_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, key_json"
            }
        };
        sqlx::query_as(sql).bind(user_id).bind(device_id).bind(algorithm).fetch_optional(&mut *tx.tx).await
    }

    /// The fallback key of a device for an algorithm: `(key_id, json, used)`.
    pub async fn e2e_fallback_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<Option<(String, String, bool)>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT key_id, key_json, used FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(|(k, j, u)| (k, j, u != 0)))
    }

    /// Replaces the fallback key of a device for an algorithm (unused again).
    pub async fn e2e_set_fallback_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET \
             key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Marks a device's fallback key as claimed.
    pub async fn e2e_mark_fallback_used(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<()> {
        sqlx::query("UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3")
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    // ---- cross-signing -----------------------------------------------------------------

    /// A user's cross-signing key of `key_type` (`master`, `self_signing`, `user_signing`).
    pub async fn e2e_cross_signing_key(&self, user_id: &str, key_type: &str) -> SqlResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = $1 AND key_type = $2")
                .bind(user_id)
                .bind(key_type)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a cross-signing key.
    pub async fn e2e_set_cross_signing_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        key_type: &str,
        json: &str,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(key_type)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Stores (or replaces) one signature.
    pub async fn e2e_add_signature(&self, tx: &mut WriteTx, target_user_id: &str, row: &SignatureRow) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) \
             DO UPDATE SET signature = excluded.signature",
        )
        .bind(target_user_id)
        .bind(&row.target_key_id)
        .bind(&row.signer_user_id)
        .bind(&row.signer_key_id)
        .bind(&row.signature)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Signatures on any key of `target_user_id`.
    pub async fn e2e_signatures_on(&self, target_user_id: &str) -> SqlResult<Vec<SignatureRow>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures WHERE target_user_id = $1",
        )
        .bind(target_user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(target_key_id, signer_user_id, signer_key_id, signature)| SignatureRow {
                target_key_id,
                signer_user_id,
                signer_key_id,
                signature,
            })
            .collect())
    }

    // ---- the device-list stream --------------------------------------------------------

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

    // ---- remote device lists -----------------------------------------------------------

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

    // ---- key backup --------------------------------------------------------------------

    /// Creates a backup version and returns its number.
    pub async fn e2e_create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> SqlResult<i64> {
        let mut tx = self.begin_write().await?;
        let version = Db::next_stream_position(&mut tx, BACKUP_VERSION_COUNTER).await?;
        sqlx::query(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted) \
             VALUES ($1, $2, $3, $4, 0, 0)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A live backup version (the latest when `version` is None).
    pub async fn e2e_backup_version(&self, user_id: &str, version: Option<i64>) -> SqlResult<Option<BackupVersion>> {
        let row: Option<(i64, String, String, i64)> = match version {
            Some(v) => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                     WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user_id)
                .bind(v)
                .fetch_optional(self.pool())
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                     WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                )
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?
            }
        };
        Ok(row.map(|(version, algorithm, auth_data, etag)| BackupVersion { version, algorithm, auth_data, etag }))
    }

    /// Replaces the auth data of a live version; false if there is none.
    pub async fn e2e_update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> SqlResult<bool> {
        let res = sqlx::query(
            "UPDATE e2e_room_keys_versions SET auth_data = $1 WHERE user_id = $2 AND version = $3 AND deleted = 0",
        )
        .bind(auth_data)
        .bind(user_id)
        .bind(version)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Deletes a version and its keys; false if it was not live.
    pub async fn e2e_delete_backup_version(&self, user_id: &str, version: i64) -> SqlResult<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    /// The live version row inside a write transaction (locks nothing on SQLite, which is
    /// serialised; on PostgreSQL the row is locked so that etag updates serialise).
    pub async fn e2e_backup_version_tx(&self, tx: &mut WriteTx, user_id: &str) -> SqlResult<Option<BackupVersion>> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                 WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1"
            }
            Backend::Postgres => {
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                 WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1 FOR UPDATE"
            }
        };
        let row: Option<(i64, String, String, i64)> =
            sqlx::query_as(sql).bind(user_id).fetch_optional(&mut *tx.tx).await?;
        Ok(row.map(|(version, algorithm, auth_data, etag)| BackupVersion { version, algorithm, auth_data, etag }))
    }

    /// One stored session of a version, inside a write transaction.
    pub async fn e2e_backup_session_tx(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        room_id: &str,
        session_id: &str,
    ) -> SqlResult<Option<BackupSession>> {
        let row: Option<BackupTuple> = sqlx::query_as(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_json \
             FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id)
        .bind(session_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(backup_from))
    }

    /// Stores (replaces) one session.
    pub async fn e2e_put_backup_session(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        s: &BackupSession,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, \
             is_verified, session_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
             first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
             is_verified = excluded.is_verified, session_json = excluded.session_json",
        )
        .bind(user_id)
        .bind(version)
        .bind(&s.room_id)
        .bind(&s.session_id)
        .bind(s.first_message_index)
        .bind(s.forwarded_count)
        .bind(s.is_verified as i64)
        .bind(&s.json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Deletes sessions of a version (all, one room's, or one session); returns how many.
    pub async fn e2e_delete_backup_sessions(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> SqlResult<u64> {
        let res = match (room_id, session_id) {
            (Some(r), Some(s)) => sqlx::query(
                "DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
            )
            .bind(user_id)
            .bind(version)
            .bind(r)
            .bind(s)
            .execute(&mut *tx.tx)
            .await?,
            (Some(r), None) => {
                sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3")
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .execute(&mut *tx.tx)
                    .await?
            }
            _ => {
                sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
                    .bind(user_id)
                    .bind(version)
                    .execute(&mut *tx.tx)
                    .await?
            }
        };
        Ok(res.rows_affected())
    }

    /// Sets a version's etag.
    pub async fn e2e_set_backup_etag(&self, tx: &mut WriteTx, user_id: &str, version: i64, etag: i64) -> SqlResult<()> {
        sqlx::query("UPDATE e2e_room_keys_versions SET etag = $1 WHERE user_id = $2 AND version = $3")
            .bind(etag)
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Number of sessions stored in a version.
    pub async fn e2e_backup_count(&self, user_id: &str, version: i64) -> SqlResult<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Sessions of a version, optionally of one room / one session.
    pub async fn e2e_backup_sessions(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> SqlResult<Vec<BackupSession>> {
        let cols = "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_json \
                    FROM e2e_room_keys WHERE user_id = $1 AND version = $2";
        let rows: Vec<BackupTuple> = match (room_id, session_id) {
            (Some(r), Some(s)) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} AND room_id = $3 AND session_id = $4")))
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .bind(s)
                    .fetch_all(self.pool())
                    .await?
            }
            (Some(r), None) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} AND room_id = $3 ORDER BY session_id")))
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .fetch_all(self.pool())
                    .await?
            }
            _ => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} ORDER BY room_id, session_id")))
                    .bind(user_id)
                    .bind(version)
                    .fetch_all(self.pool())
                    .await?
            }
        };
        Ok(rows.into_iter().map(backup_from).collect())
    }
}

type BackupTuple = (String, String, i64, i64, i64, String);

fn backup_from(t: BackupTuple) -> BackupSession {
    BackupSession {
        room_id: t.0,
        session_id: t.1,
        first_message_index: t.2,
        forwarded_count: t.3,
        is_verified: t.4 != 0,
        json: t.5,
    }
}
