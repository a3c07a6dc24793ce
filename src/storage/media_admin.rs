//! SQL of media administration (`/_synapse/admin/v1/media/...`, `/v1/users/{userId}/media`,
//! `/v1/statistics/users/media`): quarantine and protection flags (table `media_flags`,
//! migration 20), listings, and deleting media rows.

use super::Db;
use crate::error::Result;

/// A media item as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdminMedia {
    /// Media id.
    pub media_id: String,
    /// Content type.
    pub media_type: Option<String>,
    /// Length in bytes.
    pub media_length: Option<i64>,
    /// File name given at upload.
    pub upload_name: Option<String>,
    /// Upload time (ms).
    pub created_ts: i64,
    /// Myelin does not record accesses: the upload time.
    pub last_access_ts: i64,
    /// Who quarantined it.
    pub quarantined_by: Option<String>,
    /// Protected from quarantine.
    pub safe_from_quarantine: bool,
}

type MediaTuple = (String, Option<String>, Option<i64>, Option<String>, i64, Option<String>, i64);

/// Per-uploader media statistics.
#[derive(Debug, Clone)]
pub struct UserMediaStats {
    /// The uploader.
    pub user_id: String,
    /// Their display name.
    pub displayname: Option<String>,
    /// Number of uploads.
    pub media_count: i64,
    /// Their total size in bytes.
    pub media_length: i64,
}

