//! SQL of the server administration API (`/_synapse/admin/...`) and of `/health`: listing and
//! changing accounts, listing rooms with their statistics, reading and deleting event reports.

use super::Db;
use crate::error::Result;

/// An account as the admin API shows it.
#[derive(Debug, Clone)]
pub struct AdminUserRow {
    /// Full user id.
    pub user_id: String,
    /// Server administrator.
    pub is_admin: bool,
    /// Deactivated.
    pub deactivated: bool,
    /// Erased (deactivated with `erase`: profile removed).
    pub erased: bool,
    /// Profile display name.
    pub displayname: Option<String>,
    /// Profile avatar.
    pub avatar_url: Option<String>,
    /// Registration time, ms.
    pub creation_ts: i64,
    /// Latest use of any of the user's devices, ms.
    pub last_seen_ts: Option<i64>,
    /// Locked (tokens refused, no login).
    pub locked: bool,
    /// Suspended (read-only).
    pub suspended: bool,
    /// Shadow-banned (what they send is dropped unseen).
    pub shadow_banned: bool,
}

type AdminUserTuple = (String, i64, i64, i64, Option<String>, Option<String>, i64, Option<i64>, i64, i64, i64);

const USER_COLUMNS: &str = "SELECT user_id, is_admin, deactivated, erased, displayname, avatar_url, created_ts, \
     (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = users.user_id) AS last_seen_ts, locked, suspended, \
     (SELECT COUNT(*) FROM shadow_banned_users s WHERE s.user_id = users.user_id) AS shadow_banned FROM users";

fn admin_user(t: AdminUserTuple) -> AdminUserRow {
    AdminUserRow {
        user_id: t.0,
        is_admin: t.1 != 0,
        deactivated: t.2 != 0,
        erased: t.3 != 0,
        displayname: t.4,
        avatar_url: t.5,
        creation_ts: t.6,
        last_seen_ts: t.7,
        locked: t.8 != 0,
        suspended: t.9 != 0,
        shadow_banned: t.10 != 0,
    }
}

/// Which accounts to list, in which order (`GET /_synapse/admin/v2/users`).
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Substring of the user id (`user_id`).
    pub user_id: Option<String>,
    /// Substring of the localpart or the display name (`name`; replaces `user_id`).
    pub name: Option<String>,
    /// Only deactivated (`Some(true)`) or only active (`Some(false)`) accounts.
    pub deactivated: Option<bool>,
    /// Only admins (`Some(true)`) or only non-admins (`Some(false)`).
    pub admins: Option<bool>,
    /// Include locked accounts (Synapse leaves them out unless asked).
    pub include_locked: bool,
    /// Column to sort by (one of [`USER_ORDER_COLUMNS`]' values).
    pub order_by: &'static str,
    /// Descending.
    pub backwards: bool,
    /// Offset.
    pub from: i64,
    /// Page size.
    pub limit: i64,
}

/// `order_by` values of the users list and the column each sorts by. Guests and user types do
/// not exist here, so sorting by them is sorting by name. Display
/// names sort without regard to case, the same on both backends (collations differ).
pub const USER_ORDER_COLUMNS: &[(&str, &str)] = &[
    ("name", "user_id"),
    ("is_guest", "user_id"),
    ("admin", "is_admin"),
    ("user_type", "user_id"),
    ("deactivated", "deactivated"),
    ("shadow_banned", "shadow_banned"),
    ("displayname", "LOWER(displayname)"),
    ("avatar_url", "avatar_url"),
    ("creation_ts", "created_ts"),
    ("last_seen_ts", "last_seen_ts"),
    ("locked", "locked"),
];

/// `%…%` for `LIKE … ESCAPE '\'` matching `needle` literally.
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::from("%");
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A room with the statistics the admin API lists (state is read separately).
#[derive(Debug, Clone)]
pub struct AdminRoomRow {
    /// Room id.
    pub room_id: String,
    /// Room version.
    pub version: String,
    /// Published in the room directory.
    pub public: bool,
    /// Number of current state entries.
    pub state_events: i64,
    /// Joined members.
    pub joined_members: i64,
    /// Joined members that are accounts of this server.
    pub joined_local_members: i64,
    /// Local members (any membership) that have not forgotten the room.
    pub local_not_forgotten: i64,
}

type AdminRoomTuple = (String, String, i64, i64, i64, i64, i64);

/// A stored report of an event.
#[derive(Debug, Clone)]
pub struct EventReportRow {
    /// Report id.
    pub id: String,
    /// When it was received, ms.
    pub received_ts: i64,
    /// Room of the event.
    pub room_id: String,
    /// The reported event.
    pub event_id: String,
    /// Who reported it.
    pub reporter: String,
    /// Their reason.
    pub reason: Option<String>,
    /// Their score, if given.
    pub score: Option<i64>,
    /// The event's sender, when the event is held here.
    pub sender: Option<String>,
}

