//! SQL of pushers: where a user's push notifications go, and how far the sender got for each.

use std::collections::{BTreeMap, HashMap};

use super::{Db, WriteTx, now_ms};
use crate::error::Result;

/// One pusher as stored.
#[derive(Debug, Clone)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object as JSON text.
    pub data: String,
    pub device_id: Option<String>,
    pub created_ts: i64,
    pub last_stream: i64,
}

type Tuple = (String, String, String, String, String, String, Option<String>, String, String, Option<String>, i64, i64);

const COLUMNS: &str = "user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, \
     device_id, created_ts, last_stream";

fn row(t: Tuple) -> PusherRow {
    PusherRow {
        user_id: t.0,
        app_id: t.1,
        pushkey: t.2,
        kind: t.3,
        app_display_name: t.4,
        device_display_name: t.5,
        profile_tag: t.6,
        lang: t.7,
        data: t.8,
        device_id: t.9,
        created_ts: t.10,
        last_stream: t.11,
    }
}

impl Db {
    /// Creates or replaces the user's pusher `(app_id, pushkey)`. Unless `append`, the same
    /// `(app_id, pushkey)` of other users is removed (the spec's default: a device has one owner).
    /// A replaced pusher keeps its position in the stream; a new one starts at `from_stream`.
    pub async fn set_pusher(&self, p: &PusherRow, append: bool, from_stream: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&p.app_id)
                .bind(&p.pushkey)
                .bind(&p.user_id)
                .execute(&mut *tx.tx)
                .await?;
        }
        // A replaced pusher keeps `last_stream`; everything else is the new one's.
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO pushers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, \
             app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
             profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, \
             device_id = excluded.device_id, created_ts = excluded.created_ts"
        ));
        sqlx::query(sql)
            .bind(&p.user_id)
            .bind(&p.app_id)
            .bind(&p.pushkey)
            .bind(&p.kind)
            .bind(&p.app_display_name)
            .bind(&p.device_display_name)
            .bind(&p.profile_tag)
            .bind(&p.lang)
            .bind(&p.data)
            .bind(&p.device_id)
            .bind(now_ms())
            .bind(from_stream)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the user's pusher `(app_id, pushkey)`, if there is one.
    pub async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Removes every pusher with this `(app_id, pushkey)` (the gateway rejected the key).
    pub async fn delete_pushkey(&self, app_id: &str, pushkey: &str) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2")
            .bind(app_id)
            .bind(pushkey)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The user's pushers.
    pub async fn pushers_of(&self, user_id: &str) -> Result<Vec<PusherRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY created_ts"));
        let rows: Vec<Tuple> = sqlx::query_as(sql).bind(user_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// Whether any user has a pusher.
    pub async fn any_pushers(&self) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM pushers LIMIT 1").fetch_optional(self.pool()).await?;
        Ok(row.is_some())
    }

    /// Every pusher that has not yet considered events up to `upto`.
    pub async fn pushers_behind(&self, upto: i64) -> Result<Vec<PusherRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM pushers WHERE last_stream < $1"));
        let rows: Vec<Tuple> = sqlx::query_as(sql).bind(upto).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// Records that the pusher considered every event up to `stream`.
    pub async fn advance_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, stream: i64) -> Result<()> {
        sqlx::query(
            "UPDATE pushers SET last_stream = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 \
             AND last_stream < $4",
        )
        .bind(user_id)
        .bind(app_id)
        .bind(pushkey)
        .bind(stream)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// One user's push actions for one event (`event_push_actions`), or with `user_id` `""` the
/// broadcast row that stands for every local member joined at the event but its sender and
/// those with a row of their own (migration 23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushActionRow {
    pub user_id: String,
    pub room_id: String,
    /// `""` for the main timeline, else the thread root.
    pub thread_id: String,
    pub stream: i64,
    pub event_id: String,
    pub highlight: bool,
    /// The actions as JSON, `None` for the plain `["notify"]`.
    pub actions: Option<String>,
    /// False for a member a broadcast row does not notify (see migration 23).
    pub notify: bool,
    /// The event's sender on a broadcast row (`user_id` `""`), else `""`.
    pub sender: String,
    /// When the row was written (ms).
    pub ts: i64,
}

