//! Reading a Synapse database (SQLite or PostgreSQL, schema of Synapse 1.100 and later).
//!
//! These queries live here and not in `src/storage/` because they read a foreign schema,
//! Synapse's, which Myelin neither owns nor migrates: `storage/` holds the SQL of Myelin's own
//! tables. The database is opened read-only on SQLite and only read on PostgreSQL.
//!
//! One text per query serves both backends: booleans (`BOOLEAN` on PostgreSQL, integers on
//! SQLite) are read through `CASE WHEN … THEN 1 ELSE 0 END`, and every integer is cast to
//! `BIGINT`, because sqlx's `Any` driver decodes a PostgreSQL `INTEGER` only into `i32`.
//! Rows are read as tuples in the order of their `SELECT` lists (the crate builds sqlx without
//! its derive macros), hence the long tuple types.

#![allow(clippy::type_complexity)]

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::storage::rooms::StateIds;

/// A connection to Synapse's database.
pub struct SynapseDb {
    pool: AnyPool,
}

/// A Synapse user.
pub struct User {
    pub name: String,
    pub password_hash: Option<String>,
    pub creation_ts: i64,
    pub admin: bool,
    pub deactivated: bool,
    pub is_guest: bool,
    pub appservice_id: Option<String>,
}

/// A device.
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen: Option<i64>,
    pub ip: Option<String>,
}

/// An access token (Synapse keeps them in clear).
pub struct AccessToken {
    pub user_id: String,
    pub device_id: Option<String>,
    pub token: String,
    pub valid_until_ms: Option<i64>,
    pub puppets_user_id: Option<String>,
}

/// A refresh token and the one issued when it was used.
pub struct RefreshToken {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
    pub next: Option<String>,
    pub expiry_ts: Option<i64>,
}

/// A push rule of a user (not the server defaults, which are implicit in Synapse).
pub struct PushRule {
    pub user_name: String,
    pub rule_id: String,
    pub priority_class: i64,
    pub priority: i64,
    pub conditions: String,
    pub actions: String,
}

/// A pusher.
pub struct Pusher {
    pub user_name: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: Option<String>,
    pub data: Option<String>,
    pub device_id: Option<String>,
    pub ts: i64,
    pub enabled: bool,
}

/// A local media file's metadata.
pub struct Media {
    pub media_id: String,
    pub media_type: Option<String>,
    pub created_ts: i64,
    pub upload_name: Option<String>,
    pub user_id: Option<String>,
    pub quarantined_by: Option<String>,
}

/// One event row of a room, in topological order.
pub struct EventRow {
    pub event_id: String,
    pub json: String,
    pub internal_metadata: String,
    pub outlier: bool,
    pub rejected: bool,
    pub state_group: Option<i64>,
}

/// A key backup session.
pub struct BackupSession {
    pub user_id: String,
    pub room_id: String,
    pub session_id: String,
    pub version: i64,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: String,
}

/// A room.
pub struct Room {
    pub room_id: String,
    pub room_version: String,
    pub is_public: bool,
}

type UserTuple = (String, Option<String>, i64, i64, i64, i64, Option<String>);
type PusherTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);

