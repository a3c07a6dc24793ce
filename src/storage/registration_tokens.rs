//! SQL of registration tokens made with the admin API (table `registration_tokens`, migration
//! 20). The tokens of `registration.tokens` in the configuration are not stored here.

use super::{Db, now_ms};
use crate::error::Result;

/// A registration token as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegistrationToken {
    /// The token.
    pub token: String,
    /// How many registrations it allows (`None`: unlimited).
    pub uses_allowed: Option<i64>,
    /// Registrations under way.
    pub pending: i64,
    /// Registrations completed.
    pub completed: i64,
    /// When it stops working, in ms (`None`: never).
    pub expiry_time: Option<i64>,
}

type Row = (String, Option<i64>, i64, i64, Option<i64>);

fn token((token, uses_allowed, pending, completed, expiry_time): Row) -> RegistrationToken {
    RegistrationToken { token, uses_allowed, pending, completed, expiry_time }
}

const COLUMNS: &str = "token, uses_allowed, pending, completed, expiry_time";
/// A token that may still be used at `$2`.
const VALID: &str =
    "(uses_allowed IS NULL OR pending + completed < uses_allowed) AND (expiry_time IS NULL OR expiry_time > $2)";

impl Db {
    /// Every token, or only the valid (`Some(true)`) or invalid (`Some(false)`) ones.
    pub async fn registration_tokens(&self, valid: Option<bool>) -> Result<Vec<RegistrationToken>> {
        let filter = match valid {
            None => "$1 IS NOT NULL".to_owned(),
            Some(true) => VALID.replace("$2", "$1"),
            Some(false) => format!("NOT ({})", VALID.replace("$2", "$1")),
        };
        let sql = format!("SELECT {COLUMNS} FROM registration_tokens WHERE {filter} ORDER BY token");
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(now_ms()).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(token).collect())
    }

    /// One token.
    pub async fn registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        let sql = format!("SELECT {COLUMNS} FROM registration_tokens WHERE token = $1");
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(token).fetch_optional(self.pool()).await?;
        Ok(row.map(self::token))
    }

    /// Adds a token; false if it exists.
    pub async fn insert_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time) \
             VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
        )
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_time)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Changes the limits of a token (`Some(None)` removes one); false if there is no such token.
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<Option<i64>>,
        expiry_time: Option<Option<i64>>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let mut found = false;
        for (column, value) in [("uses_allowed", uses_allowed), ("expiry_time", expiry_time)] {
            if let Some(value) = value {
                let sql = format!("UPDATE registration_tokens SET {column} = $1 WHERE token = $2");
                let res = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(value).bind(token).execute(&mut *tx.tx).await?;
                found |= res.rows_affected() == 1;
            }
        }
        tx.commit().await?;
        Ok(found || self.registration_token(token).await?.is_some())
    }

    /// Deletes a token; false if there was none.
    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let res =
            sqlx::query("DELETE FROM registration_tokens WHERE token = $1").bind(token).execute(self.pool()).await?;
        Ok(res.rows_affected() == 1)
    }

    /// Whether a token may be used now.
    pub async fn registration_token_usable(&self, token: &str) -> Result<bool> {
        let sql = format!("SELECT 1 FROM registration_tokens WHERE token = $1 AND {VALID}");
        let row: Option<(i64,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(token).bind(now_ms()).fetch_optional(self.pool()).await?;
        Ok(row.is_some())
    }

    /// Counts one use of a token if it may still be used (in one statement, so that concurrent
    /// registrations cannot exceed `uses_allowed`); false if it may not.
    pub async fn use_registration_token(&self, token: &str) -> Result<bool> {
        let sql = format!("UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1 AND {VALID}");
        let res = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(token).bind(now_ms()).execute(self.pool()).await?;
        Ok(res.rows_affected() == 1)
    }
}
