//! Server-side key backup: versions (`e2e_room_keys_versions`) and sessions (`e2e_room_keys`).

use super::*;

impl Db {
    /// Creates a backup version and returns its number.
    pub async fn e2e_create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> SqlResult<i64> {
        let mut tx = self.begin_write().await?;
        let version = Db::next_stream_position(&mut tx, BACKUP_VERSION_COUNTER).await?;
        sqlx::query(
            "INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data, etag, deleted) \
             VALUES ($1, $2, $3, $4, 0, 0)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A live backup version (the latest when `version` is None).
    pub async fn e2e_backup_version(&self, user_id: &str, version: Option<i64>) -> SqlResult<Option<BackupVersion>> {
        let row: Option<(i64, String, String, i64)> = match version {
            Some(v) => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                     WHERE user_id = $1 AND version = $2 AND deleted = 0",
                )
                .bind(user_id)
                .bind(v)
                .fetch_optional(self.pool())
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                     WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                )
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?
            }
        };
        Ok(row.map(|(version, algorithm, auth_data, etag)| BackupVersion { version, algorithm, auth_data, etag }))
    }

    /// Replaces the auth data of a live version; false if there is none.
    pub async fn e2e_update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> SqlResult<bool> {
        let res = sqlx::query(
            "UPDATE e2e_room_keys_versions SET auth_data = $1 WHERE user_id = $2 AND version = $3 AND deleted = 0",
        )
        .bind(auth_data)
        .bind(user_id)
        .bind(version)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Deletes a version and its keys; false if it was not live.
    pub async fn e2e_delete_backup_version(&self, user_id: &str, version: i64) -> SqlResult<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE e2e_room_keys_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected() == 1)
    }

    /// The live version row inside a write transaction (locks nothing on SQLite, which is
    /// serialised; on PostgreSQL the row is locked so that etag updates serialise).
    pub async fn e2e_backup_version_tx(&self, tx: &mut WriteTx, user_id: &str) -> SqlResult<Option<BackupVersion>> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                 WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1"
            }
            Backend::Postgres => {
                "SELECT version, algorithm, auth_data, etag FROM e2e_room_keys_versions \
                 WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1 FOR UPDATE"
            }
        };
        let row: Option<(i64, String, String, i64)> =
            sqlx::query_as(sql).bind(user_id).fetch_optional(&mut *tx.tx).await?;
        Ok(row.map(|(version, algorithm, auth_data, etag)| BackupVersion { version, algorithm, auth_data, etag }))
    }

    /// One stored session of a version, inside a write transaction.
    pub async fn e2e_backup_session_tx(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        room_id: &str,
        session_id: &str,
    ) -> SqlResult<Option<BackupSession>> {
        let row: Option<BackupTuple> = sqlx::query_as(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_json \
             FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id)
        .bind(session_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(backup_from))
    }

    /// Stores (replaces) one session.
    pub async fn e2e_put_backup_session(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        s: &BackupSession,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, \
             is_verified, session_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
             first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
             is_verified = excluded.is_verified, session_json = excluded.session_json",
        )
        .bind(user_id)
        .bind(version)
        .bind(&s.room_id)
        .bind(&s.session_id)
        .bind(s.first_message_index)
        .bind(s.forwarded_count)
        .bind(s.is_verified as i64)
        .bind(&s.json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Deletes sessions of a version (all, one room's, or one session); returns how many.
    pub async fn e2e_delete_backup_sessions(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> SqlResult<u64> {
        let res = match (room_id, session_id) {
            (Some(r), Some(s)) => sqlx::query(
                "DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
            )
            .bind(user_id)
            .bind(version)
            .bind(r)
            .bind(s)
            .execute(&mut *tx.tx)
            .await?,
            (Some(r), None) => {
                sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3")
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .execute(&mut *tx.tx)
                    .await?
            }
            _ => {
                sqlx::query("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
                    .bind(user_id)
                    .bind(version)
                    .execute(&mut *tx.tx)
                    .await?
            }
        };
        Ok(res.rows_affected())
    }

    /// Sets a version's etag.
    pub async fn e2e_set_backup_etag(&self, tx: &mut WriteTx, user_id: &str, version: i64, etag: i64) -> SqlResult<()> {
        sqlx::query("UPDATE e2e_room_keys_versions SET etag = $1 WHERE user_id = $2 AND version = $3")
            .bind(etag)
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Number of sessions stored in a version.
    pub async fn e2e_backup_count(&self, user_id: &str, version: i64) -> SqlResult<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Sessions of a version, optionally of one room / one session.
    pub async fn e2e_backup_sessions(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> SqlResult<Vec<BackupSession>> {
        let cols = "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_json \
                    FROM e2e_room_keys WHERE user_id = $1 AND version = $2";
        let rows: Vec<BackupTuple> = match (room_id, session_id) {
            (Some(r), Some(s)) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} AND room_id = $3 AND session_id = $4")))
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .bind(s)
                    .fetch_all(self.pool())
                    .await?
            }
            (Some(r), None) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} AND room_id = $3 ORDER BY session_id")))
                    .bind(user_id)
                    .bind(version)
                    .bind(r)
                    .fetch_all(self.pool())
                    .await?
            }
            _ => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{cols} ORDER BY room_id, session_id")))
                    .bind(user_id)
                    .bind(version)
                    .fetch_all(self.pool())
                    .await?
            }
        };
        Ok(rows.into_iter().map(backup_from).collect())
    }
}

type BackupTuple = (String, String, i64, i64, i64, String);

fn backup_from(t: BackupTuple) -> BackupSession {
    BackupSession {
        room_id: t.0,
        session_id: t.1,
        first_message_index: t.2,
        forwarded_count: t.3,
        is_verified: t.4 != 0,
        json: t.5,
    }
}
