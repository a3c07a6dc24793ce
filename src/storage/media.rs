//! Tables of the media repository (migration 5): `media`, `media_thumbnails`, `url_previews`.
//!
//! Only metadata lives here; the bytes are files named by their SHA-256 (see `crate::media::store`).
//! A row that names a `sha256` is written only after that file is durably on disk, so a row
//! never points at a missing or half-written file.

use super::{Db, now_ms};

/// One `mxc://origin/media_id`.
#[derive(Debug, Clone)]
pub struct MediaRow {
    /// Server name in the mxc URI.
    pub origin: String,
    /// Media id in the mxc URI.
    pub media_id: String,
    /// Local uploader (also of pending async uploads); `None` for cached remote media.
    pub creator: Option<String>,
    /// Content type given at upload (or by the remote server).
    pub content_type: Option<String>,
    /// File name given at upload (or by the remote server).
    pub filename: Option<String>,
    /// Length in bytes, once the content is present.
    pub size: Option<i64>,
    /// Hex SHA-256 of the content; `None` while an async upload is pending.
    pub sha256: Option<String>,
    /// When the id was created (ms).
    pub created_ts: i64,
    /// When a pending id expires (ms); `None` once uploaded.
    pub unused_expires_ts: Option<i64>,
}

type MediaTuple =
    (String, String, Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>, i64, Option<i64>);

const MEDIA_COLUMNS: &str =
    "origin, media_id, creator, content_type, filename, size, sha256, created_ts, unused_expires_ts";

fn media_from(t: MediaTuple) -> MediaRow {
    MediaRow {
        origin: t.0,
        media_id: t.1,
        creator: t.2,
        content_type: t.3,
        filename: t.4,
        size: t.5,
        sha256: t.6,
        created_ts: t.7,
        unused_expires_ts: t.8,
    }
}

/// Content that is present on disk: what a new media or thumbnail row records.
#[derive(Debug, Clone)]
pub struct ContentRef<'a> {
    /// Content type.
    pub content_type: Option<&'a str>,
    /// File name.
    pub filename: Option<&'a str>,
    /// Length in bytes.
    pub size: i64,
    /// Hex SHA-256, the file's name in the store.
    pub sha256: &'a str,
}

/// A stored thumbnail.
#[derive(Debug, Clone)]
pub struct ThumbnailRow {
    /// Width in pixels.
    pub width: i64,
    /// Height in pixels.
    pub height: i64,
    /// Content type of the thumbnail.
    pub content_type: String,
    /// Length in bytes.
    pub size: i64,
    /// Hex SHA-256 of the thumbnail file.
    pub sha256: String,
}

/// Identifies one thumbnail of one media item.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailKey<'a> {
    /// Server name of the media.
    pub origin: &'a str,
    /// Media id.
    pub media_id: &'a str,
    /// Width (produced for local media, requested for remote media).
    pub width: i64,
    /// Height (produced for local media, requested for remote media).
    pub height: i64,
    /// `crop` or `scale`.
    pub method: &'a str,
    /// Whether an animated thumbnail was asked for.
    pub animated: bool,
}

impl Db {
    /// Records a completed local upload or a fetched remote file; false if the id exists.
    pub async fn insert_media(
        &self,
        origin: &str,
        media_id: &str,
        creator: Option<&str>,
        content: &ContentRef<'_>,
    ) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO media (origin, media_id, creator, content_type, filename, size, sha256, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(origin)
        .bind(media_id)
        .bind(creator)
        .bind(content.content_type)
        .bind(content.filename)
        .bind(content.size)
        .bind(content.sha256)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Creates a pending async upload id for `creator` that expires at `expires_ts`, unless the
    /// creator already has `max_pending` unexpired pending ids. Returns false in that case.
    ///
    /// Expired pending ids of everyone are deleted on the way: this is where they are swept.
    pub async fn create_pending_media(
        &self,
        origin: &str,
        media_id: &str,
        creator: &str,
        expires_ts: i64,
        max_pending: i64,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts < $1")
            .bind(now)
            .execute(&mut *tx.tx)
            .await?;
        // Two processes on PostgreSQL could both pass this count; the limit is a guard against
        // abuse, not an invariant, so a slight overshoot is acceptable.
        let (pending,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM media WHERE creator = $1 AND sha256 IS NULL AND unused_expires_ts >= $2",
        )
        .bind(creator)
        .bind(now)
        .fetch_one(&mut *tx.tx)
        .await?;
        if pending >= max_pending {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO media (origin, media_id, creator, created_ts, unused_expires_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(origin)
        .bind(media_id)
        .bind(creator)
        .bind(now)
        .bind(expires_ts)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Fills a pending async upload with its content. Returns false if the id is no longer
    /// pending (another upload won the race) or has expired; the caller re-reads the row to
    /// tell which.
    pub async fn complete_pending_media(
        &self,
        origin: &str,
        media_id: &str,
        creator: &str,
        content: &ContentRef<'_>,
    ) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "UPDATE media SET content_type = $1, filename = $2, size = $3, sha256 = $4, unused_expires_ts = NULL \
             WHERE origin = $5 AND media_id = $6 AND creator = $7 AND sha256 IS NULL AND unused_expires_ts >= $8",
        )
        .bind(content.content_type)
        .bind(content.filename)
        .bind(content.size)
        .bind(content.sha256)
        .bind(origin)
        .bind(media_id)
        .bind(creator)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Looks up one media id (pending, uploaded or cached remote).
    pub async fn get_media(&self, origin: &str, media_id: &str) -> Result<Option<MediaRow>, sqlx::Error> {
        let row: Option<MediaTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MEDIA_COLUMNS} FROM media WHERE origin = $1 AND media_id = $2"
        )))
        .bind(origin)
        .bind(media_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(media_from))
    }

    /// A cached thumbnail.
    pub async fn get_thumbnail(&self, key: &ThumbnailKey<'_>) -> Result<Option<ThumbnailRow>, sqlx::Error> {
        let row: Option<(i64, i64, String, i64, String)> = sqlx::query_as(
            "SELECT width, height, content_type, size, sha256 FROM media_thumbnails \
             WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6",
        )
        .bind(key.origin)
        .bind(key.media_id)
        .bind(key.width)
        .bind(key.height)
        .bind(key.method)
        .bind(key.animated as i64)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|t| ThumbnailRow { width: t.0, height: t.1, content_type: t.2, size: t.3, sha256: t.4 }))
    }

    /// Caches a thumbnail; a concurrent identical insert is ignored (both files are the same).
    pub async fn insert_thumbnail(
        &self,
        key: &ThumbnailKey<'_>,
        content_type: &str,
        size: i64,
        sha256: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO media_thumbnails \
             (origin, media_id, width, height, method, animated, content_type, size, sha256, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(key.origin)
        .bind(key.media_id)
        .bind(key.width)
        .bind(key.height)
        .bind(key.method)
        .bind(key.animated as i64)
        .bind(content_type)
        .bind(size)
        .bind(sha256)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A stored URL preview (JSON text) fetched at or after `min_ts`.
    pub async fn get_url_preview(&self, url: &str, min_ts: i64) -> Result<Option<String>, sqlx::Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT preview FROM url_previews WHERE url = $1 AND fetched_ts >= $2")
                .bind(url)
                .bind(min_ts)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores (or refreshes) a URL preview.
    pub async fn put_url_preview(&self, url: &str, preview: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO url_previews (url, preview, fetched_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (url) DO UPDATE SET preview = excluded.preview, fetched_ts = excluded.fetched_ts",
        )
        .bind(url)
        .bind(preview)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
