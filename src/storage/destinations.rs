//! SQL of the federation sender's retry state per destination (table `destinations`, migration
//! 20): written by `federation/sender.rs` after each attempt, read by the admin API
//! (`/_synapse/admin/v1/federation/destinations`), reset by `reset_connection`.

use super::{Db, now_ms, placeholders};
use crate::error::Result;

/// One destination's retry state, in Synapse's shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Destination {
    /// The server name.
    pub destination: String,
    /// When the last failed attempt was (ms); 0 when the last attempt succeeded.
    pub retry_last_ts: i64,
    /// The wait before the next attempt (ms); 0 when not backing off.
    pub retry_interval: i64,
    /// When the current run of failures began (ms), if the destination is failing.
    pub failure_ts: Option<i64>,
    /// Stream position of the newest event delivered in a successful transaction.
    pub last_successful_stream_ordering: Option<i64>,
}

type Row = (String, i64, i64, Option<i64>, Option<i64>);

fn destination((destination, retry_last_ts, retry_interval, failure_ts, last): Row) -> Destination {
    Destination { destination, retry_last_ts, retry_interval, failure_ts, last_successful_stream_ordering: last }
}

const COLUMNS: &str = "destination, retry_last_ts, retry_interval, failure_ts, last_successful_stream_ordering";

impl Db {
    /// Records a failed attempt and the wait before the next one.
    pub async fn destination_failed(&self, dest: &str, retry_interval_ms: i64) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO destinations (destination, retry_last_ts, retry_interval, failure_ts) VALUES ($1, $2, $3, $2) \
             ON CONFLICT (destination) DO UPDATE SET retry_last_ts = $2, retry_interval = $3, \
             failure_ts = COALESCE(destinations.failure_ts, $2)",
        )
        .bind(dest)
        .bind(now)
        .bind(retry_interval_ms.max(1))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records a delivered transaction (its outbox rows still present): no backoff, and the
    /// newest event it carried.
    pub async fn destination_succeeded(&self, dest: &str, outbox_ids: &[i64]) -> Result<()> {
        let mut newest: Option<i64> = None;
        for chunk in outbox_ids.chunks(100) {
            let sql = format!(
                "SELECT MAX(e.stream_ordering) FROM federation_outbox o JOIN events e ON e.event_id = o.payload \
                 WHERE o.kind = 'pdu' AND o.id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (Option<i64>,)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            newest = newest.max(q.fetch_one(self.pool()).await?.0);
        }
        sqlx::query(
            "INSERT INTO destinations (destination, retry_last_ts, retry_interval, failure_ts, last_successful_stream_ordering) \
             VALUES ($1, 0, 0, NULL, $2) ON CONFLICT (destination) DO UPDATE SET retry_last_ts = 0, retry_interval = 0, \
             failure_ts = NULL, last_successful_stream_ordering = COALESCE($2, destinations.last_successful_stream_ordering)",
        )
        .bind(dest)
        .bind(newest)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether an admin reset the destination's backoff since its last failure.
    pub async fn destination_reset(&self, dest: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT retry_interval FROM destinations WHERE destination = $1")
            .bind(dest)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some_and(|r| r.0 == 0))
    }

    /// Clears a destination's backoff; false if it is unknown.
    pub async fn reset_destination(&self, dest: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE destinations SET retry_last_ts = 0, retry_interval = 0, failure_ts = NULL WHERE destination = $1",
        )
        .bind(dest)
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Every destination the sender has tried.
    pub async fn destinations(&self) -> Result<Vec<Destination>> {
        let sql = format!("SELECT {COLUMNS} FROM destinations ORDER BY destination");
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(destination).collect())
    }

    /// One destination.
    pub async fn destination(&self, dest: &str) -> Result<Option<Destination>> {
        let sql = format!("SELECT {COLUMNS} FROM destinations WHERE destination = $1");
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(dest).fetch_optional(self.pool()).await?;
        Ok(row.map(destination))
    }

    /// Rooms where a user of `dest` is joined, each with the room's newest event at or before
    /// `up_to` (the destination's last successful position), ordered by room id.
    pub async fn destination_rooms(&self, dest: &str, up_to: Option<i64>) -> Result<Vec<(String, Option<i64>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT room_id, user_id FROM room_memberships WHERE membership = 'join' AND user_id LIKE $1",
        )
        .bind(format!("%:{dest}"))
        .fetch_all(self.pool())
        .await?;
        let suffix = format!(":{dest}");
        let mut rooms: Vec<String> = rows
            .into_iter()
            // `LIKE` treats `_` as a wildcard: the server part must match exactly.
            .filter(|(_, user)| user.split_once(':').is_some_and(|(_, server)| format!(":{server}") == suffix))
            .map(|(room, _)| room)
            .collect();
        rooms.sort();
        rooms.dedup();
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let stream: Option<(Option<i64>,)> = match up_to {
                Some(up_to) => Some(
                    sqlx::query_as(
                        "SELECT MAX(stream_ordering) FROM events WHERE room_id = $1 AND stream_ordering <= $2",
                    )
                    .bind(&room)
                    .bind(up_to)
                    .fetch_one(self.pool())
                    .await?,
                ),
                None => None,
            };
            out.push((room, stream.and_then(|s| s.0)));
        }
        Ok(out)
    }
}
