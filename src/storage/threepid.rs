//! SQL of third-party identifiers (email addresses): verification sessions and the addresses of
//! accounts (migration 19). The engine is `accounts::threepid`.

use super::{Db, now_ms};
use crate::error::Result;

/// A verification session as stored.
#[derive(Debug, Clone)]
pub struct ThreepidSession {
    /// Session id (`sid`).
    pub sid: String,
    /// The address being verified.
    pub address: String,
    /// `register`, `reset` or `add`.
    pub purpose: String,
    /// The highest `send_attempt` a mail was sent for.
    pub send_attempt: i64,
    /// When the link was followed, if it was.
    pub validated_ts: Option<i64>,
}

/// An address of an account.
#[derive(Debug, Clone)]
pub struct UserThreepid {
    /// `email`.
    pub medium: String,
    /// The address.
    pub address: String,
    /// When it was verified (ms).
    pub validated_ts: i64,
    /// When it was added to the account (ms).
    pub added_ts: i64,
}

type SessionTuple = (String, String, String, i64, Option<i64>);

fn session(t: SessionTuple) -> ThreepidSession {
    ThreepidSession { sid: t.0, address: t.1, purpose: t.2, send_attempt: t.3, validated_ts: t.4 }
}

impl Db {
    /// The session of a client secret for an address and purpose, if one is still live.
    pub async fn threepid_session_for(
        &self,
        client_secret: &str,
        address: &str,
        purpose: &str,
    ) -> Result<Option<ThreepidSession>> {
        let row: Option<SessionTuple> = sqlx::query_as(
            "SELECT sid, address, purpose, send_attempt, validated_ts FROM threepid_sessions \
             WHERE client_secret = $1 AND address = $2 AND purpose = $3 AND expires_ts > $4",
        )
        .bind(client_secret)
        .bind(address)
        .bind(purpose)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(session))
    }

    /// Starts a session, or restarts the (expired or resent) one of the same client secret,
    /// address and purpose with a new token: the previous token stops working.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_threepid_session(
        &self,
        sid: &str,
        client_secret: &str,
        address: &str,
        purpose: &str,
        send_attempt: i64,
        token_hash: &str,
        expires_ts: i64,
    ) -> Result<String> {
        let (sid,): (String,) = sqlx::query_as(
            "INSERT INTO threepid_sessions (sid, client_secret, address, purpose, send_attempt, token_hash, \
             created_ts, expires_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (client_secret, address, purpose) DO UPDATE SET send_attempt = excluded.send_attempt, \
             token_hash = excluded.token_hash, expires_ts = excluded.expires_ts, \
             validated_ts = CASE WHEN threepid_sessions.expires_ts > excluded.created_ts \
             THEN threepid_sessions.validated_ts ELSE NULL END \
             RETURNING sid",
        )
        .bind(sid)
        .bind(client_secret)
        .bind(address)
        .bind(purpose)
        .bind(send_attempt)
        .bind(token_hash)
        .bind(now_ms())
        .bind(expires_ts)
        .fetch_one(self.pool())
        .await?;
        Ok(sid)
    }

    /// Marks a session validated if the token is its current one and unexpired; the token is
    /// spent either way (single use). Returns whether it was valid.
    pub async fn validate_threepid_session(&self, sid: &str, client_secret: &str, token_hash: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE threepid_sessions SET validated_ts = $1, token_hash = NULL \
             WHERE sid = $2 AND client_secret = $3 AND token_hash = $4 AND expires_ts > $1",
        )
        .bind(now_ms())
        .bind(sid)
        .bind(client_secret)
        .bind(token_hash)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// A validated, unexpired session by id and client secret.
    pub async fn validated_threepid_session(&self, sid: &str, client_secret: &str) -> Result<Option<ThreepidSession>> {
        let row: Option<SessionTuple> = sqlx::query_as(
            "SELECT sid, address, purpose, send_attempt, validated_ts FROM threepid_sessions \
             WHERE sid = $1 AND client_secret = $2 AND validated_ts IS NOT NULL AND expires_ts > $3",
        )
        .bind(sid)
        .bind(client_secret)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(session))
    }

    /// Ends a session (once it served its purpose, so that it serves only once); returns
    /// whether it existed, so that of two concurrent uses only one goes on.
    pub async fn delete_threepid_session(&self, sid: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM threepid_sessions WHERE sid = $1").bind(sid).execute(self.pool()).await?;
        Ok(res.rows_affected() == 1)
    }

    /// Deletes sessions that expired a day ago or more.
    pub async fn prune_threepid_sessions(&self) -> Result<u64> {
        let res = sqlx::query("DELETE FROM threepid_sessions WHERE expires_ts < $1")
            .bind(now_ms() - 24 * 3600 * 1000)
            .execute(self.pool())
            .await?;
        Ok(res.rows_affected())
    }

    /// The account an address belongs to.
    pub async fn threepid_owner(&self, medium: &str, address: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT user_id FROM user_threepids WHERE medium = $1 AND address = $2")
                .bind(medium)
                .bind(address)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Adds an address to an account; false if it belongs to an account already.
    pub async fn add_user_threepid(
        &self,
        user_id: &str,
        medium: &str,
        address: &str,
        validated_ts: i64,
    ) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO user_threepids (medium, address, user_id, validated_ts, added_ts) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(medium)
        .bind(address)
        .bind(user_id)
        .bind(validated_ts)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Removes an address from an account; false if the account did not have it.
    pub async fn delete_user_threepid(&self, user_id: &str, medium: &str, address: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM user_threepids WHERE user_id = $1 AND medium = $2 AND address = $3")
            .bind(user_id)
            .bind(medium)
            .bind(address)
            .execute(self.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// The addresses of an account, oldest first.
    pub async fn user_threepids(&self, user_id: &str) -> Result<Vec<UserThreepid>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT medium, address, validated_ts, added_ts FROM user_threepids WHERE user_id = $1 \
             ORDER BY added_ts, address",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(medium, address, validated_ts, added_ts)| UserThreepid { medium, address, validated_ts, added_ts })
            .collect())
    }
}
