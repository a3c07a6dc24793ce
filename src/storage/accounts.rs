//! Tables of accounts: users, devices, access tokens and User-Interactive Auth sessions.

use super::e2ee::DeviceListEdu;
use super::{Db, bus, now_ms};

/// How long a resolved access token is remembered (see [`Db::find_token`]).
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolved tokens: hash → (when read, what it resolved to), and a generation that moves on
/// every invalidation, so that a read begun before one is not remembered after it.
#[derive(Default)]
pub struct TokenCache {
    entries: std::collections::HashMap<String, (std::time::Instant, TokenOwner)>,
    generation: u64,
}

/// Whose an access token is.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    /// The user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// Whether the user is a server administrator.
    pub is_admin: bool,
    /// When a refreshable token expires (ms); `None` for tokens that never do.
    pub expires_ts: Option<i64>,
    /// The account is locked: its tokens serve only to log out.
    pub locked: bool,
    /// The account is suspended: it may read but not act in rooms.
    pub suspended: bool,
}

/// A new access token to store for a device, with its refresh token if it is refreshable.
pub struct NewToken<'a> {
    /// SHA-256 of the access token.
    pub hash: &'a str,
    /// When it expires (ms), if refreshable.
    pub expires_ts: Option<i64>,
    /// SHA-256 of the refresh token and when that expires.
    pub refresh: Option<(&'a str, Option<i64>)>,
}

/// A stored user row.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Full user id.
    pub user_id: String,
    /// argon2id PHC string, if the user has a password.
    pub password_hash: Option<String>,
    /// Server administrator.
    pub is_admin: bool,
    /// Deactivated accounts cannot log in.
    pub deactivated: bool,
    /// Profile display name.
    pub displayname: Option<String>,
    /// Profile avatar.
    pub avatar_url: Option<String>,
    /// Locked by an administrator: cannot log in, tokens refused.
    pub locked: bool,
}

/// A stored device row.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Human-readable name.
    pub display_name: Option<String>,
    /// Last time a request used this device.
    pub last_seen_ts: Option<i64>,
    /// Address of that request.
    pub last_seen_ip: Option<String>,
}

type UserTuple = (String, Option<String>, i64, i64, Option<String>, Option<String>, i64);

/// `device_id, display_name, last_seen_ts, last_seen_ip` as selected from `devices`.
type DeviceTuple = (String, Option<String>, Option<i64>, Option<String>);

fn user_from(t: UserTuple) -> UserRow {
    UserRow {
        user_id: t.0,
        password_hash: t.1,
        is_admin: t.2 != 0,
        deactivated: t.3 != 0,
        displayname: t.4,
        avatar_url: t.5,
        locked: t.6 != 0,
    }
}

