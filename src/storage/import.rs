//! Writes of `myelin import-synapse` (src/import) into Myelin's own tables: accounts, tokens,
//! account data, end-to-end keys, media rows, pushers, aliases, receipts, filters, and the
//! progress table `synapse_import` (migration 21). Every insert keeps what is already there
//! (`ON CONFLICT DO NOTHING`), so a unit of work redone after an interruption writes the same
//! rows once. Room events and state go through the room engine (`rooms/import.rs`) and the
//! room storage it uses.

use super::{Db, WriteTx};
use crate::error::Result;

/// A user row as imported.
pub struct ImportUser<'a> {
    /// Full user id.
    pub user_id: &'a str,
    /// Its localpart.
    pub localpart: &'a str,
    /// Password hash as Synapse stored it (bcrypt), or None.
    pub password_hash: Option<&'a str>,
    /// Server administrator.
    pub is_admin: bool,
    /// Deactivated account.
    pub deactivated: bool,
    /// Profile display name.
    pub displayname: Option<&'a str>,
    /// Profile avatar.
    pub avatar_url: Option<&'a str>,
    /// Creation time (ms).
    pub created_ts: i64,
    /// The application service owning the user.
    pub appservice_id: Option<&'a str>,
}

/// One end-to-end key backup session as imported.
pub struct ImportBackupSession<'a> {
    /// Owner.
    pub user_id: &'a str,
    /// Backup version.
    pub version: i64,
    /// Room.
    pub room_id: &'a str,
    /// Megolm session id.
    pub session_id: &'a str,
    /// `first_message_index`.
    pub first_message_index: i64,
    /// `forwarded_count`.
    pub forwarded_count: i64,
    /// `is_verified`.
    pub is_verified: bool,
    /// The whole KeyBackupData object.
    pub json: &'a str,
}

/// One media row as imported (the file is already in the store under `sha256`).
pub struct ImportMedia<'a> {
    /// `mxc://origin/…`.
    pub origin: &'a str,
    /// Media id.
    pub media_id: &'a str,
    /// Uploader.
    pub creator: Option<&'a str>,
    /// Content type.
    pub content_type: Option<&'a str>,
    /// Upload name.
    pub filename: Option<&'a str>,
    /// Length in bytes.
    pub size: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: &'a str,
    /// Upload time (ms).
    pub created_ts: i64,
}

impl Db {
    /// Whether the unit of work `item` was committed by an earlier run.
    pub async fn import_item_done(&self, item: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM synapse_import WHERE item = $1")
            .bind(item)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Whether an import has started here (some unit of work was committed).
    pub async fn import_started(&self) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM synapse_import LIMIT 1").fetch_optional(self.pool()).await?;
        Ok(row.is_some())
    }

    /// Records `item` as done, in the transaction of its work.
    pub async fn import_mark_done(&self, tx: &mut WriteTx, item: &str) -> Result<()> {
        sqlx::query("INSERT INTO synapse_import (item, done_ts) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(item)
            .bind(super::now_ms())
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Whether the database holds no users and no rooms (an import starts only there).
    pub async fn import_target_is_empty(&self) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM users UNION ALL SELECT 1 FROM rooms UNION ALL SELECT 1 FROM media LIMIT 1")
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_none())
    }