/// Notifications and highlights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events whose actions notify.
    pub notifications: i64,
    /// Those of them that highlight.
    pub highlights: i64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.notifications += other.notifications;
        self.highlights += other.highlights;
    }
}

/// A user's unread counts in one room: the main timeline and each thread, each after the
/// user's read receipts that apply to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    /// The main timeline (events in no thread).
    pub main: Counts,
    /// Threads by root event id, only those with something unread.
    pub threads: BTreeMap<String, Counts>,
}

impl UnreadCounts {
    /// The whole room: the main timeline and every thread.
    pub fn total(&self) -> Counts {
        let mut total = self.main;
        for c in self.threads.values() {
            total.add(*c);
        }
        total
    }

    /// Takes one row of a count query: the main timeline's (thread `""`) or a thread's, kept
    /// only when it has notifications.
    fn take_row(&mut self, thread: String, notifications: i64, highlights: i64) {
        let counts = Counts { notifications, highlights };
        if thread.is_empty() {
            self.main = counts;
        } else if notifications > 0 {
            self.threads.insert(thread, counts);
        }
    }
}

/// The receipt positions of a user in a room, per receipt thread (`""`: unthreaded).
type ReceiptFloors = HashMap<String, i64>;

/// Writes push action rows inside the event's transaction (at commit for a deferring one).
pub(super) async fn write_push_actions(tx: &mut WriteTx, rows: &[PushActionRow]) -> Result<(), sqlx::Error> {
    // Ten columns: 500 rows stay far below SQLite's parameter limit.
    for chunk in rows.chunks(super::rooms::ROWS_PER_STATEMENT) {
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO event_push_actions ({PUSH_ACTION_COLUMNS}) VALUES {} ON CONFLICT DO NOTHING",
            super::rooms::values_clause(tx.backend, chunk.len(), 10)
        ));
        let mut q = sqlx::query(sql);
        for r in chunk {
            q = q
                .bind(r.user_id.as_str())
                .bind(r.room_id.as_str())
                .bind(r.thread_id.as_str())
                .bind(r.stream)
                .bind(r.event_id.as_str())
                .bind(r.highlight as i64)
                .bind(r.actions.as_deref())
                .bind(r.notify as i64)
                .bind(r.sender.as_str())
                .bind(r.ts);
        }
        q.execute(&mut *tx.tx).await?;
    }
    Ok(())
}

type NotificationTuple = (String, String, String, i64, String, i64, Option<String>, i64, String, i64);

/// The columns of [`NotificationTuple`].
const PUSH_ACTION_COLUMNS: &str =
    "user_id, room_id, thread_id, stream_ordering, event_id, highlight, actions, notify, sender, ts";

/// [`PUSH_ACTION_COLUMNS`] of the broadcast rows `b`.
const BROADCAST_COLUMNS: &str = "b.user_id, b.room_id, b.thread_id, b.stream_ordering, b.event_id, b.highlight, b.actions, b.notify, b.sender, b.ts";

/// The condition that a broadcast row `b` stands for the user `u` (a parameter), given that
/// they were joined at it: they did not send it and have no row of their own for it.
fn broadcast_for(u: &str) -> String {
    format!(
        "b.sender <> {u} AND NOT EXISTS (SELECT 1 FROM event_push_actions o WHERE o.user_id = {u} \
         AND o.room_id = b.room_id AND o.thread_id = b.thread_id AND o.stream_ordering = b.stream_ordering)"
    )
}