impl Db {
    /// Whether `mxc://origin/media_id` is quarantined.
    pub async fn media_quarantined(&self, origin: &str, media_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM media_flags WHERE origin = $1 AND media_id = $2 AND quarantined_by IS NOT NULL",
        )
        .bind(origin)
        .bind(media_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Whether `mxc://origin/media_id` is protected from quarantine.
    pub async fn media_protected(&self, origin: &str, media_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM media_flags WHERE origin = $1 AND media_id = $2 AND safe_from_quarantine = 1",
        )
        .bind(origin)
        .bind(media_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Quarantines (`by` is the admin) or releases (`None`) one item.
    pub async fn set_media_quarantine(&self, origin: &str, media_id: &str, by: Option<&str>) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_flags (origin, media_id, quarantined_by, safe_from_quarantine) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (origin, media_id) DO UPDATE SET quarantined_by = $3",
        )
        .bind(origin)
        .bind(media_id)
        .bind(by)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Protects an item from quarantine, or lifts the protection.
    pub async fn set_media_protected(&self, origin: &str, media_id: &str, protected: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_flags (origin, media_id, quarantined_by, safe_from_quarantine) VALUES ($1, $2, NULL, $3) \
             ON CONFLICT (origin, media_id) DO UPDATE SET safe_from_quarantine = $3",
        )
        .bind(origin)
        .bind(media_id)
        .bind(protected as i64)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Every upload of a local user (pending async uploads left out), oldest first.
    pub async fn admin_user_media(&self, origin: &str, user_id: &str) -> Result<Vec<AdminMedia>> {
        let rows: Vec<MediaTuple> = sqlx::query_as(
            "SELECT m.media_id, m.content_type, m.size, m.filename, m.created_ts, f.quarantined_by, \
             COALESCE(f.safe_from_quarantine, 0) \
             FROM media m LEFT JOIN media_flags f ON f.origin = m.origin AND f.media_id = m.media_id \
             WHERE m.origin = $1 AND m.creator = $2 AND m.sha256 IS NOT NULL ORDER BY m.created_ts, m.media_id",
        )
        .bind(origin)
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(media_id, media_type, media_length, upload_name, created_ts, quarantined_by, safe)| AdminMedia {
                media_id,
                media_type,
                media_length,
                upload_name,
                created_ts,
                last_access_ts: created_ts,
                quarantined_by,
                safe_from_quarantine: safe != 0,
            })
            .collect())
    }

    /// Local media created before `before_ts` larger than `size_gt` bytes, neither quarantined
    /// nor protected (what `POST /_synapse/admin/v1/media/delete` may delete).
    pub async fn old_local_media(&self, origin: &str, before_ts: i64, size_gt: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT m.media_id FROM media m LEFT JOIN media_flags f ON f.origin = m.origin AND f.media_id = m.media_id \
             WHERE m.origin = $1 AND m.created_ts < $2 AND COALESCE(m.size, 0) > $3 \
             AND f.quarantined_by IS NULL AND COALESCE(f.safe_from_quarantine, 0) = 0 ORDER BY m.media_id",
        )
        .bind(origin)
        .bind(before_ts)
        .bind(size_gt)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Cached media of other servers fetched before `before_ts`.
    pub async fn old_remote_media(&self, local: &str, before_ts: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT origin, media_id FROM media WHERE origin <> $1 AND created_ts < $2 ORDER BY origin, media_id",
        )
        .bind(local)
        .bind(before_ts)
        .fetch_all(self.pool())
        .await?)
    }

    /// Avatars in use: users' profiles and rooms' current `m.room.avatar` (kept by
    /// `keep_profiles`).
    pub async fn avatar_urls_in_use(&self) -> Result<Vec<String>> {
        let mut urls: Vec<String> =
            sqlx::query_as::<_, (String,)>("SELECT avatar_url FROM users WHERE avatar_url IS NOT NULL")
                .fetch_all(self.pool())
                .await?
                .into_iter()
                .map(|r| r.0)
                .collect();
        let rooms: Vec<(String,)> = sqlx::query_as(
            "SELECT e.json FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.event_type = 'm.room.avatar' AND c.state_key = ''",
        )
        .fetch_all(self.pool())
        .await?;
        for (json,) in rooms {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json)
                && let Some(url) = v["content"]["url"].as_str()
            {
                urls.push(url.to_owned());
            }
        }
        Ok(urls)
    }

    /// The JSON of a room's events that mention an mxc URI.
    pub async fn room_events_with_media(&self, room_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT json FROM events WHERE room_id = $1 AND json LIKE '%mxc://%' ORDER BY stream_ordering",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Deletes an item's rows (media, thumbnails, flags); returns the content hashes it used
    /// that no other row uses any more (their files can go), or `None` if there was no item.
    pub async fn delete_media_rows(&self, origin: &str, media_id: &str) -> Result<Option<Vec<String>>> {
        let mut tx = self.begin_write().await?;
        let mut hashes: Vec<(Option<String>,)> =
            sqlx::query_as("SELECT sha256 FROM media WHERE origin = $1 AND media_id = $2")
                .bind(origin)
                .bind(media_id)
                .fetch_all(&mut *tx.tx)
                .await?;
        if hashes.is_empty() {
            return Ok(None);
        }
        hashes.extend(
            sqlx::query_as::<_, (Option<String>,)>(
                "SELECT sha256 FROM media_thumbnails WHERE origin = $1 AND media_id = $2",
            )
            .bind(origin)
            .bind(media_id)
            .fetch_all(&mut *tx.tx)
            .await?,
        );
        for sql in [
            "DELETE FROM media WHERE origin = $1 AND media_id = $2",
            "DELETE FROM media_thumbnails WHERE origin = $1 AND media_id = $2",
            "DELETE FROM media_flags WHERE origin = $1 AND media_id = $2",
        ] {
            sqlx::query(sql).bind(origin).bind(media_id).execute(&mut *tx.tx).await?;
        }
        let mut unused = Vec::new();
        for sha in hashes.into_iter().filter_map(|h| h.0) {
            let used: Option<(i64,)> = sqlx::query_as(
                "SELECT 1 FROM media WHERE sha256 = $1 UNION ALL SELECT 1 FROM media_thumbnails WHERE sha256 = $1 LIMIT 1",
            )
            .bind(&sha)
            .fetch_optional(&mut *tx.tx)
            .await?;
            if used.is_none() && !unused.contains(&sha) {
                unused.push(sha);
            }
        }
        tx.commit().await?;
        Ok(Some(unused))
    }

    /// Uploads per local user in `[from_ts, until_ts)`, with display names.
    pub async fn user_media_statistics(
        &self,
        origin: &str,
        from_ts: i64,
        until_ts: i64,
    ) -> Result<Vec<UserMediaStats>> {
        let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT m.creator, u.displayname, COUNT(*), CAST(COALESCE(SUM(m.size), 0) AS BIGINT) \
             FROM media m LEFT JOIN users u ON u.user_id = m.creator \
             WHERE m.origin = $1 AND m.creator IS NOT NULL AND m.sha256 IS NOT NULL \
             AND m.created_ts >= $2 AND m.created_ts < $3 GROUP BY m.creator, u.displayname",
        )
        .bind(origin)
        .bind(from_ts)
        .bind(until_ts)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(user_id, displayname, media_count, media_length)| UserMediaStats {
                user_id,
                displayname,
                media_count,
                media_length,
            })
            .collect())
    }
}