    /// Inserts a user.
    pub async fn import_user(&self, tx: &mut WriteTx, u: &ImportUser<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (user_id, localpart, password_hash, is_admin, deactivated, displayname, avatar_url, \
             created_ts, appservice_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(u.user_id)
        .bind(u.localpart)
        .bind(u.password_hash)
        .bind(u.is_admin as i64)
        .bind(u.deactivated as i64)
        .bind(u.displayname)
        .bind(u.avatar_url)
        .bind(u.created_ts)
        .bind(u.appservice_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a device.
    #[allow(clippy::too_many_arguments)]
    pub async fn import_device(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        last_seen_ts: Option<i64>,
        last_seen_ip: Option<&str>,
        created_ts: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(display_name)
        .bind(last_seen_ts)
        .bind(last_seen_ip)
        .bind(created_ts)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts an access token by its hash.
    pub async fn import_access_token(
        &self,
        tx: &mut WriteTx,
        token_hash: &str,
        user_id: &str,
        device_id: &str,
        expires_ts: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(super::now_ms())
        .bind(expires_ts)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a refresh token by its hash.
    pub async fn import_refresh_token(
        &self,
        tx: &mut WriteTx,
        token_hash: &str,
        user_id: &str,
        device_id: &str,
        next_hash: Option<&str>,
        expires_ts: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, next_hash, expires_ts, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(next_hash)
        .bind(expires_ts)
        .bind(super::now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a sync filter under its Synapse id.
    pub async fn import_filter(&self, tx: &mut WriteTx, user_id: &str, filter_id: &str, json: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO sync_filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(filter_id)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a device's keys as uploaded.
    pub async fn import_device_keys(&self, tx: &mut WriteTx, user_id: &str, device_id: &str, json: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts an unclaimed one-time key.
    pub async fn import_one_time_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
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

    /// Inserts a fallback key.
    #[allow(clippy::too_many_arguments)]
    pub async fn import_fallback_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
        used: bool,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .bind(used as i64)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a signature uploaded after the key it signs.
    pub async fn import_signature(
        &self,
        tx: &mut WriteTx,
        target_user_id: &str,
        target_key_id: &str,
        signer_user_id: &str,
        signer_key_id: &str,
        signature: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(target_user_id)
        .bind(target_key_id)
        .bind(signer_user_id)
        .bind(signer_key_id)
        .bind(signature)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a key backup version under its Synapse number.
    #[allow(clippy::too_many_arguments)]
    pub async fn import_backup_version(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        algorithm: &str,
        auth_data: &str,
        etag: i64,
        deleted: bool,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .bind(etag)
        .bind(deleted as i64)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a key backup session.
    pub async fn import_backup_session(&self, tx: &mut WriteTx, s: &ImportBackupSession<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, \
             is_verified, session_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(s.user_id)
        .bind(s.version)
        .bind(s.room_id)
        .bind(s.session_id)
        .bind(s.first_message_index)
        .bind(s.forwarded_count)
        .bind(s.is_verified as i64)
        .bind(s.json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a media row whose file is already in the store.
    pub async fn import_media(&self, tx: &mut WriteTx, m: &ImportMedia<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO media (origin, media_id, creator, content_type, filename, size, sha256, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(m.origin)
        .bind(m.media_id)
        .bind(m.creator)
        .bind(m.content_type)
        .bind(m.filename)
        .bind(m.size)
        .bind(m.sha256)
        .bind(m.created_ts)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a pusher that continues from `last_stream` (no event up to it is pushed again).
    pub async fn import_pusher(&self, tx: &mut WriteTx, p: &super::push::PusherRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, \
             lang, data, device_id, created_ts, last_stream) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&p.user_id)
        .bind(&p.app_id)
        .bind(&p.pushkey)
        .bind(&p.kind)
        .bind(&p.app_display_name)
        .bind(&p.device_display_name)
        .bind(&p.profile_tag)
        .bind(&p.lang)
        .bind(&p.data)
        .bind(&p.device_id)
        .bind(p.created_ts)
        .bind(p.last_stream)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Inserts a receipt (the latest of its room, type, user and thread).
    #[allow(clippy::too_many_arguments)]
    pub async fn import_receipt(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        receipt_type: &str,
        user_id: &str,
        thread_id: &str,
        event_id: &str,
        data_json: &str,
        stream_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, data_json, stream_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(room_id)
        .bind(receipt_type)
        .bind(user_id)
        .bind(thread_id)
        .bind(event_id)
        .bind(data_json)
        .bind(stream_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Writes the rows a deferring transaction buffered so far (before statements that read
    /// or change them).
    pub async fn import_flush(&self, tx: &mut WriteTx) -> Result<()> {
        super::rooms::flush_pending(tx).await?;
        Ok(())
    }

    /// Whether an event is held (a receipt or alias naming an event that was not imported is
    /// skipped).
    pub async fn import_has_event(&self, event_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }
}