impl SynapseDb {
    /// Opens `url`: `postgres://…`, or a SQLite file path (`sqlite://` optional).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.to_owned()
        } else {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            anyhow::ensure!(std::path::Path::new(path).exists(), "Synapse database {path} does not exist");
            format!("sqlite://{path}?mode=ro")
        };
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .with_context(|| format!("opening the Synapse database {url}"))?;
        let db = Self { pool };
        db.count("users").await.context("this does not look like a Synapse database (no `users` table)")?;
        Ok(db)
    }

    /// Rows of a table.
    pub async fn count(&self, table: &'static str) -> anyhow::Result<i64> {
        let sql = format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}");
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await?)
    }

    /// Users.
    pub async fn users(&self) -> anyhow::Result<Vec<User>> {
        let rows: Vec<UserTuple> = sqlx::query_as(
            "SELECT name, password_hash, CAST(COALESCE(creation_ts, 0) AS BIGINT), CAST(admin AS BIGINT), \
             CAST(deactivated AS BIGINT), CAST(is_guest AS BIGINT), appservice_id FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| User {
                name: t.0,
                password_hash: t.1,
                creation_ts: t.2,
                admin: t.3 != 0,
                deactivated: t.4 != 0,
                is_guest: t.5 != 0,
                appservice_id: t.6,
            })
            .collect())
    }

    /// Profiles: `(localpart or full id, displayname, avatar_url)`.
    pub async fn profiles(&self) -> anyhow::Result<Vec<(String, Option<String>, Option<String>)>> {
        Ok(sqlx::query_as("SELECT user_id, displayname, avatar_url FROM profiles").fetch_all(&self.pool).await?)
    }

    /// Devices that are devices (not the hidden rows Synapse keeps for cross-signing keys).
    pub async fn devices(&self) -> anyhow::Result<Vec<Device>> {
        let rows: Vec<(String, String, Option<String>, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT user_id, device_id, display_name, CAST(last_seen AS BIGINT), ip FROM devices \
             WHERE CAST(CASE WHEN hidden THEN 1 ELSE 0 END AS BIGINT) = 0",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| Device { user_id: t.0, device_id: t.1, display_name: t.2, last_seen: t.3, ip: t.4 })
            .collect())
    }

    /// Access tokens.
    pub async fn access_tokens(&self) -> anyhow::Result<Vec<AccessToken>> {
        let rows: Vec<(String, Option<String>, String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT user_id, device_id, token, CAST(valid_until_ms AS BIGINT), puppets_user_id FROM access_tokens",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| AccessToken {
                user_id: t.0,
                device_id: t.1,
                token: t.2,
                valid_until_ms: t.3,
                puppets_user_id: t.4,
            })
            .collect())
    }

    /// Refresh tokens with their successors.
    pub async fn refresh_tokens(&self) -> anyhow::Result<Vec<RefreshToken>> {
        let rows: Vec<(String, String, String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT r.user_id, r.device_id, r.token, n.token, CAST(r.expiry_ts AS BIGINT) FROM refresh_tokens r \
             LEFT JOIN refresh_tokens n ON n.id = r.next_token_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| RefreshToken { user_id: t.0, device_id: t.1, token: t.2, next: t.3, expiry_ts: t.4 })
            .collect())
    }

    /// Global account data: `(user, type, content)`.
    pub async fn account_data(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, account_data_type, content FROM account_data ORDER BY stream_id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Per-room account data: `(user, room, type, content)`.
    pub async fn room_account_data(&self) -> anyhow::Result<Vec<(String, String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT user_id, room_id, account_data_type, content FROM room_account_data ORDER BY stream_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Room tags: `(user, room, tag, content)`.
    pub async fn room_tags(&self) -> anyhow::Result<Vec<(String, String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, room_id, tag, content FROM room_tags").fetch_all(&self.pool).await?)
    }

    /// Users' own push rules and rule-action overrides.
    pub async fn push_rules(&self) -> anyhow::Result<Vec<PushRule>> {
        let rows: Vec<(String, String, i64, i64, String, String)> = sqlx::query_as(
            "SELECT user_name, rule_id, CAST(priority_class AS BIGINT), CAST(priority AS BIGINT), conditions, actions \
             FROM push_rules ORDER BY user_name, priority_class DESC, priority DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| PushRule {
                user_name: t.0,
                rule_id: t.1,
                priority_class: t.2,
                priority: t.3,
                conditions: t.4,
                actions: t.5,
            })
            .collect())
    }

    /// Enabled flags of rules: `(user, rule_id, enabled)`.
    pub async fn push_rules_enable(&self) -> anyhow::Result<Vec<(String, String, bool)>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT user_name, rule_id, CAST(COALESCE(enabled, 1) AS BIGINT) FROM push_rules_enable")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(u, r, e)| (u, r, e != 0)).collect())
    }

    /// Pushers.
    pub async fn pushers(&self) -> anyhow::Result<Vec<Pusher>> {
        let rows: Vec<PusherTuple> = sqlx::query_as(
            "SELECT user_name, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data, \
             device_id, CAST(ts AS BIGINT), CAST(CASE WHEN enabled IS NULL OR enabled THEN 1 ELSE 0 END AS BIGINT) \
             FROM pushers",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| Pusher {
                user_name: t.0,
                app_id: t.1,
                pushkey: t.2,
                kind: t.3,
                app_display_name: t.4,
                device_display_name: t.5,
                profile_tag: t.6,
                lang: t.7,
                data: t.8,
                device_id: t.9,
                ts: t.10,
                enabled: t.11 != 0,
            })
            .collect())
    }

    /// Sync filters: `(user localpart or id, filter id, JSON bytes)`.
    pub async fn filters(&self) -> anyhow::Result<Vec<(String, i64, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT user_id, CAST(filter_id AS BIGINT), filter_json FROM user_filters")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Device keys: `(user, device, JSON)`.
    pub async fn device_keys(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, device_id, key_json FROM e2e_device_keys_json")
            .fetch_all(&self.pool)
            .await?)
    }

    /// One-time keys: `(user, device, algorithm, key id, JSON)`.
    pub async fn one_time_keys(&self) -> anyhow::Result<Vec<(String, String, String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, device_id, algorithm, key_id, key_json FROM e2e_one_time_keys_json")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Fallback keys: `(user, device, algorithm, key id, JSON, used)`.
    pub async fn fallback_keys(&self) -> anyhow::Result<Vec<(String, String, String, String, String, bool)>> {
        let rows: Vec<(String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT user_id, device_id, algorithm, key_id, key_json, CAST(CASE WHEN used THEN 1 ELSE 0 END AS BIGINT) \
             FROM e2e_fallback_keys_json",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|t| (t.0, t.1, t.2, t.3, t.4, t.5 != 0)).collect())
    }

    /// Cross-signing keys, oldest first (the last of each kind is the current one).
    pub async fn cross_signing_keys(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, keytype, keydata FROM e2e_cross_signing_keys ORDER BY stream_id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Signatures: `(signer, signer key id, target user, target device or key, signature)`.
    pub async fn cross_signing_signatures(&self) -> anyhow::Result<Vec<(String, String, String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT user_id, key_id, target_user_id, target_device_id, signature FROM e2e_cross_signing_signatures",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Key backup versions: `(user, version, algorithm, auth_data, deleted, etag)`.
    pub async fn backup_versions(&self) -> anyhow::Result<Vec<(String, i64, String, String, bool, i64)>> {
        let rows: Vec<(String, i64, String, String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, CAST(version AS BIGINT), algorithm, auth_data, CAST(deleted AS BIGINT), \
             CAST(COALESCE(etag, 0) AS BIGINT) FROM e2e_room_keys_versions",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|t| (t.0, t.1, t.2, t.3, t.4 != 0, t.5)).collect())
    }

    /// Key backup sessions.
    pub async fn backup_sessions(&self) -> anyhow::Result<Vec<BackupSession>> {
        let rows: Vec<(String, String, String, i64, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT user_id, room_id, session_id, CAST(version AS BIGINT), CAST(COALESCE(first_message_index, 0) AS BIGINT), \
             CAST(COALESCE(forwarded_count, 0) AS BIGINT), CAST(CASE WHEN is_verified THEN 1 ELSE 0 END AS BIGINT), \
             session_data FROM e2e_room_keys",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| BackupSession {
                user_id: t.0,
                room_id: t.1,
                session_id: t.2,
                version: t.3,
                first_message_index: t.4,
                forwarded_count: t.5,
                is_verified: t.6 != 0,
                session_data: t.7,
            })
            .collect())
    }

    /// Local media (not URL-preview caches).
    pub async fn local_media(&self) -> anyhow::Result<Vec<Media>> {
        let rows: Vec<(String, Option<String>, i64, Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT media_id, media_type, CAST(COALESCE(created_ts, 0) AS BIGINT), upload_name, user_id, quarantined_by \
             FROM local_media_repository WHERE url_cache IS NULL ORDER BY media_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| Media {
                media_id: t.0,
                media_type: t.1,
                created_ts: t.2,
                upload_name: t.3,
                user_id: t.4,
                quarantined_by: t.5,
            })
            .collect())
    }

    /// Rooms.
    pub async fn rooms(&self) -> anyhow::Result<Vec<Room>> {
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT room_id, room_version, CAST(CASE WHEN is_public THEN 1 ELSE 0 END AS BIGINT) FROM rooms ORDER BY room_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| Room { room_id: t.0, room_version: t.1.unwrap_or_else(|| "1".to_owned()), is_public: t.2 != 0 })
            .collect())
    }

    /// A room's events in topological order (depth, then arrival).
    pub async fn room_events(&self, room_id: &str) -> anyhow::Result<Vec<EventRow>> {
        let rows: Vec<(String, String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT e.event_id, j.json, j.internal_metadata, CAST(CASE WHEN e.outlier THEN 1 ELSE 0 END AS BIGINT), \
             CAST(CASE WHEN e.rejection_reason IS NOT NULL OR r.event_id IS NOT NULL THEN 1 ELSE 0 END AS BIGINT), \
             CAST(g.state_group AS BIGINT) \
             FROM events e JOIN event_json j ON j.event_id = e.event_id \
             LEFT JOIN rejections r ON r.event_id = e.event_id \
             LEFT JOIN event_to_state_groups g ON g.event_id = e.event_id \
             WHERE e.room_id = $1 ORDER BY e.topological_ordering, e.stream_ordering",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| EventRow {
                event_id: t.0,
                json: t.1,
                internal_metadata: t.2,
                outlier: t.3 != 0,
                rejected: t.4 != 0,
                state_group: t.5,
            })
            .collect())
    }

    /// Every state group of a room, resolved to its full state (Synapse's groups are deltas
    /// over a previous group that only add or replace entries).
    pub async fn room_state_groups(&self, room_id: &str) -> anyhow::Result<HashMap<i64, Arc<StateIds>>> {
        let ids: Vec<(i64,)> = sqlx::query_as("SELECT CAST(id AS BIGINT) FROM state_groups WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        let edges: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT CAST(state_group AS BIGINT), CAST(prev_state_group AS BIGINT) FROM state_group_edges \
             WHERE state_group IN (SELECT id FROM state_groups WHERE room_id = $1)",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT CAST(state_group AS BIGINT), type, state_key, event_id FROM state_groups_state WHERE room_id = $1",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        let prev: HashMap<i64, i64> = edges.into_iter().collect();
        let mut deltas: HashMap<i64, StateIds> = HashMap::new();
        for (g, t, k, e) in rows {
            deltas.entry(g).or_default().insert((t, k), e);
        }
        let mut resolved: HashMap<i64, Arc<StateIds>> = HashMap::new();
        for (id,) in ids {
            // Walk down to a resolved group (or the chain's base), then apply upwards.
            let mut chain = vec![id];
            let mut cur = id;
            while let Some(p) = prev.get(&cur).copied() {
                if resolved.contains_key(&p) || chain.contains(&p) || chain.len() > 100_000 {
                    if !chain.contains(&p) {
                        chain.push(p);
                    }
                    break;
                }
                chain.push(p);
                cur = p;
            }
            let mut state = StateIds::new();
            for g in chain.iter().rev() {
                if let Some(done) = resolved.get(g) {
                    state = (**done).clone();
                    continue;
                }
                if let Some(d) = deltas.get(g) {
                    state.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                resolved.insert(*g, Arc::new(state.clone()));
            }
        }
        Ok(resolved)
    }

    /// A room's current state.
    pub async fn current_state(&self, room_id: &str) -> anyhow::Result<StateIds> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT type, state_key, event_id FROM current_state_events WHERE room_id = $1")
                .bind(room_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(t, k, e)| ((t, k), e)).collect())
    }

    /// A room's forward extremities.
    pub async fn extremities(&self, room_id: &str) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT event_id FROM event_forward_extremities WHERE room_id = $1")
            .bind(room_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// To-device messages not yet delivered: `(user, device, message JSON)`, in order.
    pub async fn device_inbox(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as("SELECT user_id, device_id, message_json FROM device_inbox ORDER BY stream_id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Room aliases: `(alias, room, creator)`.
    pub async fn aliases(&self) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
        Ok(sqlx::query_as("SELECT room_alias, room_id, creator FROM room_aliases").fetch_all(&self.pool).await?)
    }

    /// Receipts: `(room, type, user, event, thread, data)`.
    pub async fn receipts(&self) -> anyhow::Result<Vec<(String, String, String, String, Option<String>, String)>> {
        Ok(sqlx::query_as(
            "SELECT room_id, receipt_type, user_id, event_id, thread_id, data FROM receipts_linearized ORDER BY stream_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