/// The rows that notify user `u` in room `r` (both parameters) and meet `cond` (on `thread_id`
/// and `stream_ordering`, which should start after the user joined), as `(thread_id,
/// highlight)`: the broadcast rows that stand for them and their own notifying rows.
fn notifying(u: &str, r: &str, cond: &str) -> String {
    format!(
        "SELECT b.thread_id, b.highlight FROM event_push_actions b WHERE b.user_id = '' AND b.room_id = {r} \
         AND {cond} AND {} UNION ALL SELECT thread_id, highlight FROM event_push_actions \
         WHERE user_id = {u} AND room_id = {r} AND notify = 1 AND {cond}",
        broadcast_for(u)
    )
}

/// The condition for rows in the room's threads after stream position `after` up to `upto`
/// (SQL expressions), for [`notifying`]. The positions are compared as `+stream_ordering`, which
/// no index serves: otherwise SQLite takes the range on `(user_id, stream_ordering)`, which for
/// the broadcast rows (`user_id = ''`) is every room's rows since `after`, over the primary key's
/// range of this room's thread rows: 0.7 ms a room against 0.02 in a user's first initial
/// sync of 1,000 rooms (one second of its 1.5).
fn in_threads(after: &str, upto: &str) -> String {
    format!("thread_id > '' AND +stream_ordering > {after} AND +stream_ordering <= {upto}")
}

fn push_action_row(t: NotificationTuple) -> PushActionRow {
    PushActionRow {
        user_id: t.0,
        room_id: t.1,
        thread_id: t.2,
        stream: t.3,
        event_id: t.4,
        highlight: t.5 != 0,
        actions: t.6,
        notify: t.7 != 0,
        sender: t.8,
        ts: t.9,
    }
}

impl Db {
    /// Stores push action rows in the transaction of their event.
    pub async fn insert_push_actions(&self, tx: &mut WriteTx, rows: Vec<PushActionRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if tx.pending.enabled {
            tx.pending.push_actions.extend(rows);
            return Ok(());
        }
        write_push_actions(tx, &rows).await?;
        Ok(())
    }