type EventReportTuple =
    (String, i64, Option<String>, Option<String>, String, Option<String>, Option<i64>, Option<String>);

const REPORT_COLUMNS: &str = "SELECT r.report_id, r.received_ts, r.room_id, r.event_id, r.reporter, r.reason, r.score, \
     e.sender FROM reports r LEFT JOIN events e ON e.event_id = r.event_id WHERE r.kind = 'event'";

fn event_report(t: EventReportTuple) -> EventReportRow {
    EventReportRow {
        id: t.0,
        received_ts: t.1,
        room_id: t.2.unwrap_or_default(),
        event_id: t.3.unwrap_or_default(),
        reporter: t.4,
        reason: t.5,
        score: t.6,
        sender: t.7,
    }
}

/// Which event reports to list (`GET /_synapse/admin/v1/event_reports`).
#[derive(Debug, Clone, Default)]
pub struct ReportQuery {
    /// Substring of the reporter's user id.
    pub user_id: Option<String>,
    /// Substring of the room id.
    pub room_id: Option<String>,
    /// Oldest first (`dir=f`); the default is newest first.
    pub forwards: bool,
    /// Offset.
    pub from: i64,
    /// Page size.
    pub limit: i64,
}

impl Db {
    /// A trivial query: whether the database answers at all (`/health`).
    pub async fn ping(&self) -> Result<()> {
        let _: (i64,) = sqlx::query_as("SELECT CAST(1 AS BIGINT)").fetch_one(self.pool()).await?;
        Ok(())
    }

