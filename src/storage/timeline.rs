//! Typed reads of room events in timeline order, for the readers in `rooms` (`/messages`,
//! `/relations`, `timestamp_to_event`, upgrades, search) and `sync`: the engine says which
//! events it wants, and the SQL that finds them is written here only.

use ruma::api::Direction;

use super::rooms::{BindValue, StoredEvent};
use super::{Db, placeholders};
use crate::error::Result;

/// A position in a room's topological order: `(topological_ordering, stream_ordering)`.
pub type TopoPos = (i64, i64);

/// The comparison past a cursor and the sort order of a read in `dir`.
fn cmp_and_order(dir: Direction) -> (&'static str, &'static str) {
    match dir {
        Direction::Forward => (">", "ASC"),
        Direction::Backward => ("<", "DESC"),
    }
}

/// What a search looks for: events of these types in these rooms whose JSON contains each
/// pattern (`%word%`, matched against the lower-cased JSON).
#[derive(Debug, Clone, Copy)]
pub struct SearchCandidates<'a> {
    /// The rooms searched.
    pub rooms: &'a [String],
    /// The event types searched.
    pub types: &'a [&'a str],
    /// `LIKE` patterns each candidate matches.
    pub patterns: &'a [String],
}

impl Db {
    /// Up to `limit` accepted timeline events of a room past `after` (from the start or end
    /// when `None`) in `dir`, in topological order.
    pub async fn timeline_batch(
        &self,
        room_id: &str,
        after: Option<TopoPos>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let (cmp, order) = cmp_and_order(dir);
        let mut binds = vec![BindValue::Str(room_id)];
        let mut tail = String::from("WHERE room_id = $1 AND outlier = 0 AND rejected = 0");
        if let Some((depth, stream)) = after {
            // A row value, not `topo < $2 OR (topo = $2 AND stream < $3)`: PostgreSQL turns
            // only the row value into an index range, where the OR form scans every newer
            // row of the room again on each page.
            tail.push_str(&format!(" AND (topological_ordering, stream_ordering) {cmp} ($2, $3)"));
            binds.push(BindValue::Int(depth));
            binds.push(BindValue::Int(stream));
        }
        tail.push_str(&format!(" ORDER BY topological_ordering {order}, stream_ordering {order} LIMIT {limit}"));
        self.query_events(&tail, &binds).await
    }

