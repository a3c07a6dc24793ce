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
//! federation (`/_matrix/federation/v1/media/…`, multipart answers parsed by [`multipart`]),
//! cached for good, then served like local media; their thumbnails are asked of their server
//! (or, failing that, made here from the original).

pub mod admin;
pub mod multipart;
pub mod preview;
pub mod store;
pub mod thumbnail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ruma::{OwnedMxcUri, OwnedServerName, ServerName, UserId};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::storage::media::{MediaRow, ThumbnailKey};
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
/// Largest thumbnail accepted from another server.
const MAX_REMOTE_THUMBNAIL_BYTES: usize = 10 * 1024 * 1024;
/// Room for the multipart framing around remote media.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// Longest a remote server is asked to wait for a pending upload (federation requests time out
/// after a minute).
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(50);

/// The media repository handle.
pub struct Media {
    db: Db,
    config: Arc<Config>,
    server_name: OwnedServerName,
    store: FileStore,
    /// Thumbnail generation is CPU-bound; at most this many run at once.
    thumbnailers: Arc<Semaphore>,
    /// Woken when an async upload completes, for downloads waiting on it.
    uploaded: Notify,
    fetcher: preview::Fetcher,
    /// Fetches `Location` answers of remote servers (as guarded as URL previews, with private
    /// addresses allowed only where federation allows them).
    location_fetcher: preview::Fetcher,
    /// Set at start-up when federation is configured; remote media needs it.
    /// The transport through which media of other servers is fetched.
    federation: Arc<Federation>,
    /// One fetch per remote media item at a time: concurrent requests wait for the first.
    remote_fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    pub fn new(db: Db, config: Arc<Config>, federation: Arc<Federation>) -> anyhow::Result<Self> {
        let store = FileStore::open(&config.media.dir)
            .map_err(|e| anyhow::anyhow!("opening media.dir {}: {e}", config.media.dir.display()))?;
        let allowlist =
            config.media.url_preview_ip_allowlist.iter().filter_map(|r| crate::ssrf::IpRange::parse(r)).collect();
        let location_allowlist = if config.federation.allow_private_addresses {
            ["0.0.0.0/0", "::/0"].iter().filter_map(|r| crate::ssrf::IpRange::parse(r)).collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            server_name: config.server_name(),
            db,
            config,
            store,
            thumbnailers: Arc::new(Semaphore::new(2)),
            uploaded: Notify::new(),
            fetcher: preview::Fetcher::new(allowlist),
            location_fetcher: preview::Fetcher::new(location_allowlist),
            federation,
            remote_fetches: Mutex::new(HashMap::new()),
        })
    }

    fn federation(&self) -> Result<&Arc<Federation>> {
        Some(&self.federation)
            .filter(|f| f.enabled())
            .ok_or_else(|| Error::not_found("Remote media is not available: federation is disabled"))
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
        let content = stored.record(content_type.as_deref(), filename);
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
        let content = stored.record(content_type.as_deref(), filename);
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
        self.ensure_not_quarantined(server.as_str(), media_id).await?;
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

    /// Media of other servers: from the cache, else fetched over federation (one fetch per
    /// item at a time) and cached for good.
    async fn remote_content(&self, server: &ServerName, media_id: &str, timeout: Duration) -> Result<Content> {
        if let Some(content) = self.db.get_media(server.as_str(), media_id).await?.as_ref().and_then(content_of) {
            return Ok(content);
        }
        if !valid_media_id(media_id) {
            return Err(Error::not_found("Media not found"));
        }
        let federation = self.federation()?.clone();
        let lock = self.fetch_lock(&format!("{server}/{media_id}"));
        let _guard = lock.lock().await;
        // Fetched by another request while this one waited.
        if let Some(content) = self.db.get_media(server.as_str(), media_id).await?.as_ref().and_then(content_of) {
            return Ok(content);
        }
        let timeout_ms = timeout.min(MAX_REMOTE_WAIT).as_millis();
        let limit = self.max_upload_bytes() as usize + MULTIPART_OVERHEAD;
        let path = format!("/_matrix/federation/v1/media/download/{media_id}?timeout_ms={timeout_ms}");
        let (status, headers, body) = federation.get_raw(server, &path, limit).await?;
        let (content_type, disposition, bytes) = if status.is_success() {
            self.media_part(&headers, &body, limit).await?
        } else if is_unrecognized(status, &body) {
            // A server without the federation media endpoints (before spec v1.11): the legacy
            // download, asking it not to fetch from elsewhere.
            let path =
                format!("/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false&timeout_ms={timeout_ms}");
            let (status, headers, body) = federation.get_raw(server, &path, limit).await?;
            if !status.is_success() {
                return Err(remote_error(server, status, &body));
            }
            let header = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_owned);
            (header(http::header::CONTENT_TYPE), header(http::header::CONTENT_DISPOSITION), body)
        } else {
            return Err(remote_error(server, status, &body));
        };
        if bytes.len() as u64 > self.max_upload_bytes() {
            return Err(Error::new(http::StatusCode::BAD_GATEWAY, "M_TOO_LARGE", "Remote media is too large"));
        }
        let stored = self.store.put(&bytes).await.map_err(io_error)?;
        let content_type = sanitize_content_type(content_type.as_deref());
        let filename = disposition
            .and_then(|d| d.parse::<ruma::http_headers::ContentDisposition>().ok())
            .and_then(|d| d.filename)
            .filter(|f| f.len() <= 255 && !f.chars().any(char::is_control));
        let content = stored.record(content_type.as_deref(), filename.as_deref());
        self.db.insert_media(server.as_str(), media_id, None, &content).await?;
        self.db
            .get_media(server.as_str(), media_id)
            .await?
            .as_ref()
            .and_then(content_of)
            .ok_or_else(|| Error::internal("cached remote media vanished"))
    }

    fn fetch_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.remote_fetches.lock().unwrap_or_else(|e| e.into_inner());
        // Forget locks nobody holds, so the map does not grow with every item ever fetched.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Content type, disposition and bytes of a federation media answer (multipart, whose
    /// second part is the bytes or a `Location` to fetch them from).
    async fn media_part(
        &self,
        headers: &http::HeaderMap,
        body: &Bytes,
        limit: usize,
    ) -> Result<(Option<String>, Option<String>, Bytes)> {
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let part = multipart::parse(content_type, body)
            .ok_or_else(|| Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "Malformed remote media answer"))?;
        match part.location {
            Some(location) => {
                let fetched = self.location_fetcher.fetch(&location, limit, false).await?;
                let content_type = Some(fetched.content_type).filter(|c| !c.is_empty());
                Ok((content_type, fetched.content_disposition, fetched.body))
            }
            None => Ok((part.content_type, part.content_disposition, part.body)),
        }
    }

    /// A thumbnail of `mxc://server/media_id` as the spec's size rules choose it. Thumbnails of
    /// remote media come from their server (cached), or are made here from the original when
    /// that server cannot make them.
    pub async fn thumbnail(&self, server: &ServerName, media_id: &str, req: ThumbnailRequest) -> Result<Content> {
        self.ensure_not_quarantined(server.as_str(), media_id).await?;
        if req.width == 0 || req.height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        if !self.is_local(server) {
            match self.remote_thumbnail(server, media_id, req).await {
                Ok(content) => return Ok(content),
                Err(e) if e.errcode == "M_NOT_FOUND" || e.errcode == "M_NOT_YET_UPLOADED" => return Err(e),
                Err(e) => tracing::debug!(%server, media_id, error = %e, "remote thumbnail failed; making one here"),
            }
        }
        let original = self.content(server, media_id, req.timeout).await?;
        self.generate_thumbnail(server, media_id, original, req).await
    }

    /// A thumbnail fetched from the media's own server, checked to be an image we would serve.
    async fn remote_thumbnail(&self, server: &ServerName, media_id: &str, req: ThumbnailRequest) -> Result<Content> {
        if !valid_media_id(media_id) {
            return Err(Error::not_found("Media not found"));
        }
        // Keyed by what was asked for: the remote server chose the size.
        let key = ThumbnailKey {
            origin: server.as_str(),
            media_id,
            width: req.width as i64,
            height: req.height as i64,
            method: req.method.as_str(),
            animated: req.animated,
        };
        if let Some(t) = self.db.get_thumbnail(&key).await? {
            return Ok(Content { content_type: t.content_type, filename: None, size: t.size as u64, sha256: t.sha256 });
        }
        let federation = self.federation()?.clone();
        let path = format!(
            "/_matrix/federation/v1/media/thumbnail/{media_id}?width={}&height={}&method={}&animated={}&timeout_ms={}",
            req.width,
            req.height,
            req.method.as_str(),
            req.animated,
            req.timeout.min(MAX_REMOTE_WAIT).as_millis()
        );
        let limit = MAX_REMOTE_THUMBNAIL_BYTES + MULTIPART_OVERHEAD;
        let (status, headers, body) = federation.get_raw(server, &path, limit).await?;
        if !status.is_success() {
            return Err(remote_error(server, status, &body));
        }
        let (_, _, bytes) = self.media_part(&headers, &body, limit).await?;
        // Thumbnails are served inline: only an image of a format we can read qualifies, and
        // its type comes from its bytes, not from what the remote server claims.
        let info = thumbnail::inspect(&bytes).map_err(|_| {
            Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "The remote thumbnail is not an image")
        })?;
        let content_type = info.format.to_mime_type();
        let stored = self.store.put(&bytes).await.map_err(io_error)?;
        self.db.insert_thumbnail(&key, content_type, stored.size as i64, &stored.sha256).await?;
        Ok(Content { content_type: content_type.to_owned(), filename: None, size: stored.size, sha256: stored.sha256 })
    }

    /// Generates (or reuses) a thumbnail of `original` here.
    async fn generate_thumbnail(
        &self,
        server: &ServerName,
        media_id: &str,
        original: Content,
        req: ThumbnailRequest,
    ) -> Result<Content> {
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
        // Locally made thumbnails are keyed by the size produced (remote ones by the size asked
        // for, `remote_thumbnail`); a method name is added so the two never collide.
        let method = format!("{}-local", req.method.as_str());
        let key = ThumbnailKey {
            origin: server.as_str(),
            media_id,
            width: width as i64,
            height: height as i64,
            method: if self.is_local(server) { req.method.as_str() } else { &method },
            animated,
        };
        if let Some(t) = self.db.get_thumbnail(&key).await? {
            return Ok(Content { content_type: t.content_type, filename: None, size: t.size as u64, sha256: t.sha256 });
        }
        let permit = self.thumbnailers.clone().acquire_owned().await.map_err(Error::internal)?;
        // Another request may have generated it while this one waited for a permit.
        if let Some(t) = self.db.get_thumbnail(&key).await? {
            return Ok(Content { content_type: t.content_type, filename: None, size: t.size as u64, sha256: t.sha256 });
        }
        let bytes = self.store.read(&original.sha256).await.map_err(io_error)?;
        let method = req.method;
        let thumb = tokio::task::spawn_blocking(move || {
            // Held by the work itself: a client that hangs up does not free its slot while
            // the blocking thread still decodes.
            let _permit = permit;
            thumbnail::generate(&bytes, info, width, height, method, animated)
        })
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
        let content = stored.record(Some(mime), None);
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

/// Media ids are `[A-Za-z0-9_-]+` (spec); anything else is never sent to another server.
fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a remote answer means "this endpoint does not exist" (`404 M_UNRECOGNIZED`, or a
/// bare 404/405 without an errcode from servers that predate it).
fn is_unrecognized(status: http::StatusCode, body: &[u8]) -> bool {
    let errcode = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["errcode"].as_str().map(str::to_owned));
    match errcode.as_deref() {
        Some("M_UNRECOGNIZED") => true,
        Some(_) => false,
        None => matches!(status.as_u16(), 404 | 405),
    }
}

/// The error to give our client for a remote server's refusal.
fn remote_error(server: &ServerName, status: http::StatusCode, body: &[u8]) -> Error {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    match (status.as_u16(), value["errcode"].as_str()) {
        (404, _) => Error::not_found("Remote media not found"),
        (504, Some("M_NOT_YET_UPLOADED")) => not_yet_uploaded(),
        (_, Some("M_TOO_LARGE")) => {
            Error::new(http::StatusCode::BAD_GATEWAY, "M_TOO_LARGE", "Remote media is too large")
        }
        _ => Error::new(
            http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} answered {} to the media request", status.as_u16()),
        ),
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
