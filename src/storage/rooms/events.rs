//! The `events` table and its DAG edges: inserting (directly or through the bulk writer of a
//! deferring transaction), reading by id, outliers, redactions and thread replies.

use super::*;

impl Db {
    /// Stores an event and its DAG edges (buffered until commit when the transaction defers rows).
    pub async fn insert_event(&self, tx: &mut WriteTx, row: NewEventRow<'_>) -> Result<()> {
        tx.events_written += 1;
        let pdu = row.pdu;
        let (relates_to, rel_type) = relation_of(pdu);
        let pending = PendingEvent {
            stream: row.stream,
            event_id: pdu.event_id.to_string(),
            room_id: pdu.room_id.to_string(),
            topo: pdu.fields.depth,
            event_type: pdu.fields.kind.to_string(),
            state_key: pdu.fields.state_key.clone(),
            sender: pdu.fields.sender.to_string(),
            ts: i64::from(pdu.fields.origin_server_ts.get()),
            json: pdu.json_string()?,
            unsigned: row.unsigned.map(|u| u.to_string()),
            rejected: pdu.rejected as i64,
            outlier: row.outlier as i64,
            state_group: row.state_group,
            relates_to,
            rel_type,
            redacted_by: None,
        };
        let edges: Vec<(String, String)> =
            pdu.fields.prev_events.iter().map(|p| (pdu.event_id.to_string(), p.to_string())).collect();
        if tx.pending.enabled {
            tx.pending.events.push(pending);
            tx.pending.edges.extend(edges);
            return Ok(());
        }
        write_events(tx, &[pending]).await?;
        write_edges(tx, &edges).await?;
        Ok(())
    }