    /// Up to `limit` accepted events of a room relating to `parent` (by `rel_type` and of
    /// `event_type` when given) past `after` in `dir`, in topological order.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations_batch(
        &self,
        room_id: &str,
        parent: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        after: Option<TopoPos>,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let (cmp, order) = cmp_and_order(dir);
        let mut tail = String::from("WHERE room_id = $1 AND relates_to = $2 AND outlier = 0 AND rejected = 0");
        let mut binds = vec![BindValue::Str(room_id), BindValue::Str(parent)];
        if let Some(r) = rel_type {
            binds.push(BindValue::Str(r));
            tail.push_str(&format!(" AND rel_type = ${}", binds.len()));
        }
        if let Some(t) = event_type {
            binds.push(BindValue::Str(t));
            tail.push_str(&format!(" AND event_type = ${}", binds.len()));
        }
        if let Some((depth, stream)) = after {
            binds.push(BindValue::Int(depth));
            let d = binds.len();
            binds.push(BindValue::Int(stream));
            let s = binds.len();
            tail.push_str(&format!(
                " AND (topological_ordering {cmp} ${d} OR (topological_ordering = ${d} AND stream_ordering {cmp} ${s}))"
            ));
        }
        tail.push_str(&format!(" ORDER BY topological_ordering {order}, stream_ordering {order} LIMIT {limit}"));
        self.query_events(&tail, &binds).await
    }

    /// The first `limit` accepted timeline events of a room at or after `from`, in
    /// topological order.
    pub async fn timeline_from(&self, room_id: &str, from: TopoPos, limit: i64) -> Result<Vec<StoredEvent>> {
        let tail = format!(
            "WHERE room_id = $1 AND outlier = 0 AND rejected = 0 AND (topological_ordering > $2 \
             OR (topological_ordering = $2 AND stream_ordering >= $3)) \
             ORDER BY topological_ordering, stream_ordering LIMIT {limit}"
        );
        self.query_events(&tail, &[BindValue::Str(room_id), BindValue::Int(from.0), BindValue::Int(from.1)]).await
    }

    /// The room's last non-outlier event in topological order (rejected ones included: the
    /// position is what counts).
    pub async fn last_in_topological_order(&self, room_id: &str) -> Result<Option<StoredEvent>> {
        let rows = self
            .query_events(
                "WHERE room_id = $1 AND outlier = 0 ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1",
                &[BindValue::Str(room_id)],
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The room's last non-outlier event at or before a stream position (rejected ones
    /// included).
    pub async fn last_at_stream(&self, room_id: &str, stream: i64) -> Result<Option<StoredEvent>> {
        let rows = self
            .query_events(
                "WHERE room_id = $1 AND outlier = 0 AND stream_ordering <= $2 ORDER BY stream_ordering DESC LIMIT 1",
                &[BindValue::Str(room_id), BindValue::Int(stream)],
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The room's last accepted timeline event at or before a topological position.
    pub async fn last_accepted_at_topo(&self, room_id: &str, at: TopoPos) -> Result<Option<StoredEvent>> {
        let tail = "WHERE room_id = $1 AND outlier = 0 AND rejected = 0 \
                    AND (topological_ordering, stream_ordering) <= ($2, $3) \
                    ORDER BY topological_ordering DESC, stream_ordering DESC LIMIT 1";
        let rows =
            self.query_events(tail, &[BindValue::Str(room_id), BindValue::Int(at.0), BindValue::Int(at.1)]).await?;
        Ok(rows.into_iter().next())
    }

    /// The room's last accepted timeline event at or before a stream position.
    pub async fn last_accepted_at_stream(&self, room_id: &str, stream: i64) -> Result<Option<StoredEvent>> {
        let tail = "WHERE room_id = $1 AND outlier = 0 AND rejected = 0 AND stream_ordering <= $2 \
                    ORDER BY stream_ordering DESC LIMIT 1";
        let rows = self.query_events(tail, &[BindValue::Str(room_id), BindValue::Int(stream)]).await?;
        Ok(rows.into_iter().next())
    }

    /// Up to `limit` accepted timeline events of a room sent at or after (`Forward`) or at or
    /// before (`Backward`) `ts`, nearest first.
    pub async fn events_near_timestamp(
        &self,
        room_id: &str,
        ts: i64,
        dir: Direction,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let (cmp, order) = match dir {
            Direction::Forward => (">=", "ASC"),
            Direction::Backward => ("<=", "DESC"),
        };
        let tail = format!(
            "WHERE room_id = $1 AND origin_server_ts {cmp} $2 AND outlier = 0 AND rejected = 0 \
             ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT {limit}"
        );
        self.query_events(&tail, &[BindValue::Str(room_id), BindValue::Int(ts)]).await
    }

    /// The room's event at a stream position, if any.
    pub async fn event_at_stream(&self, room_id: &str, stream: i64) -> Result<Option<StoredEvent>> {
        let rows = self
            .query_events(
                "WHERE room_id = $1 AND stream_ordering = $2",
                &[BindValue::Str(room_id), BindValue::Int(stream)],
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Up to `limit` search candidates below the stream position `below`, newest first:
    /// accepted, unredacted events that `c` describes.
    pub async fn search_candidates(&self, c: SearchCandidates<'_>, below: i64, limit: i64) -> Result<Vec<StoredEvent>> {
        let mut binds: Vec<BindValue<'_>> = c.rooms.iter().map(|r| BindValue::Str(r)).collect();
        let rooms_in = placeholders(1, c.rooms.len());
        let types_in = placeholders(c.rooms.len() + 1, c.types.len());
        binds.extend(c.types.iter().map(|t| BindValue::Str(t)));
        let mut tail = format!(
            "WHERE room_id IN ({rooms_in}) AND event_type IN ({types_in}) AND outlier = 0 AND rejected = 0 \
             AND redacted_by IS NULL"
        );
        for p in c.patterns {
            binds.push(BindValue::Str(p));
            tail.push_str(&format!(" AND LOWER(json) LIKE ${}", binds.len()));
        }
        binds.push(BindValue::Int(below));
        tail.push_str(&format!(" AND stream_ordering < ${} ORDER BY stream_ordering DESC LIMIT {limit}", binds.len()));
        self.query_events(&tail, &binds).await
    }

    /// Up to `limit` accepted timeline events of a room in the stream range `(after, upto]`,
    /// newest first.
    pub async fn room_events_in_range(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let tail = format!(
            "WHERE room_id = $1 AND outlier = 0 AND rejected = 0 AND stream_ordering > $2 \
             AND stream_ordering <= $3 ORDER BY stream_ordering DESC LIMIT {limit}"
        );
        self.query_events(&tail, &[BindValue::Str(room_id), BindValue::Int(after), BindValue::Int(upto)]).await
    }

    /// Every accepted timeline event of every room in the stream range `(after, upto]`, in
    /// stream order.
    pub async fn events_in_range(&self, after: i64, upto: i64) -> Result<Vec<StoredEvent>> {
        self.query_events(
            "WHERE stream_ordering > $1 AND stream_ordering <= $2 AND outlier = 0 AND rejected = 0 \
             ORDER BY stream_ordering",
            &[BindValue::Int(after), BindValue::Int(upto)],
        )
        .await
    }
}