    /// Removes the push actions of a redacted event: rows still buffered in `tx`, and the
    /// stored rows of `users` and the broadcast row when the event is committed at `stream`.
    pub async fn delete_push_actions(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        thread_id: &str,
        event_id: &str,
        stream: Option<i64>,
        users: &[String],
    ) -> Result<()> {
        tx.pending.push_actions.retain(|r| r.event_id != event_id);
        let Some(stream) = stream else { return Ok(()) };
        let users: Vec<&str> = std::iter::once("").chain(users.iter().map(String::as_str)).collect();
        for chunk in users.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "DELETE FROM event_push_actions WHERE room_id = $1 AND thread_id = $2 AND stream_ordering = $3 \
                 AND event_id = $4 AND user_id IN ({})",
                super::placeholders(5, chunk.len())
            ));
            let mut q = sqlx::query(sql).bind(room_id).bind(thread_id).bind(stream).bind(event_id);
            for u in chunk {
                q = q.bind(*u);
            }
            q.execute(&mut *tx.tx).await?;
        }
        Ok(())
    }

    /// The stored `m.push_rules` account data of those of `users` who have one.
    pub async fn push_rules_of(&self, users: &[&str]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT user_id, content FROM account_data WHERE room_id = '' AND data_type = 'm.push_rules' \
                 AND user_id IN ({})",
                super::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String)>(sql);
            for u in chunk {
                q = q.bind(*u);
            }
            out.extend(q.fetch_all(self.pool()).await?);
        }
        Ok(out)
    }

    /// The stream positions of the user's latest `m.read` / `m.read.private` receipts in a
    /// room, per receipt thread.
    async fn receipt_floors(&self, room_id: &str, user_id: &str) -> Result<ReceiptFloors> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT r.thread_id, MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id \
             WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private') \
             GROUP BY r.thread_id",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The user's unread notification and highlight counts in a room up to `upto`: push
    /// actions after `floor` (their join) and after the read receipts that cover each event
    /// (unthreaded ones cover everything, `main` the main timeline, a thread's its thread).
    /// The main timeline's count stops at `cap`. The one answer for `/sync`, sliding sync and
    /// push badges.
    pub async fn unread_count(
        &self,
        room_id: &str,
        user_id: &str,
        floor: i64,
        upto: i64,
        cap: i64,
    ) -> Result<UnreadCounts> {
        let receipts = self.receipt_floors(room_id, user_id).await?;
        let lo = receipts.get("").copied().unwrap_or(0).max(floor);
        let main_floor = receipts.get("main").copied().unwrap_or(0).max(lo);
        // Threads whose own receipts raise their floor above `lo`.
        let read_threads: Vec<(&str, i64)> = receipts
            .iter()
            .filter(|(t, s)| !t.is_empty() && t.as_str() != "main" && **s > lo)
            .map(|(t, s)| (t.as_str(), *s))
            .collect();
        let mut thread_cond = String::new();
        if !read_threads.is_empty() {
            let n = read_threads.len();
            thread_cond = format!(" AND (thread_id NOT IN ({})", super::placeholders(6, n));
            for i in 0..n {
                let k = 6 + n + 2 * i;
                thread_cond.push_str(&format!(" OR (thread_id = ${k} AND stream_ordering > ${})", k + 1));
            }
            thread_cond.push(')');
        }
        // The main timeline is one index range; the threads (ids after '' in the key) another;
        // each in the broadcast rows and in the user's own.
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT '', COUNT(*), COUNT(CASE WHEN highlight = 1 THEN 1 END) FROM ({} LIMIT {cap}) AS main \
             UNION ALL \
             SELECT thread_id, COUNT(*), COUNT(CASE WHEN highlight = 1 THEN 1 END) FROM ({}) AS t GROUP BY thread_id",
            notifying("$1", "$2", "thread_id = '' AND stream_ordering > $3 AND stream_ordering <= $4"),
            notifying("$1", "$2", &format!("{}{thread_cond}", in_threads("$5", "$4"))),
        ));
        let mut q = sqlx::query_as::<_, (String, i64, i64)>(sql)
            .bind(user_id)
            .bind(room_id)
            .bind(main_floor)
            .bind(upto)
            .bind(lo);
        for (t, _) in &read_threads {
            q = q.bind(*t);
        }
        for (t, s) in &read_threads {
            q = q.bind(*t).bind(*s);
        }
        let mut out = UnreadCounts::default();
        for (thread, notifications, highlights) in q.fetch_all(self.pool()).await? {
            out.take_row(thread, notifications, highlights);
        }
        Ok(out)
    }

    /// [`Db::unread_count`] of several rooms (`(room, floor)`) up to `upto`: the receipts of
    /// all of them in one statement, then the counts of up to 100 rooms per statement (each
    /// room's part is the one-room query's, so each reads the same index ranges). An initial
    /// sync asks this for every room; two round trips per room were a fifth of its queries.
    pub async fn unread_counts_of(
        &self,
        user_id: &str,
        rooms: &[(&str, i64)],
        upto: i64,
        cap: i64,
    ) -> Result<HashMap<String, UnreadCounts>> {
        let mut floors: HashMap<String, ReceiptFloors> = HashMap::new();
        for chunk in rooms.chunks(500) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT r.room_id, r.thread_id, MAX(e.stream_ordering) FROM receipts r \
                 JOIN events e ON e.event_id = r.event_id WHERE r.room_id IN ({}) AND r.user_id = $1 \
                 AND r.receipt_type IN ('m.read', 'm.read.private') GROUP BY r.room_id, r.thread_id",
                super::placeholders(2, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, i64)>(sql).bind(user_id);
            for (room, _) in chunk {
                q = q.bind(*room);
            }
            for (room, thread, pos) in q.fetch_all(self.pool()).await? {
                floors.entry(room).or_default().insert(thread, pos);
            }
        }
        let mut out = HashMap::with_capacity(rooms.len());
        // Rooms with receipts in threads (rare) take the one-room query and its thread conditions.
        let mut simple = Vec::with_capacity(rooms.len());
        for &(room, floor) in rooms {
            let f = floors.get(room);
            let lo = f.and_then(|f| f.get("")).copied().unwrap_or(0).max(floor);
            let main_floor = f.and_then(|f| f.get("main")).copied().unwrap_or(0).max(lo);
            if f.is_some_and(|f| f.iter().any(|(t, s)| !t.is_empty() && t != "main" && *s > lo)) {
                out.insert(room.to_owned(), self.unread_count(room, user_id, floor, upto, cap).await?);
            } else {
                simple.push((room, lo, main_floor));
            }
        }
        for chunk in simple.chunks(100) {
            if self.backend == super::Backend::Postgres {
                // One plan for all the rooms (a VALUES list and LATERAL joins): PostgreSQL
                // plans each part of a UNION ALL on its own, four per room here, and planning
                // took longer than reading.
                let main = notifying(
                    "$1",
                    "q.room_id",
                    "thread_id = '' AND stream_ordering > q.main_floor AND stream_ordering <= $2",
                );
                let threads = notifying("$1", "q.room_id", &in_threads("q.lo", "$2"));
                let sql = sqlx::AssertSqlSafe(format!(
                    "WITH q(room_id, lo, main_floor) AS (VALUES {}) \
                     SELECT q.room_id, '', m.n, m.h FROM q CROSS JOIN LATERAL (SELECT COUNT(*) AS n, \
                     COUNT(CASE WHEN highlight = 1 THEN 1 END) AS h FROM ({main} LIMIT {cap}) AS m0) AS m \
                     UNION ALL SELECT q.room_id, t.thread_id, t.n, t.h FROM q CROSS JOIN LATERAL (SELECT thread_id, \
                     COUNT(*) AS n, COUNT(CASE WHEN highlight = 1 THEN 1 END) AS h FROM ({threads}) AS t0 \
                     GROUP BY thread_id) AS t",
                    super::rooms::values_clause_from(self.backend, 3, chunk.len(), 3)
                ));
                let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(sql).bind(user_id).bind(upto);
                for (room, lo, main_floor) in chunk {
                    q = q.bind(*room).bind(*lo).bind(*main_floor);
                }
                for (room, thread, notifications, highlights) in q.fetch_all(self.pool()).await? {
                    out.entry(room).or_default().take_row(thread, notifications, highlights);
                }
                continue;
            }
            let mut parts = Vec::with_capacity(2 * chunk.len());
            for i in 0..chunk.len() {
                let k = 3 + 3 * i;
                parts.push(format!(
                    "SELECT CAST(${k} AS TEXT), '', COUNT(*), COUNT(CASE WHEN highlight = 1 THEN 1 END) FROM \
                     ({} LIMIT {cap}) AS m{i}",
                    notifying(
                        "$1",
                        &format!("${k}"),
                        &format!("thread_id = '' AND stream_ordering > ${} AND stream_ordering <= $2", k + 2)
                    )
                ));
                parts.push(format!(
                    "SELECT CAST(${k} AS TEXT), thread_id, COUNT(*), COUNT(CASE WHEN highlight = 1 THEN 1 END) \
                     FROM ({}) AS t{i} GROUP BY thread_id",
                    notifying("$1", &format!("${k}"), &in_threads(&format!("${}", k + 1), "$2"))
                ));
            }
            let sql = sqlx::AssertSqlSafe(parts.join(" UNION ALL "));
            let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(sql).bind(user_id).bind(upto);
            for (room, lo, main_floor) in chunk {
                q = q.bind(*room).bind(*lo).bind(*main_floor);
            }
            for (room, thread, notifications, highlights) in q.fetch_all(self.pool()).await? {
                out.entry(room).or_default().take_row(thread, notifications, highlights);
            }
        }
        Ok(out)
    }

    /// The user's notifications newest first, before stream position `before` (all when
    /// None), highlights only if asked: `(row, read)`, where `read` says whether the user's
    /// read receipts cover the event.
    pub async fn notifications(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<(PushActionRow, bool)>> {
        let before = before.unwrap_or(i64::MAX);
        let highlight = if only_highlight { " AND highlight = 1" } else { "" };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PUSH_ACTION_COLUMNS} FROM event_push_actions \
             WHERE user_id = $1 AND notify = 1 AND stream_ordering < $2{highlight} ORDER BY stream_ordering DESC LIMIT {limit}"
        ));
        let mut rows: Vec<NotificationTuple> =
            sqlx::query_as(sql).bind(user_id).bind(before).fetch_all(self.pool()).await?;
        // The broadcast rows of each joined room after the user joined it, newest first: one
        // index range per room (a scan of every room's rows newest first would, for a user of a
        // few quiet rooms, read the whole server's).
        let joined: Vec<(String, i64)> = sqlx::query_as(
            "SELECT room_id, stream_ordering FROM room_memberships WHERE user_id = $1 AND membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        let highlight = if only_highlight { " AND b.highlight = 1" } else { "" };
        for chunk in joined.chunks(100) {
            let parts: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let k = 3 + 2 * i;
                    // `b.sender > ''` is the partial index's condition (broadcast rows only).
                    format!(
                        "SELECT * FROM (SELECT {BROADCAST_COLUMNS} FROM event_push_actions b WHERE b.user_id = '' \
                         AND b.sender > '' AND b.room_id = ${k} AND b.stream_ordering > ${} AND b.stream_ordering < $2\
                         {highlight} AND {} ORDER BY b.stream_ordering DESC LIMIT {limit}) AS p{i}",
                        k + 1,
                        broadcast_for("$1")
                    )
                })
                .collect();
            let sql = sqlx::AssertSqlSafe(parts.join(" UNION ALL "));
            let mut q = sqlx::query_as::<_, NotificationTuple>(sql).bind(user_id).bind(before);
            for (room, joined_at) in chunk {
                q = q.bind(room.as_str()).bind(*joined_at);
            }
            rows.extend(q.fetch_all(self.pool()).await?);
        }
        rows.sort_by_key(|t| std::cmp::Reverse(t.3));
        rows.truncate(limit.max(0) as usize);
        let mut floors: HashMap<String, ReceiptFloors> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows.into_iter().map(push_action_row) {
            row.user_id = user_id.to_owned();
            if !floors.contains_key(&row.room_id) {
                let f = self.receipt_floors(&row.room_id, user_id).await?;
                floors.insert(row.room_id.clone(), f);
            }
            let f = &floors[&row.room_id];
            let thread_key = if row.thread_id.is_empty() { "main" } else { row.thread_id.as_str() };
            let read_upto = f.get("").copied().unwrap_or(0).max(f.get(thread_key).copied().unwrap_or(0));
            let read = row.stream <= read_upto;
            out.push((row, read));
        }
        Ok(out)
    }

    /// The user's notifying push action rows in `(after, upto]`, oldest first, at most `limit`
    /// (the push sender's work list): their own rows and the broadcast rows of the rooms they
    /// are joined to, after they joined.
    pub async fn push_actions_after(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<PushActionRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PUSH_ACTION_COLUMNS} FROM (\
             SELECT {BROADCAST_COLUMNS} FROM event_push_actions b JOIN room_memberships m \
             ON m.room_id = b.room_id AND m.user_id = $1 AND m.membership = 'join' \
             WHERE b.user_id = '' AND b.stream_ordering > $2 AND b.stream_ordering <= $3 \
             AND b.stream_ordering > m.stream_ordering AND {} \
             UNION ALL SELECT {PUSH_ACTION_COLUMNS} FROM event_push_actions \
             WHERE user_id = $1 AND notify = 1 AND stream_ordering > $2 AND stream_ordering <= $3\
             ) AS a ORDER BY stream_ordering LIMIT {limit}",
            broadcast_for("$1")
        ));
        let rows: Vec<NotificationTuple> =
            sqlx::query_as(sql).bind(user_id).bind(after).bind(upto).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(|t| PushActionRow { user_id: user_id.to_owned(), ..push_action_row(t) }).collect())
    }
}
