//! The bulk writer of a deferring [`WriteTx`]: rows buffered during a transaction are written
//! at commit in multi-row statements, one per table.

use std::collections::BTreeMap;

use crate::storage::{Backend, WriteTx};

/// An `events` row waiting for its multi-row insert.
#[derive(Debug)]
pub struct PendingEvent {
    pub(in crate::storage) stream: i64,
    pub(in crate::storage) event_id: String,
    pub(in crate::storage) room_id: String,
    pub(in crate::storage) topo: i64,
    pub(in crate::storage) event_type: String,
    pub(in crate::storage) state_key: Option<String>,
    pub(in crate::storage) sender: String,
    pub(in crate::storage) ts: i64,
    pub(in crate::storage) json: String,
    pub(in crate::storage) unsigned: Option<String>,
    pub(in crate::storage) rejected: i64,
    pub(in crate::storage) outlier: i64,
    pub(in crate::storage) state_group: Option<i64>,
    pub(in crate::storage) relates_to: Option<String>,
    pub(in crate::storage) rel_type: Option<String>,
    pub(in crate::storage) redacted_by: Option<String>,
}

/// Rows a deferring [`WriteTx`] writes at commit, one statement per table.
#[derive(Debug, Default)]
pub struct PendingRows {
    /// Whether rows are buffered at all.
    pub(in crate::storage) enabled: bool,
    pub(in crate::storage) events: Vec<PendingEvent>,
    pub(in crate::storage) edges: Vec<(String, String)>,
    pub(in crate::storage) txns: Vec<(String, String, String, String)>,
    pub(in crate::storage) outbox: Vec<crate::storage::outbox::OutboxInsert>,
    /// Room → (extremities when first touched, extremities now).
    pub(in crate::storage) extremities: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// `event_push_actions` rows (see `storage/push.rs`).
    pub(in crate::storage) push_actions: Vec<crate::storage::push::PushActionRow>,
}

/// `($1, $2, ...), ($n+1, ...)` for `rows` rows of `cols` columns; on SQLite `(?, ?, ...), ...`.
///
/// SQLite gets anonymous parameters because sqlx-sqlite asks `sqlite3_bind_parameter_name` for
/// each parameter it binds, and for named ones (`$N` included) SQLite finds the name by a linear
/// scan: binding a 500-parameter insert was quadratic, 4% of the send path's CPU in a profile.
pub(in crate::storage) fn values_clause(backend: Backend, rows: usize, cols: usize) -> String {
    values_clause_from(backend, 1, rows, cols)
}

/// [`values_clause`] with PostgreSQL's parameters numbered from `$first` (the statement binds
/// others before the rows).
pub(in crate::storage) fn values_clause_from(backend: Backend, first: usize, rows: usize, cols: usize) -> String {
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
                    let _ = write!(sql, "${}", first - 1 + r * cols + c);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Rows per statement, below SQLite's 32,766 parameters for the widest table.
pub(in crate::storage) const ROWS_PER_STATEMENT: usize = 500;

pub(super) async fn write_events(tx: &mut WriteTx, rows: &[PendingEvent]) -> Result<(), sqlx::Error> {
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

pub(super) async fn write_edges(tx: &mut WriteTx, rows: &[(String, String)]) -> Result<(), sqlx::Error> {
    insert_pairs(tx, "event_edges (event_id, prev_event_id)", rows).await
}

pub(super) async fn write_txns(tx: &mut WriteTx, rows: &[(String, String, String, String)]) -> Result<(), sqlx::Error> {
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
pub(in crate::storage) async fn flush_pending(tx: &mut WriteTx) -> Result<(), sqlx::Error> {
    let pending = std::mem::take(&mut tx.pending);
    if !pending.enabled {
        return Ok(());
    }
    write_events(tx, &pending.events).await?;
    write_edges(tx, &pending.edges).await?;
    write_txns(tx, &pending.txns).await?;
    crate::storage::outbox::write_outbox(tx, &pending.outbox).await?;
    crate::storage::push::write_push_actions(tx, &pending.push_actions).await?;
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
            crate::storage::placeholders(1, rooms.len()),
            crate::storage::placeholders(rooms.len() + 1, events.len())
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
