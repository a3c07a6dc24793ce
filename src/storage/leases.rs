//! Leases (`leases`): background work that must run in one process at a time is held by the
//! process whose row is not expired (see `crate::lease`, which renews and hands them over).

use super::Db;

impl Db {
    /// Takes or renews lease `name` for `owner` for `ttl_ms` from the database's clock (one clock
    /// for every process); whether `owner` holds it now.
    pub async fn take_lease(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool, sqlx::Error> {
        const NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
        let sql = format!(
            "INSERT INTO leases (name, owner, expires_ts) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_ts = excluded.expires_ts \
             WHERE leases.owner = excluded.owner OR leases.expires_ts < {NOW_MS} RETURNING owner"
        );
        let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(owner)
            .bind(ttl_ms)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Gives up every lease `owner` holds.
    pub async fn release_leases(&self, owner: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM leases WHERE owner = $1").bind(owner).execute(self.pool()).await?;
        Ok(())
    }
}
