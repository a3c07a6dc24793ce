//! Tables of the sync streams (migration 3): filters, receipts, account data, presence and
//! to-device messages, plus the membership and event range reads `/sync` is built from.
//!
//! Every stream table carries a `stream_id` allocated with [`Db::next_stream_position`] from
//! the stream's own counter in the writing transaction, so "what changed in (since, upto]" is an
//! indexed range read that never sees a position before the rows below it are visible.

use std::collections::HashMap;

use super::{Db, WriteTx, now_ms, placeholders};
use crate::error::Result;

/// Counter names of the streams; each is one `stream_counters` row.
pub mod streams {
    /// Room events (owned by the room engine).
    pub const EVENTS: &str = "events";
    /// Read receipts.
    pub const RECEIPTS: &str = "receipts";
    /// Global and per-room account data.
    pub const ACCOUNT_DATA: &str = "account_data";
    /// Presence.
    pub const PRESENCE: &str = "presence";
    /// To-device messages.
    pub const TO_DEVICE: &str = "to_device";
    /// Ids of uploaded filters.
    pub const FILTERS: &str = "sync_filters";
    /// Typing changes (PostgreSQL: shared by the processes; SQLite keeps typing in memory).
    pub const TYPING: &str = "typing";
}

/// A user's membership row in one room.
#[derive(Debug, Clone)]
pub struct MembershipRow {
    /// The room.
    pub room_id: String,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The member event that set it.
    pub event_id: String,
    /// Stream position of that change.
    pub stream: i64,
    /// The user forgot the (left) room.
    pub forgotten: bool,
}

/// One stored receipt.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    /// Room.
    pub room_id: String,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// Who read.
    pub user_id: String,
    /// `''` for unthreaded, `main` or a thread root.
    pub thread_id: String,
    /// Up to which event.
    pub event_id: String,
    /// The receipt's data object as JSON text.
    pub data_json: String,
    /// Stream position.
    pub stream_id: i64,
}

/// One account data entry.
#[derive(Debug, Clone)]
pub struct AccountDataRow {
    /// `''` for global account data.
    pub room_id: String,
    /// Event type.
    pub data_type: String,
    /// Content as JSON text.
    pub content: String,
}

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    /// The user.
    pub user_id: String,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// Free-text status.
    pub status_msg: Option<String>,
    /// Last activity (ms since the epoch).
    pub last_active_ts: i64,
    /// Last sync or presence update of a local user.
    pub last_sync_ts: i64,
    /// Whether the user is active right now.
    pub currently_active: bool,
    /// Stream position of the last visible change.
    pub stream_id: i64,
}

/// One to-device message waiting for its device.
#[derive(Debug, Clone)]
pub struct ToDeviceRow {
    /// Stream position.
    pub stream_id: i64,
    /// Sender.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content as JSON text.
    pub content: String,
}

type PresenceTuple = (String, String, Option<String>, i64, i64, i64, i64);

fn presence_from(t: PresenceTuple) -> PresenceRow {
    PresenceRow {
        user_id: t.0,
        state: t.1,
        status_msg: t.2,
        last_active_ts: t.3,
        last_sync_ts: t.4,
        currently_active: t.5 != 0,
        stream_id: t.6,
    }
}

const PRESENCE_COLUMNS: &str =
    "p.user_id, p.state, p.status_msg, p.last_active_ts, p.last_sync_ts, p.currently_active, p.stream_id";

/// Room lists are bound in chunks so that no statement exceeds the backends' bind limits.
const ROOM_CHUNK: usize = 500;

impl Db {
    // ---- filters -------------------------------------------------------------------------

