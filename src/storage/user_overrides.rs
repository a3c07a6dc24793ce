//! SQL of per-user overrides set with the admin API (migration 22): the request rate limit
//! (table `ratelimit_overrides`, `/override_ratelimit`) and shadow bans (table
//! `shadow_banned_users`, `/shadow_ban`).

use std::collections::HashMap;

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

/// Answers of [`Db::is_shadow_banned`] as last read: asked on every send, set by an admin now
/// and then. Entries are dropped on a change here and, through the bus, in the other
/// processes; `generation` keeps a read that raced a change from storing its stale answer.
#[derive(Debug, Default)]
pub struct ShadowBanCache {
    entries: HashMap<String, bool>,
    generation: u64,
}

/// Most users whose answer is kept (then the cache starts again).
const MAX_CACHED_BANS: usize = 100_000;

impl Db {
    /// Whether `user_id` is shadow-banned, from the cache when it was read before.
    pub async fn is_shadow_banned(&self, user_id: &str) -> Result<bool> {
        let generation = {
            let cache = self.shadow_bans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(banned) = cache.entries.get(user_id) {
                return Ok(*banned);
            }
            cache.generation
        };
        let banned = self.is_shadow_banned_uncached(user_id).await?;
        let mut cache = self.shadow_bans.lock().unwrap_or_else(|e| e.into_inner());
        if cache.generation == generation {
            if cache.entries.len() >= MAX_CACHED_BANS {
                cache.entries.clear();
            }
            cache.entries.insert(user_id.to_owned(), banned);
        }
        Ok(banned)
    }

    /// Forgets cached shadow-ban answers in this process only: a user's, or all (`None`).
    pub fn forget_cached_shadow_bans(&self, user_id: Option<&str>) {
        let mut cache = self.shadow_bans.lock().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        match user_id {
            Some(user_id) => {
                cache.entries.remove(user_id);
            }
            None => cache.entries.clear(),
        }
    }
    async fn is_shadow_banned_uncached(&self, user_id: &str) -> Result<bool> {
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
        // Takes effect at the user's next send, in every process, before the admin hears back.
        self.forget_cached_shadow_bans(Some(user_id));
        self.bus().publish_now(self, vec![super::bus::Signal::ShadowBan { u: user_id.to_owned() }]).await;
        Ok(())
    }
}