    /// Loads one event.
    pub async fn get_event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"));
        let row: Option<EventTuple> = sqlx::query_as(sql).bind(event_id).fetch_optional(self.pool()).await?;
        row.map(stored_from).transpose()
    }

    /// Loads several events (missing ones are skipped).
    pub async fn get_events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(200) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({})",
                crate::storage::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, EventTuple>(sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(self.pool()).await? {
                out.push(stored_from(row)?);
            }
        }
        Ok(out)
    }

    /// The `(prev event, event)` edges whose prev event is neither in the timeline nor known to
    /// be rejected or soft-failed (missing, or only held as an outlier): the gaps behind those
    /// events.
    pub async fn missing_prevs(&self, edges: &[(String, String)]) -> Result<Vec<(String, String)>> {
        let mut prevs: Vec<&String> = edges.iter().map(|(p, _)| p).collect();
        prevs.sort_unstable();
        prevs.dedup();
        let mut held = std::collections::HashSet::new();
        for chunk in prevs.chunks(200) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT event_id FROM events WHERE event_id IN ({}) \
                 AND (outlier = 0 OR rejected = 1 OR state_group IS NOT NULL)",
                crate::storage::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_scalar::<_, String>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            held.extend(q.fetch_all(self.pool()).await?);
        }
        Ok(edges.iter().filter(|(p, _)| !held.contains(p)).cloned().collect())
    }

    /// Turns an outlier into a timeline event (received again over `/send`,
    /// `get_missing_events` or `/backfill`): its position, the state group after it and its
    /// server-computed unsigned data. An outlier stored as rejected that passes the checks
    /// when it arrives again loses that mark.
    pub async fn promote_outlier(
        &self,
        tx: &mut WriteTx,
        event_id: &str,
        stream: i64,
        state_group: i64,
        unsigned: Option<&Value>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE events SET outlier = 0, rejected = 0, stream_ordering = $1, state_group = $2, unsigned_json = $3 \
             WHERE event_id = $4 AND outlier = 1",
        )
        .bind(stream)
        .bind(state_group)
        .bind(unsigned.map(|u| u.to_string()))
        .bind(event_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Writes an accepted event into the timeline at `stream` with the state group after it:
    /// a new row, or, when we `held` it as an outlier, that row promoted in place (see
    /// [`Db::promote_outlier`]).
    pub async fn put_timeline_event(
        &self,
        tx: &mut WriteTx,
        pdu: &Pdu,
        stream: i64,
        state_group: i64,
        unsigned: Option<&Value>,
        held: bool,
    ) -> Result<()> {
        if held {
            return self.promote_outlier(tx, pdu.event_id.as_str(), stream, state_group, unsigned).await;
        }
        self.insert_event(tx, NewEventRow { pdu, stream, unsigned, outlier: false, state_group: Some(state_group) })
            .await
    }

    /// The accepted redactions of a room's timeline that name `target` (redactions that
    /// arrived before their target), through the `events_redaction_target` expression index
    /// (migration 18), whose expression this query repeats for each backend.
    pub async fn redactions_of(&self, room_id: &str, target: &str) -> Result<Vec<StoredEvent>> {
        let redacts = match self.backend() {
            Backend::Postgres => "COALESCE((json::jsonb) ->> 'redacts', (json::jsonb) -> 'content' ->> 'redacts')",
            Backend::Sqlite => "COALESCE(json_extract(json, '$.redacts'), json_extract(json, '$.content.redacts'))",
        };
        let found = self
            .query_events(
                &format!(
                    "WHERE event_type = 'm.room.redaction' AND {redacts} = $1 AND room_id = $2 \
                     AND outlier = 0 AND rejected = 0"
                ),
                &[BindValue::Str(target), BindValue::Str(room_id)],
            )
            .await?;
        // The index reads the JSON as stored; the parsed target is what counts.
        Ok(found.into_iter().filter(|e| e.pdu.redacts_target.as_ref().is_some_and(|t| t.as_str() == target)).collect())
    }

    /// Runs an event query with a WHERE/ORDER tail and binds written in storage (the typed
    /// readers of `timeline`).
    pub(in crate::storage) async fn query_events(
        &self,
        tail: &str,
        binds: &[BindValue<'_>],
    ) -> Result<Vec<StoredEvent>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events {tail}"));
        let q = bind_all(sqlx::query_as::<_, EventTuple>(sql), binds);
        q.fetch_all(self.pool()).await?.into_iter().map(stored_from).collect()
    }

    /// The newest `limit` accepted timeline events of each of `rooms` at or before `upto`,
    /// newest first: one statement per 50 rooms, each room's part the same index range read as
    /// a one-room timeline query (an initial sync asks this for every room).
    pub async fn newest_events_of(
        &self,
        rooms: &[&str],
        upto: i64,
        limit: i64,
    ) -> Result<HashMap<String, Vec<StoredEvent>>> {
        let mut out: HashMap<String, Vec<StoredEvent>> = HashMap::with_capacity(rooms.len());
        for chunk in rooms.chunks(50) {
            let sql = match self.backend {
                // PostgreSQL plans each part of a UNION ALL on its own: for 20 rooms, 2-4 ms of
                // planning against 0.1-0.4 ms for one index scan per row of a VALUES list.
                Backend::Postgres => format!(
                    "SELECT e.* FROM (VALUES {}) AS q(room_id) CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events \
                     WHERE room_id = q.room_id AND outlier = 0 AND rejected = 0 AND stream_ordering <= $1 \
                     ORDER BY stream_ordering DESC LIMIT {limit}) AS e",
                    values_clause_from(Backend::Postgres, 2, chunk.len(), 1)
                ),
                // SQLite has no LATERAL; its planning of the union is cheap.
                Backend::Sqlite => (0..chunk.len())
                    .map(|i| {
                        format!(
                            "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ${} AND outlier = 0 \
                             AND rejected = 0 AND stream_ordering <= $1 ORDER BY stream_ordering DESC LIMIT {limit}) AS t{i}",
                            i + 2
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" UNION ALL "),
            };
            let sql = sqlx::AssertSqlSafe(sql);
            let mut q = sqlx::query_as::<_, EventTuple>(sql).bind(upto);
            for room in chunk {
                q = q.bind(*room);
            }
            for row in q.fetch_all(self.pool()).await? {
                let ev = stored_from(row)?;
                out.entry(ev.pdu.room_id.to_string()).or_default().push(ev);
            }
        }
        for evs in out.values_mut() {
            evs.sort_by_key(|e| std::cmp::Reverse(e.stream));
        }
        Ok(out)
    }

    /// Every accepted thread reply (`rel_type` `m.thread`) of a room, newest first, without its
    /// JSON: `/threads` judges each one's visibility and needs only what that takes.
    pub async fn thread_replies(&self, room_id: &str) -> Result<Vec<ThreadReply>> {
        let rows: Vec<ThreadReplyRow> = sqlx::query_as(
            "SELECT relates_to, event_id, stream_ordering, state_group, sender, event_type, state_key FROM events \
             WHERE room_id = $1 AND rel_type = 'm.thread' AND relates_to IS NOT NULL AND rejected = 0 AND outlier = 0 \
             ORDER BY stream_ordering DESC",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(root, event_id, stream, state_group, sender, event_type, state_key)| ThreadReply {
                root,
                event_id,
                stream,
                state_group,
                sender,
                own_member_of: (event_type == "m.room.member").then_some(state_key).flatten(),
            })
            .collect())
    }

    /// Records that an event held as an outlier was soft-failed: it keeps being an outlier,
    /// now with the state group after it (and without a rejection mark).
    pub async fn mark_soft_failed(&self, tx: &mut WriteTx, event_id: &str, state_group: i64) -> Result<()> {
        sqlx::query("UPDATE events SET rejected = 0, state_group = $1 WHERE event_id = $2 AND outlier = 1")
            .bind(state_group)
            .bind(event_id)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Whether an accepted timeline event names `event_id` among its prev events (so that
    /// `event_id`, arriving late, is an ancestor and not a forward extremity).
    pub async fn has_timeline_child(&self, tx: &mut WriteTx, event_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM event_edges d JOIN events e ON e.event_id = d.event_id \
             WHERE d.prev_event_id = $1 AND e.outlier = 0 AND e.rejected = 0 LIMIT 1",
        )
        .bind(event_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        Ok(row.is_some())
    }

    /// Deletes a stored event row (our own join, stored earlier as an outlier, is replaced).
    pub async fn delete_event(&self, tx: &mut WriteTx, event_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM events WHERE event_id = $1").bind(event_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// Replaces an event's stored JSON with its redacted form.
    pub async fn redact_event_json(
        &self,
        tx: &mut WriteTx,
        event_id: &str,
        json: &str,
        redacted_by: &str,
    ) -> Result<()> {
        if let Some(ev) = tx.pending.events.iter_mut().find(|e| e.event_id == event_id) {
            ev.json = json.to_owned();
            ev.redacted_by = Some(redacted_by.to_owned());
            return Ok(());
        }
        sqlx::query("UPDATE events SET json = $1, redacted_by = $2 WHERE event_id = $3")
            .bind(json)
            .bind(redacted_by)
            .bind(event_id)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }
}
