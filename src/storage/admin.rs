//! SQL of the server administration API (`/_synapse/admin/...`) and of `/health`: listing and
//! changing accounts, listing rooms with their statistics, reading and deleting event reports.

use super::Db;
use crate::error::Result;

impl Db {
    /// A trivial query: whether the database answers at all (`/health`).
    pub async fn ping(&self) -> Result<()> {
        let _: (i64,) = sqlx::query_as("SELECT CAST(1 AS BIGINT)").fetch_one(self.pool()).await?;
        Ok(())
    }
}
