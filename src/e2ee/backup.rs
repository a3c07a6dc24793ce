//! Server-side key backup (spec: "Server-side key backups"): versions with their auth data,
//! and per-room, per-session encrypted session keys with an `etag` and a `count`.
//!
//! Keys can only be written to the latest version (a client holding an older version number
//! gets 403 `M_WRONG_ROOM_KEYS_VERSION` with `current_version`). A stored session is replaced
//! only by a better one: verified beats unverified, then a lower `first_message_index`, then a
//! lower `forwarded_count`; ties keep the stored one. The etag changes whenever a write changes
//! the keys of the version.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{E2ee, parse_stored};
use crate::error::{Error, Result};
use crate::storage::e2ee::{BackupSession, BackupVersion};

/// 404 for an unknown or deleted version.
fn no_version(version: &str) -> Error {
    Error::not_found(format!("Unknown backup version {version}"))
}

/// Parses a version string; anything that is not one of ours is unknown.
fn version_number(version: &str) -> Result<i64> {
    version.parse::<i64>().map_err(|_| no_version(version))
}

/// `etag` and `count` of a version.
pub struct BackupState {
    /// Changes whenever the keys change.
    pub etag: String,
    /// Number of stored sessions.
    pub count: i64,
}

/// Whether `new` should replace `old` (spec order: is_verified, first_message_index,
/// forwarded_count; ties keep the stored key).
pub fn is_better(new: &BackupSession, old: &BackupSession) -> bool {
    if new.is_verified != old.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != old.first_message_index {
        return new.first_message_index < old.first_message_index;
    }
    new.forwarded_count < old.forwarded_count
}

/// Reads one KeyBackupData object.
fn session_from(room_id: &str, session_id: &str, data: &Value) -> Result<BackupSession> {
    let int = |name: &str| {
        data.get(name)
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::bad_json(format!("{room_id}/{session_id}: {name} must be an integer")))
    };
    let is_verified = data
        .get("is_verified")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_json(format!("{room_id}/{session_id}: is_verified must be a boolean")))?;
    if !data.get("session_data").is_some_and(Value::is_object) {
        return Err(Error::bad_json(format!("{room_id}/{session_id}: session_data must be an object")));
    }
    Ok(BackupSession {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: int("first_message_index")?,
        forwarded_count: int("forwarded_count")?,
        is_verified,
        json: data.to_string(),
    })
}

