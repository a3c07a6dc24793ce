//! State groups (the state at an event, as a delta on a parent group) and current state.

use super::*;

impl Db {
    /// Writes a state group; `entries` are relative to `prev` (all entries if `prev` is None).
    pub async fn insert_state_group(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        prev: Option<i64>,
        chain_length: i64,
        entries: &StateIds,
    ) -> Result<i64> {
        let id = Db::next_stream_position(tx, "state_groups").await?;
        sqlx::query("INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(room_id)
            .bind(prev)
            .bind(chain_length)
            .execute(&mut *tx.tx)
            .await?;
        for ((t, k), e) in entries {
            sqlx::query(
                "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(t)
            .bind(k)
            .bind(e)
            .execute(&mut *tx.tx)
            .await?;
        }
        Ok(id)
    }

    /// Reads one state group row: `(prev_group, chain_length, entries)`.
    pub async fn state_group_row(&self, id: i64) -> Result<(Option<i64>, i64, StateIds)> {
        let (prev, len): (Option<i64>, i64) =
            sqlx::query_as("SELECT prev_group, chain_length FROM state_groups WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or_else(|| Error::internal(format!("state group {id} missing")))?;
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT event_type, state_key, event_id FROM state_group_entries WHERE group_id = $1")
                .bind(id)
                .fetch_all(self.pool())
                .await?;
        Ok((prev, len, rows.into_iter().map(|(t, k, e)| ((t, k), e)).collect()))
    }

    /// The delta chains below `ids`: `id -> (prev_group, chain_length)` for every group from
    /// each of them down to its snapshot, in one recursive statement (chains are at most 50
    /// long; reading them a link at a time was two round trips per link).
    pub async fn state_group_chains(&self, ids: &[i64]) -> Result<HashMap<i64, (Option<i64>, i64)>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "WITH RECURSIVE c(id, prev_group, chain_length) AS (SELECT id, prev_group, chain_length \
                 FROM state_groups WHERE id IN ({}) UNION SELECT g.id, g.prev_group, g.chain_length \
                 FROM state_groups g JOIN c ON g.id = c.prev_group) SELECT id, prev_group, chain_length FROM c",
                crate::storage::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (i64, Option<i64>, i64)>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (id, prev, len) in q.fetch_all(self.pool()).await? {
                out.insert(id, (prev, len));
            }
        }
        Ok(out)
    }

    /// The entries of several state groups (each relative to its previous group).
    pub async fn state_group_entries_of(&self, ids: &[i64]) -> Result<HashMap<i64, StateIds>> {
        let mut out: HashMap<i64, StateIds> = ids.iter().map(|id| (*id, StateIds::new())).collect();
        for chunk in ids.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT group_id, event_type, state_key, event_id FROM state_group_entries WHERE group_id IN ({})",
                crate::storage::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (i64, String, String, String)>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (g, t, k, e) in q.fetch_all(self.pool()).await? {
                out.entry(g).or_default().insert((t, k), e);
            }
        }
        Ok(out)
    }

    /// Removes one entry of the current state.
    pub async fn delete_current_state(&self, tx: &mut WriteTx, room_id: &str, t: &str, k: &str) -> Result<()> {
        sqlx::query("DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
            .bind(room_id)
            .bind(t)
            .bind(k)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Sets one entry of the current state.
    pub async fn set_current_state(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        t: &str,
        k: &str,
        event_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id",
        )
        .bind(room_id)
        .bind(t)
        .bind(k)
        .bind(event_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Current state of a room as ids.
    pub async fn current_state_ids(&self, room_id: &str) -> Result<StateIds> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
                .bind(room_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|(t, k, e)| ((t, k), e)).collect())
    }

    /// One current state event id.
    pub async fn current_state_event_id(&self, room_id: &str, t: &str, k: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT event_id FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
        )
        .bind(room_id)
        .bind(t)
        .bind(k)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }
}
