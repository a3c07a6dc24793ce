//! Tables of rooms: events, DAG edges, forward extremities, state groups, current state,
//! memberships, client transaction ids, aliases and the federation outbox.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{Backend, Db, WriteTx, now_ms};
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;

/// State as a map from `(event type, state key)` to event id.
pub type StateIds = BTreeMap<(String, String), String>;

/// A stored event with its positions.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The PDU.
    pub pdu: Pdu,
    /// Global stream position.
    pub stream: i64,
    /// Depth, the first half of the topological position.
    pub topo: i64,
    /// Server-computed unsigned data.
    pub unsigned: Option<Value>,
    /// Whether the event is an outlier.
    pub outlier: bool,
    /// State group after the event.
    pub state_group: Option<i64>,
    /// The redaction applied to this event, if any.
    pub redacted_by: Option<String>,
}

/// `(relates_to, event_id, stream_ordering, state_group, sender, event_type, state_key)`.
type ThreadReplyRow = (String, String, i64, Option<i64>, String, String, Option<String>);

/// One thread reply as [`Db::thread_replies`] lists it.
#[derive(Debug, Clone)]
pub struct ThreadReply {
    /// The thread root it relates to.
    pub root: String,
    /// Its event id.
    pub event_id: String,
    /// Its stream position.
    pub stream: i64,
    /// The state group after it.
    pub state_group: Option<i64>,
    /// Its sender.
    pub sender: String,
    /// The state key when it is a member event (visibility treats one's own member events apart).
    pub own_member_of: Option<String>,
}

/// What [`Db::insert_event`] writes.
pub struct NewEventRow<'a> {
    /// The PDU.
    pub pdu: &'a Pdu,
    /// Global stream position.
    pub stream: i64,
    /// Server-computed unsigned data.
    pub unsigned: Option<&'a Value>,
    /// Outlier flag.
    pub outlier: bool,
    /// State group after the event.
    pub state_group: Option<i64>,
}

const EVENT_COLUMNS: &str = "event_id, room_id, json, rejected, stream_ordering, topological_ordering, unsigned_json, \
     outlier, state_group, redacted_by";

type EventTuple = (String, String, String, i64, i64, i64, Option<String>, i64, Option<i64>, Option<String>);

impl StoredEvent {
    /// Whether the event was soft-failed: the only outliers stored with a state group (see
    /// `Rooms::persist_soft_failed`).
    pub fn is_soft_failed(&self) -> bool {
        self.outlier && self.state_group.is_some() && !self.pdu.rejected
    }
}

fn stored_from(t: EventTuple) -> Result<StoredEvent> {
    let pdu = Pdu::from_stored(&t.0, &t.1, &t.2, t.3 != 0)?;
    Ok(StoredEvent {
        pdu,
        stream: t.4,
        topo: t.5,
        unsigned: t.6.and_then(|u| serde_json::from_str(&u).ok()),
        outlier: t.7 != 0,
        state_group: t.8,
        redacted_by: t.9,
    })
}

fn relation_of(pdu: &Pdu) -> (Option<String>, Option<String>) {
    let content = pdu.content();
    let rel = &content["m.relates_to"];
    let target = rel["event_id"].as_str().map(str::to_owned);
    let rel_type = rel["rel_type"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| rel.get("m.in_reply_to").map(|_| "m.in_reply_to".to_owned()));
    match (target, rel_type) {
        (Some(t), Some(r)) => (Some(t), Some(r)),
        (None, Some(r)) if r == "m.in_reply_to" => {
            (rel["m.in_reply_to"]["event_id"].as_str().map(str::to_owned), Some(r))
        }
        _ => (None, None),
    }
}