    /// Stores a filter and returns its new id.
    pub async fn insert_filter(&self, user_id: &str, json: &str) -> Result<String> {
        let mut tx = self.begin_write().await?;
        let id = Db::next_stream_position(&mut tx, streams::FILTERS).await?.to_string();
        sqlx::query("INSERT INTO sync_filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(&id)
            .bind(json)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A stored filter's JSON.
    pub async fn get_filter(&self, user_id: &str, filter_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT filter_json FROM sync_filters WHERE user_id = $1 AND filter_id = $2")
                .bind(user_id)
                .bind(filter_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    // ---- rooms and events ------------------------------------------------------------------

    /// Every membership row of a user, in one statement (one consistent snapshot).
    pub async fn user_memberships(&self, user_id: &str) -> Result<Vec<MembershipRow>> {
        let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT room_id, membership, event_id, stream_ordering, forgotten FROM room_memberships WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(room_id, membership, event_id, stream, forgotten)| MembershipRow {
                room_id,
                membership,
                event_id,
                stream,
                forgotten: forgotten != 0,
            })
            .collect())
    }

    /// Every `(room, user, stream)` membership whose latest change is after stream `from`.
    pub async fn membership_changes_after(&self, from: i64) -> Result<Vec<(String, String, i64)>> {
        Ok(sqlx::query_as("SELECT room_id, user_id, stream_ordering FROM room_memberships WHERE stream_ordering > $1")
            .bind(from)
            .fetch_all(self.pool())
            .await?)
    }

    /// Of `rooms`, those with timeline events in `(since, upto]`.
    pub async fn rooms_with_events(&self, rooms: &[&str], since: i64, upto: i64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in rooms.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT room_id FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2 \
                 AND outlier = 0 AND room_id IN ({})",
                placeholders(3, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String,)>(sql).bind(since).bind(upto);
            for r in chunk {
                q = q.bind(*r);
            }
            out.extend(q.fetch_all(self.pool()).await?.into_iter().map(|r| r.0));
        }
        Ok(out)
    }

    /// The stream position of an event.
    pub async fn event_stream(&self, event_id: &str) -> Result<Option<(String, i64)>> {
        Ok(sqlx::query_as("SELECT room_id, stream_ordering FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.pool())
            .await?)
    }

    // ---- receipts --------------------------------------------------------------------------

    /// Receipts in `rooms` with positions in `(since, upto]`; private receipts only of `me`.
    pub async fn receipts_since(&self, rooms: &[&str], me: &str, since: i64, upto: i64) -> Result<Vec<ReceiptRow>> {
        let mut out = Vec::new();
        for chunk in rooms.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, data_json, stream_id FROM receipts \
                 WHERE stream_id > $1 AND stream_id <= $2 AND (receipt_type <> 'm.read.private' OR user_id = $3) \
                 AND room_id IN ({}) ORDER BY stream_id",
                placeholders(4, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, String, String, String, String, i64)>(sql)
                .bind(since)
                .bind(upto)
                .bind(me);
            for r in chunk {
                q = q.bind(*r);
            }
            for t in q.fetch_all(self.pool()).await? {
                out.push(ReceiptRow {
                    room_id: t.0,
                    receipt_type: t.1,
                    user_id: t.2,
                    thread_id: t.3,
                    event_id: t.4,
                    data_json: t.5,
                    stream_id: t.6,
                });
            }
        }
        Ok(out)
    }

    /// The event a user's receipt currently points at, with its stream position.
    pub async fn receipt_event(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        receipt_type: &str,
        user_id: &str,
        thread_id: &str,
    ) -> Result<Option<(String, Option<i64>)>> {
        Ok(sqlx::query_as(
            "SELECT r.event_id, e.stream_ordering FROM receipts r LEFT JOIN events e ON e.event_id = r.event_id \
             WHERE r.room_id = $1 AND r.receipt_type = $2 AND r.user_id = $3 AND r.thread_id = $4",
        )
        .bind(room_id)
        .bind(receipt_type)
        .bind(user_id)
        .bind(thread_id)
        .fetch_optional(&mut *tx.tx)
        .await?)
    }

    /// Inserts or replaces a receipt.
    #[allow(clippy::too_many_arguments)]
    pub async fn upsert_receipt(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        receipt_type: &str,
        user_id: &str,
        thread_id: &str,
        event_id: &str,
        data_json: &str,
        stream_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, data_json, stream_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id, receipt_type, user_id, thread_id) \
             DO UPDATE SET event_id = excluded.event_id, data_json = excluded.data_json, stream_id = excluded.stream_id",
        )
        .bind(room_id)
        .bind(receipt_type)
        .bind(user_id)
        .bind(thread_id)
        .bind(event_id)
        .bind(data_json)
        .bind(stream_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    // ---- account data ------------------------------------------------------------------------

    /// A user's account data changed in `(since, upto]`.
    pub async fn account_data_since(&self, user_id: &str, since: i64, upto: i64) -> Result<Vec<AccountDataRow>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT room_id, data_type, content FROM account_data WHERE user_id = $1 AND stream_id > $2 \
             AND stream_id <= $3 ORDER BY stream_id",
        )
        .bind(user_id)
        .bind(since)
        .bind(upto)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(room_id, data_type, content)| AccountDataRow { room_id, data_type, content })
            .collect())
    }

    /// One account data entry (`room_id` `''` for global).
    pub async fn get_account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
                .bind(user_id)
                .bind(room_id)
                .bind(data_type)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Same, inside a write transaction (read-modify-write of tags).
    pub async fn get_account_data_tx(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        room_id: &str,
        data_type: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
                .bind(user_id)
                .bind(room_id)
                .bind(data_type)
                .fetch_optional(&mut *tx.tx)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Sets one account data entry at `stream_id`.
    pub async fn set_account_data(
        &self,
        tx: &mut WriteTx,
        user_id: &str,
        room_id: &str,
        data_type: &str,
        content: &str,
        stream_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = excluded.content, \
             stream_id = excluded.stream_id",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .bind(content)
        .bind(stream_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    // ---- presence ----------------------------------------------------------------------------

    /// Presence changed in `(since, upto]` of `user_id` and of users sharing a joined room with them.
    pub async fn presence_since(&self, user_id: &str, since: i64, upto: i64) -> Result<Vec<PresenceRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PRESENCE_COLUMNS} FROM presence p WHERE p.stream_id > $1 AND p.stream_id <= $2 AND \
             (p.user_id = $3 OR EXISTS (SELECT 1 FROM room_memberships a JOIN room_memberships b \
             ON b.room_id = a.room_id WHERE a.user_id = $3 AND a.membership = 'join' \
             AND b.user_id = p.user_id AND b.membership = 'join')) ORDER BY p.stream_id"
        ));
        let rows: Vec<PresenceTuple> =
            sqlx::query_as(sql).bind(since).bind(upto).bind(user_id).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(presence_from).collect())
    }

    /// One user's presence.
    pub async fn get_presence(&self, user_id: &str) -> Result<Option<PresenceRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {PRESENCE_COLUMNS} FROM presence p WHERE p.user_id = $1"));
        let row: Option<PresenceTuple> = sqlx::query_as(sql).bind(user_id).fetch_optional(self.pool()).await?;
        Ok(row.map(presence_from))
    }

    /// Writes a user's presence row.
    pub async fn upsert_presence(&self, tx: &mut WriteTx, p: &PresenceRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, last_sync_ts, currently_active, stream_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, \
             status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts, \
             last_sync_ts = excluded.last_sync_ts, currently_active = excluded.currently_active, \
             stream_id = excluded.stream_id",
        )
        .bind(&p.user_id)
        .bind(&p.state)
        .bind(p.status_msg.as_deref())
        .bind(p.last_active_ts)
        .bind(p.last_sync_ts)
        .bind(p.currently_active as i64)
        .bind(p.stream_id)
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Local users (`user_id` ending in `suffix`) who look online or idle but were last seen
    /// syncing before `seen_before`.
    pub async fn stale_presence(&self, suffix: &str, seen_before: i64) -> Result<Vec<PresenceRow>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PRESENCE_COLUMNS} FROM presence p WHERE p.user_id LIKE $1 AND p.state <> 'offline' \
             AND p.last_sync_ts < $2"
        ));
        let rows: Vec<PresenceTuple> =
            sqlx::query_as(sql).bind(format!("%{suffix}")).bind(seen_before).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(presence_from).collect())
    }

    /// Marks these users as syncing at `now` (ms): their long-polls are in flight in this
    /// process, which another process's offline sweep cannot see.
    pub async fn touch_last_sync(&self, users: &[String], now: i64) -> Result<()> {
        for chunk in users.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!(
                "UPDATE presence SET last_sync_ts = $1 WHERE last_sync_ts < $1 AND user_id IN ({})",
                placeholders(2, chunk.len())
            ));
            let mut q = sqlx::query(sql).bind(now);
            for u in chunk {
                q = q.bind(u);
            }
            q.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Local users sharing a joined room with `user_id` (including the user if joined anywhere).
    pub async fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b ON b.room_id = a.room_id \
             WHERE a.user_id = $1 AND a.membership = 'join' AND b.membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    // ---- to-device ---------------------------------------------------------------------------

    /// Records a to-device transaction; false if it was seen before (the send is a retry).
    pub async fn insert_to_device_txn(
        &self,
        tx: &mut WriteTx,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
    ) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO to_device_txns (sender, sender_device, txn_id, created_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(sender)
        .bind(sender_device)
        .bind(txn_id)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Forgets to-device transaction ids older than `before` (ms).
    pub async fn prune_to_device_txns(&self, before: i64) -> Result<u64> {
        let res =
            sqlx::query("DELETE FROM to_device_txns WHERE created_ts < $1").bind(before).execute(self.pool()).await?;
        Ok(res.rows_affected())
    }

    /// Queues one to-device message.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_to_device(
        &self,
        tx: &mut WriteTx,
        stream_id: i64,
        user_id: &str,
        device_id: &str,
        sender: &str,
        event_type: &str,
        content: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO to_device_messages (stream_id, user_id, device_id, sender, event_type, content, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(stream_id)
        .bind(user_id)
        .bind(device_id)
        .bind(sender)
        .bind(event_type)
        .bind(content)
        .bind(now_ms())
        .execute(&mut *tx.tx)
        .await?;
        Ok(())
    }

    /// Up to `limit` messages for a device with positions in `(since, upto]`, oldest first.
    pub async fn to_device_since(
        &self,
        user_id: &str,
        device_id: &str,
        since: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceRow>> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT stream_id, sender, event_type, content FROM to_device_messages WHERE user_id = $1 \
             AND device_id = $2 AND stream_id > $3 AND stream_id <= $4 ORDER BY stream_id LIMIT {limit}",
        )))
        .bind(user_id)
        .bind(device_id)
        .bind(since)
        .bind(upto)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(stream_id, sender, event_type, content)| ToDeviceRow { stream_id, sender, event_type, content })
            .collect())
    }

    /// Deletes a device's messages up to `upto` (the device has acknowledged them); a read
    /// first, so that the common case (nothing to delete) takes no write lock.
    pub async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
        let any: Option<(i64,)> = sqlx::query_as(
            "SELECT stream_id FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 LIMIT 1",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(upto)
        .fetch_optional(self.pool())
        .await?;
        if any.is_none() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3")
            .bind(user_id)
            .bind(device_id)
            .bind(upto)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes messages waiting for devices that no longer exist.
    pub async fn delete_orphan_to_device(&self) -> Result<u64> {
        let res = sqlx::query(
            "DELETE FROM to_device_messages WHERE NOT EXISTS (SELECT 1 FROM devices d \
             WHERE d.user_id = to_device_messages.user_id AND d.device_id = to_device_messages.device_id)",
        )
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Device ids of a user (for `*` to-device recipients).
    pub async fn device_ids(&self, user_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id")
                .bind(user_id)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    // ---- typing (PostgreSQL, migration 14) ---------------------------------------------

    /// Starts (`until` set, ms) or stops a user's typing in `tx`; whether the set of typing
    /// users changed (a renewal only moves the deadline).
    pub async fn typing_set(&self, tx: &mut WriteTx, room_id: &str, user_id: &str, until: Option<i64>) -> Result<bool> {
        let Some(until) = until else {
            let gone: Option<(String,)> =
                sqlx::query_as("DELETE FROM typing WHERE room_id = $1 AND user_id = $2 RETURNING user_id")
                    .bind(room_id)
                    .bind(user_id)
                    .fetch_optional(&mut *tx.tx)
                    .await?;
            return Ok(gone.is_some());
        };
        let renewed: Option<(i64,)> =
            sqlx::query_as("UPDATE typing SET until_ts = $3 WHERE room_id = $1 AND user_id = $2 RETURNING until_ts")
                .bind(room_id)
                .bind(user_id)
                .bind(until)
                .fetch_optional(&mut *tx.tx)
                .await?;
        if renewed.is_some() {
            return Ok(false);
        }
        let added = sqlx::query(
            "INSERT INTO typing (room_id, user_id, until_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET until_ts = excluded.until_ts",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(until)
        .execute(&mut *tx.tx)
        .await?;
        Ok(added.rows_affected() > 0)
    }

    /// Deletes the typing rows whose time is up at `now` (ms); returns them by room.
    pub async fn typing_expire(&self, tx: &mut WriteTx, now: i64) -> Result<Vec<(String, Vec<String>)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("DELETE FROM typing WHERE until_ts <= $1 RETURNING room_id, user_id")
                .bind(now)
                .fetch_all(&mut *tx.tx)
                .await?;
        let mut by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (room, user) in rows {
            by.entry(room).or_default().push(user);
        }
        Ok(by.into_iter().collect())
    }

    /// The typing position and every typing row, read in one snapshot.
    pub async fn typing_snapshot(&self) -> Result<(i64, Vec<(String, String, i64)>)> {
        // position, room, user, until (NULLs when nobody types)
        type Row = (i64, Option<String>, Option<String>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.value, t.room_id, t.user_id, t.until_ts FROM stream_counters c \
             LEFT JOIN typing t ON TRUE WHERE c.name = $1",
        )
        .bind(streams::TYPING)
        .fetch_all(self.pool())
        .await?;
        let serial = rows.first().map_or(0, |r| r.0);
        let typing = rows.into_iter().filter_map(|(_, r, u, t)| Some((r?, u?, t?))).collect();
        Ok((serial, typing))
    }

    /// Makes sure the typing counter exists and is at least `floor`: typing positions were
    /// the clock in milliseconds before they were shared, and tokens must never go back.
    pub async fn typing_counter_at_least(&self, floor: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO stream_counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = GREATEST(stream_counters.value, excluded.value)",
        )
        .bind(streams::TYPING)
        .bind(floor)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Groups rows by room.
pub fn by_room<T>(rows: Vec<T>, room_of: impl Fn(&T) -> &str) -> HashMap<String, Vec<T>> {
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        out.entry(room_of(&row).to_owned()).or_default().push(row);
    }
    out
}

impl Db {
    /// The current positions of several streams in one read (absent counters are 0).
    pub async fn stream_positions(&self, names: &[&str]) -> Result<HashMap<String, i64>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT name, value FROM stream_counters WHERE name IN ({})",
            placeholders(1, names.len())
        ));
        let mut q = sqlx::query_as::<_, (String, i64)>(sql);
        for n in names {
            q = q.bind(*n);
        }
        Ok(q.fetch_all(self.pool()).await?.into_iter().collect())
    }

    /// The state group after the last timeline event of a room at or before stream `pos`.
    pub async fn state_group_at_stream(&self, room_id: &str, pos: i64) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND outlier = 0 \
             AND rejected = 0 AND state_group IS NOT NULL ORDER BY stream_ordering DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(pos)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// `(joined, invited)` member counts of a room.
    pub async fn member_counts(&self, room_id: &str) -> Result<(i64, i64)> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT membership, COUNT(*) FROM room_memberships WHERE room_id = $1 \
             AND membership IN ('join', 'invite') GROUP BY membership",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        let count = |m: &str| rows.iter().find(|r| r.0 == m).map(|r| r.1).unwrap_or(0);
        Ok((count("join"), count("invite")))
    }

    /// Up to `limit` users with one of `memberships`, in the order they got it.
    pub async fn members_in_order(&self, room_id: &str, memberships: &[&str], limit: i64) -> Result<Vec<String>> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT user_id FROM room_memberships WHERE room_id = $1 AND membership IN ({}) \
             ORDER BY stream_ordering, user_id LIMIT {limit}",
            placeholders(2, memberships.len())
        ));
        let mut q = sqlx::query_as::<_, (String,)>(sql).bind(room_id);
        for m in memberships {
            q = q.bind(*m);
        }
        Ok(q.fetch_all(self.pool()).await?.into_iter().map(|r| r.0).collect())
    }
}

