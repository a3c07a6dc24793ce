//! The media repository: uploads, downloads, thumbnails and URL previews.
//!
//! Owns `media.dir` and the media tables (migration 5). Bytes are stored once per content
//! ([`store::FileStore`], named by SHA-256, written crash-safely); the database maps each
//! `mxc://server/id` to a hash plus content type and file name. A row names a hash only once the
//! file is durable, so every visible media id is complete. Async uploads (`/create`, then `PUT`)
//! are rows without a hash until their single allowed upload, and expire unused after a day.
//!
//! Thumbnails ([`thumbnail`]) are generated on first request, stored like any content and
//! cached per media id and produced size. URL previews ([`preview`]) fetch through an SSRF
//! guard and store the page's image as local media.
//!
//! Everything served comes from this server's store: media of other servers is fetched over
//! federation (`remote`) and cached here before being served.

pub mod multipart;
pub mod preview;
pub mod store;
pub mod thumbnail;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ruma::{OwnedMxcUri, OwnedServerName, ServerName, UserId};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::storage::media::{ContentRef, MediaRow, ThumbnailKey};
use crate::storage::{Db, now_ms};
use store::{FileStore, Stored};
use thumbnail::{Method, Plan, SourceInfo, ThumbnailError};

/// How long an id from `/create` waits for its upload (the spec's recommended 24 hours).
pub const UNUSED_EXPIRY_MS: i64 = 24 * 3600 * 1000;
/// Pending async uploads one user may hold; more get 429 as the spec recommends.
pub const MAX_PENDING_PER_USER: i64 = 32;
/// Longest a download waits for a pending upload, whatever `timeout_ms` asks.
pub const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(120);
/// Originals larger than this are not thumbnailed (413).
pub const MAX_THUMBNAIL_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// How long a URL preview is reused.
const PREVIEW_CACHE_MS: i64 = 3600 * 1000;
/// Largest image a URL preview stores.
const MAX_PREVIEW_IMAGE_BYTES: usize = 10 * 1024 * 1024;

/// The media repository handle.
pub struct Media {
    db: Db,
    config: Arc<Config>,
    server_name: OwnedServerName,
    store: FileStore,
    /// Thumbnail generation is CPU-bound; at most this many run at once.
    thumbnailers: Semaphore,
    /// Woken when an async upload completes, for downloads waiting on it.
    uploaded: Notify,
    fetcher: preview::Fetcher,
}

/// Stored content ready to be served.
#[derive(Debug, Clone)]
pub struct Content {
    /// Content type to send (`application/octet-stream` when unknown).
    pub content_type: String,
    /// File name given at upload.
    pub filename: Option<String>,
    /// Length in bytes.
    pub size: u64,
    /// Hash of the file in the store.
    pub sha256: String,
}

/// The parameters of a thumbnail request.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailRequest {
    /// Desired (minimum) width.
    pub width: u32,
    /// Desired (minimum) height.
    pub height: u32,
    /// `crop` or `scale` (`scale` when not given).
    pub method: Method,
    /// Whether an animated thumbnail is wanted.
    pub animated: bool,
    /// How long to wait for a pending upload.
    pub timeout: Duration,
}

fn new_media_id() -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(24).map(char::from).collect()
}

fn io_error(e: std::io::Error) -> Error {
    Error::internal(format!("media store: {e}"))
}