impl Db {
    /// Creates a user with a display name (registration and the admin API give the localpart
    /// unless told otherwise); returns false if the id is taken.
    pub async fn create_user(
        &self,
        user_id: &str,
        localpart: &str,
        password_hash: Option<&str>,
        is_admin: bool,
        displayname: &str,
    ) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, localpart, password_hash, is_admin, displayname, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(password_hash)
        .bind(is_admin as i64)
        .bind(displayname)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Looks a user up by full id.
    pub async fn get_user(&self, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
        let row: Option<UserTuple> = sqlx::query_as(
            "SELECT user_id, password_hash, is_admin, deactivated, displayname, avatar_url, locked FROM users \
             WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// Replaces a user's password hash.
    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(hash)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks a user deactivated and removes its password, devices, tokens and pushers in one
    /// transaction.
    pub async fn deactivate_user(&self, user_id: &str, edu: DeviceListEdu) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx.tx)
            .await?;
        let devices: Vec<(String,)> = sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&mut *tx.tx)
            .await?;
        let devices: Vec<String> = devices.into_iter().map(|d| d.0).collect();
        self.e2e_devices_removed(&mut tx, user_id, &devices, edu).await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        sqlx::query("DELETE FROM devices WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        // A deactivated account is pushed nothing more.
        sqlx::query("DELETE FROM pushers WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        // Its email addresses are free for other accounts (Synapse removes them too).
        sqlx::query("DELETE FROM user_threepids WHERE user_id = $1").bind(user_id).execute(&mut *tx.tx).await?;
        tx.commit().await?;
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Updates display name and avatar in the users table.
    pub async fn set_profile_field(
        &self,
        user_id: &str,
        field: ProfileField,
        value: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let sql = match field {
            ProfileField::DisplayName => "UPDATE users SET displayname = $1 WHERE user_id = $2",
            ProfileField::AvatarUrl => "UPDATE users SET avatar_url = $1 WHERE user_id = $2",
        };
        sqlx::query(sql).bind(value).bind(user_id).execute(self.pool()).await?;
        Ok(())
    }

    /// Creates the device if missing (refreshing its display name if given) and stores a new
    /// token for it, replacing the device's previous tokens: logging in again with the same
    /// device id invalidates the old session.
    pub async fn create_session(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
        token: NewToken<'_>,
        ip: Option<&str>,
        edu: DeviceListEdu,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let existed: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&mut *tx.tx)
            .await?;
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, last_seen_ip, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $4) ON CONFLICT (user_id, device_id) DO UPDATE SET \
             display_name = COALESCE(excluded.display_name, devices.display_name), \
             last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(display_name)
        .bind(now)
        .bind(ip)
        .execute(&mut *tx.tx)
        .await?;
        if existed.is_none() {
            // A new device is a device-list change (end-to-end encryption), in this transaction.
            self.e2e_device_added(&mut tx, user_id, device_id, edu).await?;
        }
        for sql in [
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
            "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2",
        ] {
            sqlx::query(sql).bind(user_id).bind(device_id).execute(&mut *tx.tx).await?;
        }
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.hash)
        .bind(user_id)
        .bind(device_id)
        .bind(now)
        .bind(token.expires_ts)
        .execute(&mut *tx.tx)
        .await?;
        if let Some((refresh_hash, refresh_expires)) = token.refresh {
            Self::insert_refresh_token(&mut tx, refresh_hash, user_id, device_id, refresh_expires).await?;
        }
        tx.commit().await?;
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Resolves a token hash to its owner, if the account is live (expiry is the caller's to check).
    ///
    /// Every request asks this, and a woken long-poll is followed by the next one at once, so
    /// answers are remembered for [`TOKEN_CACHE_TTL`]. A process forgets a user's entries when
    /// it deletes their tokens (logout, device deletion, deactivation, new login on the device)
    /// and tells the other processes on the database to do the same before it answers.
    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenOwner>, sqlx::Error> {
        let now = std::time::Instant::now();
        let generation = {
            let cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, hit)) = cache.entries.get(token_hash)
                && now.duration_since(*at) < TOKEN_CACHE_TTL
            {
                return Ok(Some(hit.clone()));
            }
            cache.generation
        };
        let found = self.find_token_uncached(token_hash).await?;
        if let Some(hit) = &found {
            let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            // A logout (here or signalled by another process) while the read ran may have
            // deleted the token: answer this request, but do not remember the answer.
            if cache.generation == generation {
                if cache.entries.len() >= 1024 && cache.entries.len().is_power_of_two() {
                    cache.entries.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_CACHE_TTL);
                }
                cache.entries.insert(token_hash.to_owned(), (now, hit.clone()));
            }
        }
        Ok(found)
    }

    /// Forgets the remembered tokens of a user (their tokens were deleted or changed), here and,
    /// before returning, in the other processes sharing the database.
    pub(crate) async fn forget_tokens_of(&self, user_id: &str) {
        self.forget_cached_tokens(Some(user_id));
        self.bus().publish_now(self, vec![bus::Signal::Tokens { u: user_id.to_owned() }]).await;
    }

    /// Forgets remembered tokens in this process only: a user's, or all (`None`).
    pub fn forget_cached_tokens(&self, user_id: Option<&str>) {
        let mut cache = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        match user_id {
            Some(user_id) => cache.entries.retain(|_, (_, owner)| owner.user_id != user_id),
            None => cache.entries.clear(),
        }
    }

    async fn find_token_uncached(&self, token_hash: &str) -> Result<Option<TokenOwner>, sqlx::Error> {
        // user, device, is_admin, expires_ts, retires_refresh, locked, suspended
        type Row = (String, String, i64, Option<i64>, Option<String>, i64, i64);
        let row: Option<Row> = sqlx::query_as(
            "SELECT t.user_id, t.device_id, u.is_admin, t.expires_ts, t.retires_refresh, u.locked, u.suspended \
             FROM access_tokens t \
             JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1 AND u.deactivated = 0",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        let Some((user_id, device_id, is_admin, expires_ts, retires, locked, suspended)) = row else {
            return Ok(None);
        };
        if let Some(retired) = retires {
            // The first use of an access token from /refresh: the refresh token it came from
            // has served its purpose (see migration 16).
            self.retire_refresh_token(token_hash, &retired).await?;
        }
        Ok(Some(TokenOwner {
            user_id,
            device_id,
            is_admin: is_admin != 0,
            expires_ts,
            locked: locked != 0,
            suspended: suspended != 0,
        }))
    }

    /// Deletes devices (and their tokens and pushers) of a user.
    pub async fn delete_devices(
        &self,
        user_id: &str,
        device_ids: &[String],
        edu: DeviceListEdu,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        // Their end-to-end keys go with them, and each deletion is a device-list change.
        self.e2e_devices_removed(&mut tx, user_id, device_ids, edu).await?;
        for device_id in device_ids {
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx.tx)
                .await?;
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx.tx)
                .await?;
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx.tx)
                .await?;
            // The device's pushers stop with it (spec: pushers of a logged-out device go).
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Lists a user's devices.
    pub async fn list_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>, sqlx::Error> {
        let rows: Vec<DeviceTuple> = sqlx::query_as(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(device_id, display_name, last_seen_ts, last_seen_ip)| DeviceRow {
                device_id,
                display_name,
                last_seen_ts,
                last_seen_ip,
            })
            .collect())
    }

    /// One device of a user.
    pub async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<DeviceRow>, sqlx::Error> {
        Ok(self.list_devices(user_id).await?.into_iter().find(|d| d.device_id == device_id))
    }

    /// Renames a device; false if it does not exist.
    pub async fn rename_device(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
        edu: DeviceListEdu,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
            .bind(name)
            .bind(user_id)
            .bind(device_id)
            .execute(&mut *tx.tx)
            .await?;
        if res.rows_affected() == 1 {
            // The display name is part of what /keys/query serves: a device-list change.
            self.e2e_record_device_change(&mut tx, user_id, Some(device_id), false, edu).await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records last-seen information for a device.
    pub async fn touch_device(&self, user_id: &str, device_id: &str, ip: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE devices SET last_seen_ts = $1, last_seen_ip = $2 WHERE user_id = $3 AND device_id = $4")
            .bind(now_ms())
            .bind(ip)
            .bind(user_id)
            .bind(device_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Stores or updates a UIA session.
    pub async fn put_uia_session(
        &self,
        session_id: &str,
        user_id: Option<&str>,
        request_hash: &str,
        completed: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO uia_sessions (session_id, user_id, request_hash, completed, created_ts) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (session_id) DO UPDATE SET completed = excluded.completed",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(request_hash)
        .bind(completed)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Loads a UIA session: `(user_id, request_hash, completed_json, created_ts)`.
    pub async fn get_uia_session(
        &self,
        session_id: &str,
    ) -> Result<Option<(Option<String>, String, String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT user_id, request_hash, completed, created_ts FROM uia_sessions WHERE session_id = $1")
            .bind(session_id)
            .fetch_optional(self.pool())
            .await
    }

    /// Removes a finished UIA session.
    pub async fn delete_uia_session(&self, session_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1").bind(session_id).execute(self.pool()).await?;
        Ok(())
    }
}

/// Profile fields kept on the users table.
#[derive(Debug, Clone, Copy)]
pub enum ProfileField {
    /// `displayname`
    DisplayName,
    /// `avatar_url`
    AvatarUrl,
}

impl Db {
    /// Stores an OpenID token (by hash) for `user_id` until `expires_ts`, dropping expired ones.
    pub async fn insert_openid_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ts: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM openid_tokens WHERE expires_ts < $1")
            .bind(super::now_ms())
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user_id)
            .bind(expires_ts)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// The user an unexpired OpenID token (by hash) belongs to.
    pub async fn openid_user(&self, token_hash: &str) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
                .bind(token_hash)
                .bind(super::now_ms())
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }
}
