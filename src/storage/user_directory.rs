//! SQL of the user directory: who a user may find (users sharing a room with them, and users
//! in rooms anyone may join), with the profile a search shows; and the rooms two users share.

use super::Db;
use crate::error::Result;

/// One user the searcher may find, as one of their joined memberships.
#[derive(Debug, Clone)]
pub struct DirectoryRow {
    pub user_id: String,
    /// The member event of one of the rooms that make the user visible.
    pub member_event_id: String,
    /// Present for local users: their global profile.
    pub local: Option<LocalProfile>,
}

/// A local user's global profile.
#[derive(Debug, Clone)]
pub struct LocalProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub deactivated: bool,
}

/// Rooms per statement in `IN (...)` lists.
const ROOM_CHUNK: usize = 500;

type Row = (String, String, Option<String>, Option<String>, Option<String>, Option<i64>);

fn directory_row((user_id, member_event_id, local_id, displayname, avatar_url, deactivated): Row) -> DirectoryRow {
    DirectoryRow {
        user_id,
        member_event_id,
        local: local_id.map(|_| LocalProfile { displayname, avatar_url, deactivated: deactivated.unwrap_or(0) != 0 }),
    }
}

impl Db {
    /// The current `m.room.join_rules` event of every room: `(room_id, event_id)`.
    pub async fn join_rule_events(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT room_id, event_id FROM current_state WHERE event_type = 'm.room.join_rules' AND state_key = ''",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Joined members, other than `searcher`, of the rooms `searcher` is joined to and of
    /// `public_rooms`. A user may appear once per room.
    pub async fn directory_candidates(&self, searcher: &str, public_rooms: &[&str]) -> Result<Vec<DirectoryRow>> {
        const COLUMNS: &str = "SELECT m.user_id, m.event_id, u.user_id, u.displayname, u.avatar_url, u.deactivated \
             FROM room_memberships m LEFT JOIN users u ON u.user_id = m.user_id \
             WHERE m.membership = 'join' AND m.user_id <> $1 AND m.room_id IN ";
        let shared = sqlx::AssertSqlSafe(format!(
            "{COLUMNS} (SELECT room_id FROM room_memberships WHERE user_id = $1 AND membership = 'join')"
        ));
        let rows: Vec<Row> = sqlx::query_as(shared).bind(searcher).fetch_all(self.pool()).await?;
        let mut out: Vec<DirectoryRow> = rows.into_iter().map(directory_row).collect();
        for chunk in public_rooms.chunks(ROOM_CHUNK) {
            let sql = sqlx::AssertSqlSafe(format!("{COLUMNS} ({})", super::placeholders(2, chunk.len())));
            let mut q = sqlx::query_as::<_, Row>(sql).bind(searcher);
            for room in chunk {
                q = q.bind(*room);
            }
            out.extend(q.fetch_all(self.pool()).await?.into_iter().map(directory_row));
        }
        Ok(out)
    }

    /// The rooms both users are joined to, in room id order, after `after`, at most `limit`;
    /// and how many there are in all.
    pub async fn mutual_rooms(&self, a: &str, b: &str, after: Option<&str>, limit: i64) -> Result<(Vec<String>, i64)> {
        const FROM: &str = "FROM room_memberships x JOIN room_memberships y ON y.room_id = x.room_id \
             WHERE x.user_id = $1 AND x.membership = 'join' AND y.user_id = $2 AND y.membership = 'join'";
        let count: (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) {FROM}")))
            .bind(a)
            .bind(b)
            .fetch_one(self.pool())
            .await?;
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT x.room_id {FROM} AND x.room_id > $3 ORDER BY x.room_id LIMIT {limit}"
        )))
        .bind(a)
        .bind(b)
        .bind(after.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        Ok((rows.into_iter().map(|r| r.0).collect(), count.0))
    }
}
