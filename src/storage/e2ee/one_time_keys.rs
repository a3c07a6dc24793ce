//! One-time keys (`e2e_one_time_keys`) and fallback keys (`e2e_fallback_keys`): uploaded,
//! counted and claimed.

use super::*;

impl Db {
    /// Unclaimed one-time keys of a device per algorithm.
    pub async fn e2e_otk_counts(&self, user_id: &str, device_id: &str) -> SqlResult<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Unclaimed one-time keys per algorithm and the unused fallback key algorithms of a device,
    /// in one statement.
    pub async fn e2e_key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> SqlResult<(BTreeMap<String, i64>, Vec<String>)> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT 0, algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 \
             GROUP BY algorithm \
             UNION ALL SELECT 1, algorithm, 0 FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(self.pool())
        .await?;
        let mut counts = BTreeMap::new();
        let mut fallback = Vec::new();
        for (kind, algorithm, n) in rows {
            if kind == 0 {
                counts.insert(algorithm, n);
            } else {
                fallback.push(algorithm);
            }
        }
        fallback.sort();
        Ok((counts, fallback))
    }

    /// The stored JSON of one one-time key, inside a write transaction.
    pub async fn e2e_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
    ) -> SqlResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT key_json FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// The number of the device's next one-time key upload (one more than any it holds).
    pub async fn e2e_next_otk_upload(&self, tx: &mut WriteTx, user_id: &str, device_id: &str) -> SqlResult<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(MAX(upload), 0) + 1 FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_one(&mut *tx.tx)
        .await?;
        Ok(n)
    }

    /// Adds a one-time key of upload number `upload` (the caller has checked that the id is new).
    #[allow(clippy::too_many_arguments)]
    pub async fn e2e_insert_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
        upload: i64,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json, upload) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .bind(upload)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Removes and returns one one-time key of the device: `(key_id, json)`.
    ///
    /// A single `DELETE ... RETURNING` on a row chosen by a sub-select, so a key is handed out
    /// by exactly one transaction. On PostgreSQL the sub-select skips rows that a concurrent
    /// claim has locked (`FOR UPDATE SKIP LOCKED`), so concurrent claims get different keys
    /// instead of one of them finding its chosen row gone; on SQLite write transactions are
    /// serialised anyway.
    pub async fn e2e_claim_otk(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<Option<(String, String)>> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = \
                 (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY upload, key_id LIMIT 1) RETURNING key_id, key_json"
            }
            Backend::Postgres => {
                "DELETE FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = \
                 (SELECT key_id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY upload, key_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING key_id, key_json"
            }
        };
        sqlx::query_as(sql).bind(user_id).bind(device_id).bind(algorithm).fetch_optional(&mut *tx.tx).await
    }

    /// The fallback key of a device for an algorithm: `(key_id, json, used)`.
    pub async fn e2e_fallback_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<Option<(String, String, bool)>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT key_id, key_json, used FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.map(|(k, j, u)| (k, j, u != 0)))
    }

    /// Replaces the fallback key of a device for an algorithm (unused again).
    pub async fn e2e_set_fallback_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        key_id: &str,
        json: &str,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET \
             key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Marks a device's fallback key as claimed.
    pub async fn e2e_mark_fallback_used(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> SqlResult<()> {
        sqlx::query("UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3")
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }
}