/// Rooms per statement of the batched reads below (well under both databases' bind limits).
const ROOMS_PER_STATEMENT: usize = 500;

impl Db {
    /// [`Db::state_group_at_stream`] for several `(room, position)` pairs in one statement per
    /// 500: an initial sync asks it for every room, and one round trip per room was most of its
    /// time on PostgreSQL. Pairs without a state group are absent from the answer.
    pub async fn state_groups_at_streams(&self, pairs: &[(&str, i64)]) -> Result<HashMap<(String, i64), i64>> {
        let mut out = HashMap::with_capacity(pairs.len());
        for chunk in pairs.chunks(ROOMS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(CAST(${} AS TEXT), CAST(${} AS BIGINT))", 2 * i + 1, 2 * i + 2))
                .collect();
            // A correlated subquery per pair: each is the same index probe as the one-room read.
            let sql = sqlx::AssertSqlSafe(format!(
                "WITH q(room_id, pos) AS (VALUES {}) SELECT q.room_id, q.pos, (SELECT e.state_group FROM events e \
                 WHERE e.room_id = q.room_id AND e.stream_ordering <= q.pos AND e.outlier = 0 AND e.rejected = 0 \
                 AND e.state_group IS NOT NULL ORDER BY e.stream_ordering DESC LIMIT 1) FROM q",
                values.join(",")
            ));
            let mut q = sqlx::query_as::<_, (String, i64, Option<i64>)>(sql);
            for (room, pos) in chunk {
                q = q.bind(*room).bind(*pos);
            }
            for (room, pos, group) in q.fetch_all(self.pool()).await? {
                if let Some(g) = group {
                    out.insert((room, pos), g);
                }
            }
        }
        Ok(out)
    }