fn not_yet_uploaded() -> Error {
    Error::new(http::StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED", "The media has not been uploaded yet")
}

/// 400 `M_UNKNOWN`, the spec's answer for content that cannot be thumbnailed.
fn cannot_thumbnail() -> Error {
    Error::new(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Cannot generate a thumbnail of this content")
}

/// Validates a client-given content type: a plausible `type/subtype[; params]` that can be sent
/// back as a header. Anything else is stored as unknown (served as `application/octet-stream`).
pub fn sanitize_content_type(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    let essence = value.split(';').next()?.trim();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    (token(kind) && token(sub) && value.len() <= 255 && http::HeaderValue::from_str(value).is_ok())
        .then(|| value.to_owned())
}

impl Media {
    /// Opens the store under `config.media.dir` (created if missing).
    pub fn new(db: Db, config: Arc<Config>) -> anyhow::Result<Self> {
        let store = FileStore::open(&config.media.dir)
            .map_err(|e| anyhow::anyhow!("opening media.dir {}: {e}", config.media.dir.display()))?;
        let allowlist =
            config.media.url_preview_ip_allowlist.iter().filter_map(|r| preview::IpRange::parse(r)).collect();
        Ok(Self {
            server_name: config.server_name(),
            db,
            config,
            store,
            thumbnailers: Semaphore::new(2),
            uploaded: Notify::new(),
            fetcher: preview::Fetcher::new(allowlist),
        })
    }

    /// The largest upload accepted, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.config.media.max_upload_bytes
    }

    /// The file store.
    pub fn store(&self) -> &FileStore {
        &self.store
    }

    fn is_local(&self, server: &ServerName) -> bool {
        server == self.server_name
    }

    /// Streams an upload body into the store, refusing (413) anything over the limit: early by
    /// its declared length, otherwise as soon as the bytes exceed it. Nothing of a refused or
    /// interrupted upload remains on disk.
    pub async fn store_stream<S, E>(&self, body: S, declared_len: Option<u64>) -> Result<Stored>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let max = self.max_upload_bytes();
        if declared_len.is_some_and(|len| len > max) {
            return Err(Error::too_large(format!("Uploads are limited to {max} bytes")));
        }
        let mut body = body;
        let mut file = self.store.begin().await.map_err(io_error)?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::bad_json(format!("Reading the upload failed: {e}")))?;
            if file.size() + chunk.len() as u64 > max {
                return Err(Error::too_large(format!("Uploads are limited to {max} bytes")));
            }
            file.write(&chunk).await.map_err(io_error)?;
        }
        file.finish().await.map_err(io_error)
    }

    /// `POST /upload`: stores the content and returns its new mxc URI.
    pub async fn upload<S, E>(
        &self,
        creator: &UserId,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
        declared_len: Option<u64>,
    ) -> Result<OwnedMxcUri>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let stored = self.store_stream(body, declared_len).await?;
        let content_type = sanitize_content_type(content_type);
        let content = ContentRef {
            content_type: content_type.as_deref(),
            filename,
            size: stored.size as i64,
            sha256: &stored.sha256,
        };
        loop {
            let media_id = new_media_id();
            if self.db.insert_media(self.server_name.as_str(), &media_id, Some(creator.as_str()), &content).await? {
                return Ok(OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name)));
            }
        }
    }

    /// `POST /create`: a new mxc URI whose content `creator` uploads later, and when it expires.
    pub async fn create_pending(&self, creator: &UserId) -> Result<(OwnedMxcUri, i64)> {
        let expires = now_ms() + UNUSED_EXPIRY_MS;
        let media_id = new_media_id();
        let created = self
            .db
            .create_pending_media(self.server_name.as_str(), &media_id, creator.as_str(), expires, MAX_PENDING_PER_USER)
            .await?;
        if !created {
            return Err(Error::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many pending uploads; upload or let some expire first",
            ));
        }
        Ok((OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name)), expires))
    }

    /// Why `creator` may not upload to this id now, if so.
    fn check_pending(&self, row: Option<&MediaRow>, creator: &UserId) -> Result<()> {
        let Some(row) = row else { return Err(Error::not_found("Unknown media ID")) };
        if row.creator.as_deref() != Some(creator.as_str()) {
            return Err(Error::forbidden("Only the creator of this media ID may upload to it"));
        }
        if row.sha256.is_some() {
            return Err(Error::new(http::StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded"));
        }
        if row.unused_expires_ts.is_some_and(|t| t < now_ms()) {
            return Err(Error::not_found("The media ID has expired"));
        }
        Ok(())
    }

    /// Whether `creator` may upload to `mxc://server/media_id` now: 404 `M_NOT_FOUND` for ids
    /// never created here or expired, 403 `M_FORBIDDEN` for another user's id, 409
    /// `M_CANNOT_OVERWRITE_MEDIA` once content is there.
    pub async fn check_upload_target(&self, creator: &UserId, server: &ServerName, media_id: &str) -> Result<()> {
        if !self.is_local(server) {
            return Err(Error::not_found("Unknown media ID"));
        }
        self.check_pending(self.db.get_media(server.as_str(), media_id).await?.as_ref(), creator)
    }

    /// `PUT /upload/{serverName}/{mediaId}`: the one upload to an id from `/create`.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_pending<S, E>(
        &self,
        creator: &UserId,
        server: &ServerName,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
        declared_len: Option<u64>,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Checked before reading the body so a wrong request fails fast, and again atomically
        // when recording, since another upload may have completed meanwhile.
        self.check_upload_target(creator, server, media_id).await?;
        let stored = self.store_stream(body, declared_len).await?;
        let content_type = sanitize_content_type(content_type);
        let content = ContentRef {
            content_type: content_type.as_deref(),
            filename,
            size: stored.size as i64,
            sha256: &stored.sha256,
        };
        if self.db.complete_pending_media(server.as_str(), media_id, creator.as_str(), &content).await? {
            self.uploaded.notify_waiters();
            return Ok(());
        }
        self.check_pending(self.db.get_media(server.as_str(), media_id).await?.as_ref(), creator)?;
        Err(Error::internal("pending upload neither completed nor refused"))
    }

    /// The content of a local media id, waiting up to `timeout` for a pending upload (504
    /// `M_NOT_YET_UPLOADED` after that).
    async fn local_content(&self, media_id: &str, timeout: Duration) -> Result<Content> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_DOWNLOAD_WAIT);
        loop {
            // Register interest before reading, so an upload finishing in between wakes us.
            let notified = self.uploaded.notified();
            let row = self.db.get_media(self.server_name.as_str(), media_id).await?;
            let Some(row) = row else { return Err(Error::not_found("Media not found")) };
            if let Some(content) = content_of(&row) {
                return Ok(content);
            }
            if row.unused_expires_ts.is_some_and(|t| t < now_ms()) {
                return Err(Error::not_found("Media not found"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(not_yet_uploaded());
            }
            // The upload may complete in another process (PostgreSQL deployments): poll too.
            let poll = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(poll.min(deadline)) => {}
            }
        }
    }

    /// The content of `mxc://server/media_id`: local, or fetched from its server and cached.
    pub async fn content(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Content> {
        if self.is_local(server) {
            self.local_content(media_id, timeout).await
        } else {
            self.remote_content(server, media_id, timeout).await
        }
    }

    /// Opens stored content for streaming.
    pub async fn open(&self, content: &Content) -> Result<tokio::fs::File> {
        self.store.open_file(&content.sha256).await.map_err(io_error)
    }

    /// Media of other servers. Fetching it needs the federation client, which this server
    /// does not have yet, so only media already cached (none, for now) can be served.
    async fn remote_content(&self, server: &ServerName, media_id: &str, _timeout: Duration) -> Result<Content> {
        match self.db.get_media(server.as_str(), media_id).await?.as_ref().and_then(content_of) {
            Some(content) => Ok(content),
            None => Err(Error::not_found("Remote media is not available")),
        }
    }

    /// A thumbnail of `mxc://server/media_id` as the spec's size rules choose it.
    pub async fn thumbnail(&self, server: &ServerName, media_id: &str, req: ThumbnailRequest) -> Result<Content> {
        if req.width == 0 || req.height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        let original = self.content(server, media_id, req.timeout).await?;
        if original.size > MAX_THUMBNAIL_SOURCE_BYTES {
            return Err(Error::too_large("Content is too large to thumbnail"));
        }
        let info = self.inspect(&original).await?;
        let animated = req.animated && info.may_animate();
        let (width, height) = match thumbnail::plan((info.width, info.height), (req.width, req.height), req.method) {
            // A possibly animated original must not be sent when a still image is wanted.
            Plan::Original if info.may_animate() && !animated => (info.width, info.height),
            Plan::Original => {
                return Ok(Content { content_type: info.format.to_mime_type().to_owned(), filename: None, ..original });
            }
            Plan::Resize { width, height } => (width, height),
        };
        let key = ThumbnailKey {
            origin: server.as_str(),
            media_id,
            width: width as i64,
            height: height as i64,
            method: req.method.as_str(),
            animated,
        };
        if let Some(t) = self.db.get_thumbnail(&key).await? {
            return Ok(Content { content_type: t.content_type, filename: None, size: t.size as u64, sha256: t.sha256 });
        }
        let _permit = self.thumbnailers.acquire().await.map_err(Error::internal)?;
        // Another request may have generated it while this one waited for a permit.
        if let Some(t) = self.db.get_thumbnail(&key).await? {
            return Ok(Content { content_type: t.content_type, filename: None, size: t.size as u64, sha256: t.sha256 });
        }
        let bytes = self.store.read(&original.sha256).await.map_err(io_error)?;
        let method = req.method;
        let thumb =
            tokio::task::spawn_blocking(move || thumbnail::generate(&bytes, info, width, height, method, animated))
                .await
                .map_err(Error::internal)?
                .map_err(thumbnail_error)?;
        let stored = self.store.put(&thumb.bytes).await.map_err(io_error)?;
        self.db.insert_thumbnail(&key, thumb.content_type, stored.size as i64, &stored.sha256).await?;
        Ok(Content {
            content_type: thumb.content_type.to_owned(),
            filename: None,
            size: stored.size,
            sha256: stored.sha256,
        })
    }

    /// Format and size of stored content, from its header.
    async fn inspect(&self, content: &Content) -> Result<SourceInfo> {
        let path = self.store.path_of(&content.sha256).map_err(io_error)?;
        tokio::task::spawn_blocking(move || {
            // Headers are small, but some JPEGs carry large metadata before their size.
            let mut head = Vec::new();
            let file = std::fs::File::open(path)?;
            std::io::Read::read_to_end(&mut std::io::Read::take(file, 1024 * 1024), &mut head)?;
            Ok::<_, std::io::Error>(thumbnail::inspect(&head))
        })
        .await
        .map_err(Error::internal)?
        .map_err(io_error)?
        .map_err(thumbnail_error)
    }

    /// `GET /preview_url`: OpenGraph data of `url`, fetched through the SSRF guard.
    pub async fn preview_url(&self, url: &str) -> Result<Value> {
        if !self.config.media.url_preview_enabled {
            return Err(Error::unrecognized(http::StatusCode::NOT_FOUND));
        }
        if let Some(cached) = self.db.get_url_preview(url, now_ms() - PREVIEW_CACHE_MS).await? {
            return Ok(serde_json::from_str(&cached)?);
        }
        let fetched = self.fetcher.fetch(url, preview::MAX_HTML_BYTES.max(MAX_PREVIEW_IMAGE_BYTES), true).await?;
        let mut og = serde_json::Map::new();
        if fetched.content_type.starts_with("image/") {
            self.add_preview_image(&mut og, fetched.body).await;
        } else if matches!(fetched.content_type.as_str(), "text/html" | "application/xhtml+xml" | "") {
            let end = fetched.body.len().min(preview::MAX_HTML_BYTES);
            let html = String::from_utf8_lossy(&fetched.body[..end]);
            og = preview::parse_opengraph(&html);
            if let Some(image) = og.remove("og:image").and_then(|v| v.as_str().map(str::to_owned))
                && let Ok(image_url) = fetched.url.join(&image)
            {
                // A page's image is only a nicety: a failure leaves it out of the preview.
                match self.fetcher.fetch(image_url.as_str(), MAX_PREVIEW_IMAGE_BYTES, false).await {
                    Ok(image) => self.add_preview_image(&mut og, image.body).await,
                    Err(e) => tracing::debug!(url = %image_url, error = %e, "preview image not fetched"),
                }
            }
        }
        let preview = Value::Object(og);
        self.db.put_url_preview(url, &preview.to_string()).await?;
        Ok(preview)
    }

    /// Stores an image of a preview as local media and describes it with `og:image*` and
    /// `matrix:image:size`. Only images we can decode are kept.
    async fn add_preview_image(&self, og: &mut serde_json::Map<String, Value>, bytes: Bytes) {
        let Ok(info) = thumbnail::inspect(&bytes) else { return };
        let Ok(stored) = self.store.put(&bytes).await else { return };
        let mime = info.format.to_mime_type();
        let content =
            ContentRef { content_type: Some(mime), filename: None, size: stored.size as i64, sha256: &stored.sha256 };
        let media_id = new_media_id();
        match self.db.insert_media(self.server_name.as_str(), &media_id, None, &content).await {
            Ok(true) => {
                og.insert("og:image".into(), json!(format!("mxc://{}/{media_id}", self.server_name)));
                og.insert("og:image:type".into(), json!(mime));
                og.insert("og:image:width".into(), json!(info.width));
                og.insert("og:image:height".into(), json!(info.height));
                og.insert("matrix:image:size".into(), json!(stored.size));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "storing a preview image"),
        }
    }
}

fn content_of(row: &MediaRow) -> Option<Content> {
    Some(Content {
        content_type: row.content_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
        filename: row.filename.clone(),
        size: row.size? as u64,
        sha256: row.sha256.clone()?,
    })
}

fn thumbnail_error(e: ThumbnailError) -> Error {
    match e {
        ThumbnailError::Unsupported => cannot_thumbnail(),
        ThumbnailError::TooLarge => Error::too_large("Content is too large to thumbnail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(sanitize_content_type(Some("image/png")).as_deref(), Some("image/png"));
        assert_eq!(
            sanitize_content_type(Some("text/plain; charset=utf-8")).as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(sanitize_content_type(Some("nonsense")), None);
        assert_eq!(sanitize_content_type(Some("text/html\r\nX-Evil: 1")), None);
        assert_eq!(sanitize_content_type(None), None);
    }
}
