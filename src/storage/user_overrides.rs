//! SQL of per-user overrides set with the admin API (migration 22): the request rate limit
//! (table `ratelimit_overrides`, `/override_ratelimit`) and shadow bans (table
//! `shadow_banned_users`, `/shadow_ban`).

use super::Db;
use crate::error::Result;

/// A user's own request rate: `messages_per_second` with bursts of `burst_count`; both 0 means
/// the user is not limited at all (Synapse's meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOverride {
    /// Requests a second.
    pub messages_per_second: i64,
    /// Requests allowed at once.
    pub burst_count: i64,
}

impl Db {
    /// The override of `user_id`, if there is one.
    pub async fn ratelimit_override(&self, user_id: &str) -> Result<Option<RateOverride>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT messages_per_second, burst_count FROM ratelimit_overrides WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(messages_per_second, burst_count)| RateOverride { messages_per_second, burst_count }))
    }

    /// Sets (or replaces) the override of `user_id`.
    pub async fn set_ratelimit_override(&self, user_id: &str, rate: RateOverride) -> Result<()> {
        sqlx::query(
            "INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET messages_per_second = excluded.messages_per_second, \
             burst_count = excluded.burst_count",
        )
        .bind(user_id)
        .bind(rate.messages_per_second)
        .bind(rate.burst_count)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes the override of `user_id` (none is fine).
    pub async fn delete_ratelimit_override(&self, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM ratelimit_overrides WHERE user_id = $1").bind(user_id).execute(self.pool()).await?;
        Ok(())
    }
}

impl Db {
    /// Whether `user_id` is shadow-banned.
    pub async fn is_shadow_banned(&self, user_id: &str) -> Result<bool> {
        let row: Option<(String,)> = sqlx::query_as("SELECT user_id FROM shadow_banned_users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Shadow-bans `user_id` (`true`) or lifts the ban.
    pub async fn set_shadow_banned(&self, user_id: &str, banned: bool) -> Result<()> {
        let sql = if banned {
            "INSERT INTO shadow_banned_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING"
        } else {
            "DELETE FROM shadow_banned_users WHERE user_id = $1"
        };
        sqlx::query(sql).bind(user_id).execute(self.pool()).await?;
        Ok(())
    }
}
