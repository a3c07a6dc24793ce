//! SQL of pushers: where a user's push notifications go, and how far the sender got for each.

use super::{Db, now_ms};
use crate::error::Result;

/// One pusher as stored.
#[derive(Debug, Clone)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object as JSON text.
    pub data: String,
    pub device_id: Option<String>,
    pub created_ts: i64,
    pub last_stream: i64,
}

type Tuple = (String, String, String, String, String, String, Option<String>, String, String, Option<String>, i64, i64);

const COLUMNS: &str = "user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, \
     device_id, created_ts, last_stream";

fn row(t: Tuple) -> PusherRow {
    PusherRow {
        user_id: t.0,
        app_id: t.1,
        pushkey: t.2,
        kind: t.3,
        app_display_name: t.4,
        device_display_name: t.5,
        profile_tag: t.6,
        lang: t.7,
        data: t.8,
        device_id: t.9,
        created_ts: t.10,
        last_stream: t.11,
    }
}

impl Db {
    /// Creates or replaces the user's pusher `(app_id, pushkey)`. Unless `append`, the same
    /// `(app_id, pushkey)` of other users is removed (the spec's default: a device has one owner).
    /// A replaced pusher keeps its position in the stream; a new one starts at `from_stream`.
    pub async fn set_pusher(&self, p: &PusherRow, append: bool, from_stream: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&p.app_id)
                .bind(&p.pushkey)
                .bind(&p.user_id)
                .execute(&mut *tx.tx)
                .await?;
        }
        // A replaced pusher keeps `last_stream`; everything else is the new one's.
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO pushers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, \
             app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
             profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, \
             device_id = excluded.device_id, created_ts = excluded.created_ts"
        ));
        sqlx::query(sql)
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
            .bind(now_ms())
            .bind(from_stream)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the user's pusher `(app_id, pushkey)`, if there is one.
    pub async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes every pusher with this `(app_id, pushkey)` (the gateway rejected the key).
    pub async fn delete_pushkey(&self, app_id: &str, pushkey: &str) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2")
            .bind(app_id)
            .bind(pushkey)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The user's pushers.
    pub async fn pushers_of(&self, user_id: &str) -> Result<Vec<PusherRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY created_ts"));
        let rows: Vec<Tuple> = sqlx::query_as(sql).bind(user_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// Whether any user has a pusher.
    pub async fn any_pushers(&self) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM pushers LIMIT 1").fetch_optional(self.pool()).await?;
        Ok(row.is_some())
    }

    /// Every pusher that has not yet considered events up to `upto`.
    pub async fn pushers_behind(&self, upto: i64) -> Result<Vec<PusherRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM pushers WHERE last_stream < $1"));
        let rows: Vec<Tuple> = sqlx::query_as(sql).bind(upto).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// Records that the pusher considered every event up to `stream`.
    pub async fn advance_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, stream: i64) -> Result<()> {
        sqlx::query(
            "UPDATE pushers SET last_stream = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 \
             AND last_stream < $4",
        )
        .bind(user_id)
        .bind(app_id)
        .bind(pushkey)
        .bind(stream)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