    /// One page of accounts and how many match in all.
    pub async fn admin_list_users(&self, q: &UserQuery) -> Result<(Vec<AdminUserRow>, i64)> {
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(name) = &q.name {
            binds.push(contains_pattern(&name.to_lowercase()));
            let n = binds.len();
            conditions
                .push(format!("(LOWER(localpart) LIKE ${n} ESCAPE '\\' OR LOWER(displayname) LIKE ${n} ESCAPE '\\')"));
        } else if let Some(user_id) = &q.user_id {
            binds.push(contains_pattern(user_id));
            conditions.push(format!("user_id LIKE ${} ESCAPE '\\'", binds.len()));
        }
        if let Some(deactivated) = q.deactivated {
            conditions.push(format!("deactivated = {}", deactivated as i64));
        }
        if let Some(admins) = q.admins {
            conditions.push(format!("is_admin = {}", admins as i64));
        }
        if !q.include_locked {
            conditions.push("locked = 0".to_owned());
        }
        let filter = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        let total_sql = format!("SELECT COUNT(*) FROM users{filter}");
        let mut total = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(total_sql));
        for b in &binds {
            total = total.bind(b);
        }
        let (total,) = total.fetch_one(self.pool()).await?;
        // `order_by` is one of USER_ORDER_COLUMNS, never the client's text. NULLs sort last on
        // both backends (they differ by default).
        let column = q.order_by;
        let dir = if q.backwards { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT * FROM ({USER_COLUMNS}{filter}) u ORDER BY CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, \
             {column} {dir}, user_id ASC LIMIT {} OFFSET {}",
            q.limit, q.from
        );
        let mut page = sqlx::query_as::<_, AdminUserTuple>(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            page = page.bind(b);
        }
        let rows = page.fetch_all(self.pool()).await?;
        Ok((rows.into_iter().map(admin_user).collect(), total))
    }

    /// One account as the admin API shows it.
    pub async fn admin_get_user(&self, user_id: &str) -> Result<Option<AdminUserRow>> {
        let sql = format!("{USER_COLUMNS} WHERE user_id = $1");
        let row: Option<AdminUserTuple> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_optional(self.pool()).await?;
        Ok(row.map(admin_user))
    }

    /// Grants or revokes server administration.
    pub async fn admin_set_admin(&self, user_id: &str, admin: bool) -> Result<()> {
        sqlx::query("UPDATE users SET is_admin = $1 WHERE user_id = $2")
            .bind(admin as i64)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        // Sessions remember the flag for a few seconds (see `find_token`).
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Locks or unlocks an account; its sessions see the change at once (tokens are cached).
    pub async fn admin_set_locked(&self, user_id: &str, locked: bool) -> Result<()> {
        sqlx::query("UPDATE users SET locked = $1 WHERE user_id = $2")
            .bind(locked as i64)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Suspends or reinstates an account; its sessions see the change at once.
    pub async fn admin_set_suspended(&self, user_id: &str, suspended: bool) -> Result<()> {
        sqlx::query("UPDATE users SET suspended = $1 WHERE user_id = $2")
            .bind(suspended as i64)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        self.forget_tokens_of(user_id).await;
        Ok(())
    }

    /// Makes a deactivated account active again (without a password until one is set).
    pub async fn admin_reactivate(&self, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE users SET deactivated = 0, erased = 0 WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks a (deactivated) account erased and removes its profile.
    pub async fn admin_erase(&self, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE users SET erased = 1, displayname = NULL, avatar_url = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every room a user has a membership in, with that membership (any user, local or not).
    pub async fn admin_memberships_of(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT room_id, membership FROM room_memberships WHERE user_id = $1 ORDER BY room_id")
            .bind(user_id)
            .fetch_all(self.pool())
            .await?)
    }

    /// Every room this server holds, with its statistics; `room_id` narrows to one room.
    pub async fn admin_rooms(&self, room_id: Option<&str>) -> Result<Vec<AdminRoomRow>> {
        let filter = if room_id.is_some() { " WHERE r.room_id = $1" } else { "" };
        let sql = format!(
            "SELECT r.room_id, r.room_version, r.is_public, \
             (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id), \
             (SELECT COUNT(*) FROM room_memberships m WHERE m.room_id = r.room_id AND m.membership = 'join'), \
             (SELECT COUNT(*) FROM room_memberships m JOIN users u ON u.user_id = m.user_id \
              WHERE m.room_id = r.room_id AND m.membership = 'join'), \
             (SELECT COUNT(*) FROM room_memberships m JOIN users u ON u.user_id = m.user_id \
              WHERE m.room_id = r.room_id AND m.forgotten = 0) \
             FROM rooms r{filter}"
        );
        let mut query = sqlx::query_as::<_, AdminRoomTuple>(sqlx::AssertSqlSafe(sql));
        if let Some(room_id) = room_id {
            query = query.bind(room_id);
        }
        let rows = query.fetch_all(self.pool()).await?;
        Ok(rows
            .into_iter()
            .map(|t| AdminRoomRow {
                room_id: t.0,
                version: t.1,
                public: t.2 != 0,
                state_events: t.3,
                joined_members: t.4,
                joined_local_members: t.5,
                local_not_forgotten: t.6,
            })
            .collect())
    }

    /// The JSON of the current state events with an empty state key and one of `types`, of
    /// every room (or of `room_id`): `(room_id, type, json)`.
    pub async fn admin_room_state_basics(
        &self,
        room_id: Option<&str>,
        types: &[&str],
    ) -> Result<Vec<(String, String, String)>> {
        let types = types.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect::<Vec<_>>().join(", ");
        let filter = if room_id.is_some() { " AND c.room_id = $1" } else { "" };
        let sql = format!(
            "SELECT c.room_id, c.event_type, e.json FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.state_key = '' AND c.event_type IN ({types}){filter}"
        );
        let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql));
        if let Some(room_id) = room_id {
            query = query.bind(room_id);
        }
        Ok(query.fetch_all(self.pool()).await?)
    }

    /// Number of devices of the local users joined to a room.
    pub async fn admin_joined_local_devices(&self, room_id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devices d JOIN room_memberships m ON m.user_id = d.user_id \
             WHERE m.room_id = $1 AND m.membership = 'join'",
        )
        .bind(room_id)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// One page of event reports and how many match in all.
    pub async fn admin_event_reports(&self, q: &ReportQuery) -> Result<(Vec<EventReportRow>, i64)> {
        let mut conditions = String::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(user_id) = &q.user_id {
            binds.push(contains_pattern(user_id));
            conditions.push_str(&format!(" AND r.reporter LIKE ${} ESCAPE '\\'", binds.len()));
        }
        if let Some(room_id) = &q.room_id {
            binds.push(contains_pattern(room_id));
            conditions.push_str(&format!(" AND r.room_id LIKE ${} ESCAPE '\\'", binds.len()));
        }
        let total_sql = format!("SELECT COUNT(*) FROM reports r WHERE r.kind = 'event'{conditions}");
        let mut total = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(total_sql));
        for b in &binds {
            total = total.bind(b);
        }
        let (total,) = total.fetch_one(self.pool()).await?;
        let dir = if q.forwards { "ASC" } else { "DESC" };
        let sql = format!(
            "{REPORT_COLUMNS}{conditions} ORDER BY r.received_ts {dir}, r.report_id {dir} LIMIT {} OFFSET {}",
            q.limit, q.from
        );
        let mut page = sqlx::query_as::<_, EventReportTuple>(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            page = page.bind(b);
        }
        let rows = page.fetch_all(self.pool()).await?;
        Ok((rows.into_iter().map(event_report).collect(), total))
    }

    /// One event report.
    pub async fn admin_event_report(&self, id: &str) -> Result<Option<EventReportRow>> {
        let sql = format!("{REPORT_COLUMNS} AND r.report_id = $1");
        let row: Option<EventReportTuple> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(self.pool()).await?;
        Ok(row.map(event_report))
    }

    /// Deletes an event report; false if there was none.
    pub async fn admin_delete_event_report(&self, id: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM reports WHERE report_id = $1 AND kind = 'event'")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }
}
