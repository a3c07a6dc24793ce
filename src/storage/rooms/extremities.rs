//! Forward extremities: the events of a room that no stored event cites yet.

use super::*;

impl Db {
    /// Forward extremities of a room.
    pub async fn extremities(&self, tx: &mut WriteTx, room_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(self.extremities_of(tx, &[room_id]).await?.remove(room_id).unwrap_or_default())
    }

    /// Forward extremities of several rooms, each room's newest first.
    pub async fn extremities_of(
        &self,
        tx: &mut WriteTx,
        room_ids: &[&str],
    ) -> Result<HashMap<String, Vec<(String, i64)>>> {
        let mut out: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        for chunk in room_ids.chunks(200) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT f.room_id, f.event_id, e.topological_ordering FROM forward_extremities f \
                 JOIN events e ON e.event_id = f.event_id WHERE f.room_id IN ({}) \
                 ORDER BY e.topological_ordering DESC, e.stream_ordering DESC",
                crate::storage::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, i64)>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (room, event, depth) in q.fetch_all(&mut *tx.tx).await? {
                out.entry(room).or_default().push((event, depth));
            }
        }
        Ok(out)
    }

    /// Replaces `removed` extremities with `added` (buffered until commit when deferring).
    pub async fn update_extremities(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        removed: &[String],
        added: &str,
    ) -> Result<()> {
        if tx.pending.enabled {
            let (_, current) = tx
                .pending
                .extremities
                .entry(room_id.to_owned())
                .or_insert_with(|| (removed.to_vec(), removed.to_vec()));
            current.retain(|e| !removed.contains(e));
            current.push(added.to_owned());
            return Ok(());
        }
        for r in removed {
            sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                .bind(room_id)
                .bind(r)
                .execute(&mut *tx.tx)
                .await?;
        }
        sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(room_id)
            .bind(added)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Removes forward extremities (not deferred: for writers that do not defer rows).
    pub async fn remove_extremities(&self, tx: &mut WriteTx, room_id: &str, removed: &[String]) -> Result<()> {
        for r in removed {
            sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                .bind(room_id)
                .bind(r)
                .execute(&mut *tx.tx)
                .await?;
        }
        Ok(())
    }

    /// Removes every forward extremity of a room (before a join replaces our view of it).
    pub async fn clear_extremities(&self, tx: &mut WriteTx, room_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1").bind(room_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// Forward extremities of a room, read outside a write transaction.
    pub async fn pool_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(self.pool_extremities_with_depth(room_id).await?.into_iter().map(|e| e.0).collect())
    }

    /// Forward extremities with their depths, newest first.
    pub async fn pool_extremities_with_depth(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT f.event_id, e.topological_ordering FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = $1 ORDER BY e.topological_ordering DESC, e.stream_ordering DESC",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?)
    }
}