    /// [`Db::member_counts`] of several rooms, one statement per 500; rooms without joined or
    /// invited members are absent.
    pub async fn member_counts_of(&self, room_ids: &[&str]) -> Result<HashMap<String, (i64, i64)>> {
        let mut out: HashMap<String, (i64, i64)> = HashMap::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(ROOMS_PER_STATEMENT) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, membership, COUNT(*) FROM room_memberships WHERE room_id IN ({}) \
                 AND membership IN ('join', 'invite') GROUP BY room_id, membership",
                placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, i64)>(sql);
            for r in chunk {
                q = q.bind(*r);
            }
            for (room, membership, n) in q.fetch_all(self.pool()).await? {
                let e = out.entry(room).or_default();
                if membership == "join" {
                    e.0 = n;
                } else {
                    e.1 = n;
                }
            }
        }
        Ok(out)
    }

    /// [`Db::members_in_order`] of several rooms: per room, up to `limit` users who are joined
    /// or invited, and up to `limit` who left or were banned, each in the order they got it.
    /// Answers `(room, (current, former))`.
    pub async fn members_in_order_of(
        &self,
        room_ids: &[&str],
        limit: i64,
    ) -> Result<HashMap<String, (Vec<String>, Vec<String>)>> {
        let mut out: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(ROOMS_PER_STATEMENT) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, user_id, is_current FROM (SELECT room_id, user_id, is_current, ROW_NUMBER() OVER \
                 (PARTITION BY room_id, is_current ORDER BY stream_ordering, user_id) AS n FROM (SELECT room_id, user_id, \
                 stream_ordering, CASE WHEN membership IN ('join', 'invite') THEN 1 ELSE 0 END AS is_current \
                 FROM room_memberships WHERE room_id IN ({}) AND membership IN ('join', 'invite', 'leave', 'ban')) m) r \
                 WHERE n <= {limit} ORDER BY room_id, is_current, n",
                placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, i32)>(sql);
            for r in chunk {
                q = q.bind(*r);
            }
            for (room, user, is_current) in q.fetch_all(self.pool()).await? {
                let e = out.entry(room).or_default();
                if is_current == 1 { e.0.push(user) } else { e.1.push(user) }
            }
        }
        Ok(out)
    }
}