impl Db {
    /// Room version and current state group of a room we know.
    pub async fn get_room(&self, room_id: &str) -> Result<Option<(String, Option<i64>)>> {
        Ok(sqlx::query_as("SELECT room_version, current_state_group FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Same, inside a write transaction; on PostgreSQL the row is locked so that one room's
    /// events are appended by one writer at a time across processes.
    pub async fn lock_room(&self, tx: &mut WriteTx, room_id: &str) -> Result<Option<(String, Option<i64>)>> {
        Ok(self.lock_rooms(tx, &[room_id]).await?.remove(room_id))
    }

    /// Locks several rooms' rows (PostgreSQL), in room id order so that two writers locking
    /// overlapping sets cannot deadlock: room id → (room version, current state group). Rooms
    /// that do not exist are absent.
    pub async fn lock_rooms(
        &self,
        tx: &mut WriteTx,
        room_ids: &[&str],
    ) -> Result<HashMap<String, (String, Option<i64>)>> {
        let lock = if self.backend() == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        let mut out = HashMap::new();
        for chunk in room_ids.chunks(200) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, room_version, current_state_group FROM rooms WHERE room_id IN ({}) \
                 ORDER BY room_id{lock}",
                super::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, Option<i64>)>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (room, version, group) in q.fetch_all(&mut *tx.tx).await? {
                out.insert(room, (version, group));
            }
        }
        Ok(out)
    }

    /// Creates the rooms row.
    pub async fn insert_room(&self, tx: &mut WriteTx, room_id: &str, version: &str) -> Result<()> {
        sqlx::query("INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)")
            .bind(room_id)
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Points the room at its new current state group.
    pub async fn set_room_state_group(&self, tx: &mut WriteTx, room_id: &str, group: i64) -> Result<()> {
        sqlx::query("UPDATE rooms SET current_state_group = $1 WHERE room_id = $2")
            .bind(group)
            .bind(room_id)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

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
                super::placeholders(1, chunk.len())
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
                super::placeholders(1, chunk.len())
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
            super::Backend::Postgres => {
                "COALESCE((json::jsonb) ->> 'redacts', (json::jsonb) -> 'content' ->> 'redacts')"
            }
            super::Backend::Sqlite => {
                "COALESCE(json_extract(json, '$.redacts'), json_extract(json, '$.content.redacts'))"
            }
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
    pub(super) async fn query_events(&self, tail: &str, binds: &[BindValue<'_>]) -> Result<Vec<StoredEvent>> {
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
            let parts: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ${} AND outlier = 0 \
                         AND rejected = 0 AND stream_ordering <= $1 ORDER BY stream_ordering DESC LIMIT $2) AS t{i}",
                        i + 3
                    )
                })
                .collect();
            let sql = sqlx::AssertSqlSafe(parts.join(" UNION ALL "));
            let mut q = sqlx::query_as::<_, EventTuple>(sql).bind(upto).bind(limit);
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
                super::placeholders(1, chunk.len())
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
                super::placeholders(1, chunk.len())
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
                super::placeholders(1, chunk.len())
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

    /// Removes every forward extremity of a room (before a join replaces our view of it).
    pub async fn clear_extremities(&self, tx: &mut WriteTx, room_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1").bind(room_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// Deletes a stored event row (our own join, stored earlier as an outlier, is replaced).
    pub async fn delete_event(&self, tx: &mut WriteTx, event_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM events WHERE event_id = $1").bind(event_id).execute(&mut *tx.tx).await?;
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

    /// Records a user's membership as of `stream`.
    pub async fn set_membership(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        user_id: &str,
        membership: &str,
        event_id: &str,
        stream: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_ordering, forgotten) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
             event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(membership)
        .bind(event_id)
        .bind(stream)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// A user's current membership in a room: `(membership, event_id, stream)`.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT membership, event_id, stream_ordering FROM room_memberships WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A user's membership as reads see it: like [`Db::membership`], but `None` once the user
    /// has forgotten the room (a forgotten room reads as one never joined).
    pub async fn remembered_membership(&self, room_id: &str, user_id: &str) -> Result<Option<(String, String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT membership, event_id, stream_ordering FROM room_memberships \
             WHERE room_id = $1 AND user_id = $2 AND forgotten = 0",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Members of a room with a given membership.
    pub async fn members_with(&self, room_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership = $2 ORDER BY user_id",
        )
        .bind(room_id)
        .bind(membership)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// All membership rows of a room: `(user_id, membership)`.
    pub async fn all_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, membership FROM room_memberships WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(self.pool())
            .await?)
    }

    /// Rooms where the user has the given membership.
    pub async fn rooms_with_membership(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT room_id FROM room_memberships WHERE user_id = $1 AND membership = $2 ORDER BY room_id",
        )
        .bind(user_id)
        .bind(membership)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Marks a left room as forgotten for the user.
    pub async fn forget_room(&self, room_id: &str, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE room_memberships SET forgotten = 1 WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(self.pool())
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

    /// The events already sent with any of these `(user, device, txn id)` keys, read inside the
    /// write transaction in one statement per 200 keys (the event writer asks for a whole batch
    /// at once: one round trip instead of one per event).
    pub async fn get_txns_tx(
        &self,
        tx: &mut WriteTx,
        keys: &[(&str, &str, &str)],
    ) -> Result<HashMap<(String, String, String), String>> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(200) {
            let conditions: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!("(user_id = ${} AND device_id = ${} AND txn_id = ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)
                })
                .collect();
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT user_id, device_id, txn_id, event_id FROM client_txns WHERE {}",
                conditions.join(" OR ")
            ));
            let mut q = sqlx::query_as::<_, (String, String, String, String)>(sql);
            for (u, d, t) in chunk {
                q = q.bind(*u).bind(*d).bind(*t);
            }
            for (u, d, t, e) in q.fetch_all(&mut *tx.tx).await? {
                out.insert((u, d, t), e);
            }
        }
        for (u, d, t, e) in &tx.pending.txns {
            out.insert((u.clone(), d.clone(), t.clone()), e.clone());
        }
        Ok(out)
    }

    /// Records a client transaction id.
    pub async fn insert_txn(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        event_id: &str,
    ) -> Result<()> {
        let row = (user_id.to_owned(), device_id.to_owned(), txn_id.to_owned(), event_id.to_owned());
        if tx.pending.enabled {
            tx.pending.txns.push(row);
            return Ok(());
        }
        write_txns(tx, &[row]).await?;
        Ok(())
    }

    /// The `(user, device, txn_id)` that sent an event, if it came through a client transaction.
    pub async fn txn_of_event(&self, event_id: &str) -> Result<Option<(String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, device_id, txn_id FROM client_txns WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Transaction ids of a device's own events: event id → txn id.
    pub async fn txns_of_events(
        &self,
        user_id: &str,
        device_id: &str,
        event_ids: &[String],
    ) -> Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        for chunk in event_ids.chunks(200) {
            // By event id alone, the sender's device checked here: with `user_id = $1 AND
            // device_id = $2` in the query, SQLite (without statistics) walks every txn id of the
            // device through the primary key instead of looking the events up in
            // `client_txns_event`, 0.5 ms per query for a device that sent 1,000 events.
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT event_id, txn_id, user_id, device_id FROM client_txns WHERE event_id IN ({})",
                super::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, String, String)>(sql);
            for id in chunk {
                q = q.bind(id);
            }
            for (event_id, txn_id, user, device) in q.fetch_all(self.pool()).await? {
                if user == user_id && device == device_id {
                    out.insert(event_id, txn_id);
                }
            }
        }
        Ok(out)
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

    /// Alias → room.
    pub async fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Adds an alias; false if taken.
    pub async fn insert_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let added = self.insert_alias_in(&mut tx, alias, room_id, creator).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Adds an alias in `tx` (a new room's alias is created with it); false if taken.
    pub async fn insert_alias_in(&self, tx: &mut WriteTx, alias: &str, room_id: &str, creator: &str) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(alias)
        .bind(room_id)
        .bind(creator)
        .execute(&mut *tx.tx)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Points an alias at another room (a room upgrade moves the old room's aliases).
    pub async fn move_alias(&self, alias: &str, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE room_aliases SET room_id = $1 WHERE alias = $2")
            .bind(room_id)
            .bind(alias)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(self.pool()).await?;
        Ok(())
    }

    /// Local aliases of a room.
    pub async fn room_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Publishes a room in the directory in `tx` (a room created public).
    pub async fn publish_room_in(&self, tx: &mut WriteTx, room_id: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_public = 1 WHERE room_id = $1").bind(room_id).execute(&mut *tx.tx).await?;
        Ok(())
    }

    /// Publishes or unpublishes a room in the directory.
    pub async fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET is_public = $1 WHERE room_id = $2")
            .bind(public as i64)
            .bind(room_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Whether a room is published.
    pub async fn is_room_public(&self, room_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT is_public FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some_and(|r| r.0 != 0))
    }

    /// Published rooms.
    pub async fn public_rooms(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// Binds `binds` to `q` in order.
fn bind_all<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    binds: &[BindValue<'q>],
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
    for b in binds {
        q = match *b {
            BindValue::Str(s) => q.bind(s),
            BindValue::Int(i) => q.bind(i),
        };
    }
    q
}

/// A bind value for [`Db::query_events`].
#[derive(Debug, Clone, Copy)]
pub(super) enum BindValue<'a> {
    /// Text.
    Str(&'a str),
    /// Integer.
    Int(i64),
}

/// An `events` row waiting for its multi-row insert.
#[derive(Debug)]
pub struct PendingEvent {
    stream: i64,
    event_id: String,
    room_id: String,
    topo: i64,
    event_type: String,
    state_key: Option<String>,
    sender: String,
    ts: i64,
    json: String,
    unsigned: Option<String>,
    rejected: i64,
    outlier: i64,
    state_group: Option<i64>,
    relates_to: Option<String>,
    rel_type: Option<String>,
    redacted_by: Option<String>,
}

/// Rows a deferring [`WriteTx`] writes at commit, one statement per table.
#[derive(Debug, Default)]
pub struct PendingRows {
    /// Whether rows are buffered at all.
    pub(super) enabled: bool,
    events: Vec<PendingEvent>,
    edges: Vec<(String, String)>,
    txns: Vec<(String, String, String, String)>,
    pub(super) outbox: Vec<super::outbox::OutboxInsert>,
    /// Room → (extremities when first touched, extremities now).
    extremities: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// `event_push_actions` rows (see `storage/push.rs`).
    pub(super) push_actions: Vec<super::push::PushActionRow>,
}

/// `($1, $2, ...), ($n+1, ...)` for `rows` rows of `cols` columns; on SQLite `(?, ?, ...), ...`.
///
/// SQLite gets anonymous parameters because sqlx-sqlite asks `sqlite3_bind_parameter_name` for
/// each parameter it binds, and for named ones (`$N` included) SQLite finds the name by a linear
/// scan: binding a 500-parameter insert was quadratic, 4% of the send path's CPU in a profile.
pub(super) fn values_clause(backend: Backend, rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=cols {
            if c > 1 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    use std::fmt::Write;
                    let _ = write!(sql, "${}", r * cols + c);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Rows per statement, below SQLite's 32,766 parameters for the widest table.
pub(super) const ROWS_PER_STATEMENT: usize = 500;

async fn write_events(tx: &mut WriteTx, rows: &[PendingEvent]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO events (stream_ordering, event_id, room_id, topological_ordering, event_type, state_key, sender, \
             origin_server_ts, json, unsigned_json, rejected, outlier, state_group, relates_to, rel_type, redacted_by) \
             VALUES {}",
            values_clause(tx.backend, chunk.len(), 16)
        ));
        let mut q = sqlx::query(sql);
        for e in chunk {
            q = q
                .bind(e.stream)
                .bind(e.event_id.as_str())
                .bind(e.room_id.as_str())
                .bind(e.topo)
                .bind(e.event_type.as_str())
                .bind(e.state_key.as_deref())
                .bind(e.sender.as_str())
                .bind(e.ts)
                .bind(e.json.as_str())
                .bind(e.unsigned.as_deref())
                .bind(e.rejected)
                .bind(e.outlier)
                .bind(e.state_group)
                .bind(e.relates_to.as_deref())
                .bind(e.rel_type.as_deref())
                .bind(e.redacted_by.as_deref());
        }
        q.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

/// Two-column rows into `table_and_columns` (`"t (a, b)"`), ignoring existing ones.
async fn insert_pairs<A: AsRef<str>, B: AsRef<str>>(
    tx: &mut WriteTx,
    table_and_columns: &str,
    rows: &[(A, B)],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table_and_columns} VALUES {} ON CONFLICT DO NOTHING",
            values_clause(tx.backend, chunk.len(), 2)
        ));
        let mut q = sqlx::query(sql);
        for (a, b) in chunk {
            q = q.bind(a.as_ref()).bind(b.as_ref());
        }
        q.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

async fn write_edges(tx: &mut WriteTx, rows: &[(String, String)]) -> Result<(), sqlx::Error> {
    insert_pairs(tx, "event_edges (event_id, prev_event_id)", rows).await
}

async fn write_txns(tx: &mut WriteTx, rows: &[(String, String, String, String)]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO client_txns (user_id, device_id, txn_id, event_id) VALUES {}",
            values_clause(tx.backend, chunk.len(), 4)
        ));
        let mut q = sqlx::query(sql);
        for (u, d, t, e) in chunk {
            q = q.bind(u.as_str()).bind(d.as_str()).bind(t.as_str()).bind(e.as_str());
        }
        q.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

/// Writes everything a deferring transaction buffered; called by [`WriteTx::commit`].
pub(super) async fn flush_pending(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
    let pending = std::mem::take(&mut tx.pending);
    if !pending.enabled {
        return Ok(());
    }
    write_events(tx, &pending.events).await?;
    write_edges(tx, &pending.edges).await?;
    write_txns(tx, &pending.txns).await?;
    super::outbox::write_outbox(tx, &pending.outbox).await?;
    super::push::write_push_actions(tx, &pending.push_actions).await?;
    // Every room's extremity changes in one DELETE and one INSERT. Event ids are unique across
    // rooms, so `room_id IN rooms AND event_id IN gone` deletes exactly the gone ones (and lets
    // the primary key's room prefix find them).
    let mut gone: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut new: Vec<(&str, &str)> = Vec::new();
    for (room_id, (initial, current)) in &pending.extremities {
        let room_gone: Vec<&str> = initial.iter().filter(|e| !current.contains(e)).map(String::as_str).collect();
        if !room_gone.is_empty() {
            gone.push((room_id, room_gone));
        }
        new.extend(current.iter().filter(|e| !initial.contains(e)).map(|e| (room_id.as_str(), e.as_str())));
    }
    for rooms in gone.chunks(200) {
        let events: Vec<&str> = rooms.iter().flat_map(|(_, g)| g.iter().copied()).collect();
        let sql = sqlx::AssertSqlSafe(format!(
            "DELETE FROM forward_extremities WHERE room_id IN ({}) AND event_id IN ({})",
            super::placeholders(1, rooms.len()),
            super::placeholders(rooms.len() + 1, events.len())
        ));
        let mut q = sqlx::query(sql);
        for (room, _) in rooms {
            q = q.bind(*room);
        }
        for e in events {
            q = q.bind(e);
        }
        q.execute(&mut *tx.tx).await?;
    }
    insert_pairs(tx, "forward_extremities (room_id, event_id)", &new).await?;
    tx.pending.enabled = true;
    Ok(())
}
