//! Refresh tokens and login tokens (tables `refresh_tokens`, `login_tokens`, migration 16).
//! Access tokens themselves are in `accounts.rs`.
//!
//! A refresh token, once used, points at its successor (`next_hash`); it stays usable until the
//! successor or the access token issued with it is first used (a client may have lost the
//! answer to `/refresh` and retry with the old token), then it is deleted.

use super::{Db, WriteTx, now_ms};

impl Db {
    pub(crate) async fn insert_refresh_token(
        tx: &mut WriteTx,
        hash: &str,
        user_id: &str,
        device_id: &str,
        expires_ts: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, next_hash, expires_ts, created_ts) \
             VALUES ($1, $2, $3, NULL, $4, $5)",
        )
        .bind(hash)
        .bind(user_id)
        .bind(device_id)
        .bind(expires_ts)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Uses the refresh token `old` to store a new access token (`access`, expiring at
    /// `access_expires`) and a new refresh token (`next`), in one transaction. Returns the
    /// session's device, or `None` when `old` is unknown, expired or already superseded.
    ///
    /// Using `old` retires its own predecessor. Using `old` a second time, before its successor
    /// was used, replaces that successor (and the access token issued with it).
    pub async fn refresh_session(
        &self,
        old: &str,
        access: &str,
        access_expires: i64,
        next: &str,
        next_expires: Option<i64>,
    ) -> Result<Option<String>, sqlx::Error> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row: Option<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT user_id, device_id, next_hash, expires_ts FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(old)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let Some((user_id, device_id, successor, expires)) = row else { return Ok(None) };
        if expires.is_some_and(|e| e <= now) {
            sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1").bind(old).execute(&mut *tx.tx).await?;
            tx.commit().await?;
            return Ok(None);
        }
        if let Some(successor) = successor {
            // The answer that carried it was lost: it was never used, and goes.
            sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1")
                .bind(&successor)
                .execute(&mut *tx.tx)
                .await?;
        }
        for sql in [
            // The predecessor of `old`: its successor is now in use.
            "DELETE FROM refresh_tokens WHERE next_hash = $1",
            // Access tokens issued with `old` before (a lost answer) never worked for anyone.
            "DELETE FROM access_tokens WHERE retires_refresh = $1",
        ] {
            sqlx::query(sql).bind(old).execute(&mut *tx.tx).await?;
        }
        // Expired access tokens of the device are of no further use.
        sqlx::query(
            "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2 AND expires_ts IS NOT NULL \
             AND expires_ts <= $3",
        )
        .bind(&user_id)
        .bind(&device_id)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("UPDATE refresh_tokens SET next_hash = $1 WHERE token_hash = $2")
            .bind(next)
            .bind(old)
            .execute(&mut *tx.tx)
            .await?;
        Self::insert_refresh_token(&mut tx, next, &user_id, &device_id, next_expires).await?;
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, retires_refresh) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(access)
        .bind(&user_id)
        .bind(&device_id)
        .bind(now)
        .bind(access_expires)
        .bind(old)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(Some(device_id))
    }

    /// The first use of `access`, issued with refresh token `retired`: that refresh token goes.
    pub(crate) async fn retire_refresh_token(&self, access: &str, retired: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1").bind(retired).execute(&mut *tx.tx).await?;
        sqlx::query("UPDATE access_tokens SET retires_refresh = NULL WHERE token_hash = $1")
            .bind(access)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Stores a login token for `user_id`.
    pub async fn insert_login_token(&self, hash: &str, user_id: &str, expires_ts: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        // Expired tokens are cleared as new ones are made; they are few and short-lived.
        sqlx::query("DELETE FROM login_tokens WHERE expires_ts <= $1").bind(now_ms()).execute(&mut *tx.tx).await?;
        sqlx::query("INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(user_id)
            .bind(expires_ts)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// Takes a login token (each works once): its user if it exists and has not expired.
    pub async fn take_login_token(&self, hash: &str) -> Result<Option<String>, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts")
                .bind(hash)
                .fetch_optional(&mut *tx.tx)
                .await?;
        tx.commit().await?;
        Ok(row.filter(|(_, expires)| *expires > now_ms()).map(|(user, _)| user))
    }
}
