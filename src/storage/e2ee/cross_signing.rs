//! Cross-signing keys (`e2e_cross_signing_keys`) and the signatures of keys (`e2e_signatures`).

use super::*;

impl Db {
    /// A user's cross-signing key of `key_type` (`master`, `self_signing`, `user_signing`).
    pub async fn e2e_cross_signing_key(&self, user_id: &str, key_type: &str) -> SqlResult<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT key_json FROM e2e_cross_signing_keys WHERE user_id = $1 AND key_type = $2")
                .bind(user_id)
                .bind(key_type)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores a cross-signing key.
    pub async fn e2e_set_cross_signing_key(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        key_type: &str,
        json: &str,
    ) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id)
        .bind(key_type)
        .bind(json)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Stores (or replaces) one signature.
    pub async fn e2e_add_signature(&self, tx: &mut WriteTx, target_user_id: &str, row: &SignatureRow) -> SqlResult<()> {
        sqlx::query(
            "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) \
             DO UPDATE SET signature = excluded.signature",
        )
        .bind(target_user_id)
        .bind(&row.target_key_id)
        .bind(&row.signer_user_id)
        .bind(&row.signer_key_id)
        .bind(&row.signature)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Signatures on any key of `target_user_id`.
    pub async fn e2e_signatures_on(&self, target_user_id: &str) -> SqlResult<Vec<SignatureRow>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT target_key_id, signer_user_id, signer_key_id, signature FROM e2e_signatures WHERE target_user_id = $1",
        )
        .bind(target_user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(target_key_id, signer_user_id, signer_key_id, signature)| SignatureRow {
                target_key_id,
                signer_user_id,
                signer_key_id,
                signature,
            })
            .collect())
    }
}