impl E2ee {
    /// `POST /room_keys/version`: creates a version; returns its number.
    pub async fn create_backup(&self, user_id: &str, body: &Value) -> Result<String> {
        let algorithm = body
            .get("algorithm")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::missing_param("algorithm is required"))?;
        let auth_data = body
            .get("auth_data")
            .filter(|v| v.is_object())
            .ok_or_else(|| Error::missing_param("auth_data is required and must be an object"))?;
        let version = self.db.e2e_create_backup_version(user_id, algorithm, &auth_data.to_string()).await?;
        Ok(version.to_string())
    }

    /// The version answer of `GET /room_keys/version[/{version}]`.
    pub async fn backup_info(&self, user_id: &str, version: Option<&str>) -> Result<Value> {
        let wanted = version.map(version_number).transpose()?;
        let Some(v) = self.db.e2e_backup_version(user_id, wanted).await? else {
            return Err(match version {
                Some(v) => no_version(v),
                None => Error::not_found("No current backup version"),
            });
        };
        let count = self.db.e2e_backup_count(user_id, v.version).await?;
        Ok(json!({
            "algorithm": v.algorithm,
            "auth_data": parse_stored(&v.auth_data)?,
            "count": count,
            "etag": v.etag.to_string(),
            "version": v.version.to_string(),
        }))
    }

    /// `PUT /room_keys/version/{version}`: replaces the auth data. The algorithm cannot change
    /// and a `version` in the body must match the path.
    pub async fn update_backup(&self, user_id: &str, version: &str, body: &Value) -> Result<()> {
        let n = version_number(version)?;
        let Some(existing) = self.db.e2e_backup_version(user_id, Some(n)).await? else {
            return Err(no_version(version));
        };
        if let Some(v) = body.get("version").and_then(Value::as_str)
            && v != version
        {
            return Err(Error::invalid_param("Version in body does not match the version in the path"));
        }
        if let Some(alg) = body.get("algorithm").and_then(Value::as_str)
            && alg != existing.algorithm
        {
            return Err(Error::invalid_param("Algorithm does not match the backup version's"));
        }
        let auth_data = body
            .get("auth_data")
            .filter(|v| v.is_object())
            .ok_or_else(|| Error::missing_param("auth_data is required and must be an object"))?;
        if !self.db.e2e_update_backup_version(user_id, n, &auth_data.to_string()).await? {
            return Err(no_version(version));
        }
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`: the version and its keys go; its number is never
    /// reused.
    pub async fn delete_backup(&self, user_id: &str, version: &str) -> Result<()> {
        let n = version_number(version)?;
        if !self.db.e2e_delete_backup_version(user_id, n).await? {
            return Err(no_version(version));
        }
        Ok(())
    }

    /// The latest live version inside `tx`, checked against the version the client named.
    async fn writable_version(
        &self,
        tx: &mut crate::storage::WriteTx,
        user_id: &str,
        version: &str,
    ) -> Result<BackupVersion> {
        let Some(current) = self.db.e2e_backup_version_tx(tx, user_id).await? else {
            return Err(no_version(version));
        };
        if current.version.to_string() != version {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                "M_WRONG_ROOM_KEYS_VERSION",
                "Wrong backup version: only the current version can be written",
            )
            .with("current_version", json!(current.version.to_string())));
        }
        Ok(current)
    }

    /// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: `rooms` is `{room_id: {session_id:
    /// KeyBackupData}}`. Stores each session unless the stored one is at least as good.
    pub async fn put_backup_keys(
        &self,
        user_id: &str,
        version: &str,
        rooms: &BTreeMap<String, Map<String, Value>>,
    ) -> Result<BackupState> {
        let mut sessions = Vec::new();
        for (room_id, room) in rooms {
            for (session_id, data) in room {
                sessions.push(session_from(room_id, session_id, data)?);
            }
        }
        let mut tx = self.db.begin_write().await?;
        let current = self.writable_version(&mut tx, user_id, version).await?;
        let mut changed = false;
        for s in &sessions {
            let old =
                self.db.e2e_backup_session_tx(&mut tx, user_id, current.version, &s.room_id, &s.session_id).await?;
            if old.as_ref().is_none_or(|old| is_better(s, old)) {
                self.db.e2e_put_backup_session(&mut tx, user_id, current.version, s).await?;
                changed = true;
            }
        }
        let etag = if changed { current.etag + 1 } else { current.etag };
        if changed {
            self.db.e2e_set_backup_etag(&mut tx, user_id, current.version, etag).await?;
        }
        tx.commit().await?;
        let count = self.db.e2e_backup_count(user_id, current.version).await?;
        Ok(BackupState { etag: etag.to_string(), count })
    }

    /// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`.
    pub async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<BackupState> {
        let n = version_number(version)?;
        let mut tx = self.db.begin_write().await?;
        let Some(v) = self.db.e2e_backup_version(user_id, Some(n)).await? else {
            return Err(no_version(version));
        };
        let deleted = self.db.e2e_delete_backup_sessions(&mut tx, user_id, n, room_id, session_id).await?;
        let etag = if deleted > 0 { v.etag + 1 } else { v.etag };
        if deleted > 0 {
            self.db.e2e_set_backup_etag(&mut tx, user_id, n, etag).await?;
        }
        tx.commit().await?;
        let count = self.db.e2e_backup_count(user_id, n).await?;
        Ok(BackupState { etag: etag.to_string(), count })
    }

    /// `GET /room_keys/keys[/{roomId}[/{sessionId}]]`: the stored sessions, grouped
    /// `{room_id: {session_id: KeyBackupData}}`.
    pub async fn get_backup_keys(
        &self,
        user_id: &str,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<BTreeMap<String, Map<String, Value>>> {
        let n = version_number(version)?;
        if self.db.e2e_backup_version(user_id, Some(n)).await?.is_none() {
            return Err(no_version(version));
        }
        let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for s in self.db.e2e_backup_sessions(user_id, n, room_id, session_id).await? {
            out.entry(s.room_id).or_default().insert(s.session_id, parse_stored(&s.json)?);
        }
        Ok(out)
    }
}
