//! The media repository's client endpoints: upload (streamed, outside the JSON extractor),
//! async upload, authenticated download and thumbnails, config, URL previews, and the frozen
//! legacy unauthenticated download endpoints. The work happens in `crate::media`; here are the
//! HTTP shapes and the headers that make served files safe to open in a browser.

use axum::Json;
use axum::body::Body;
use axum::extract::{RawPathParams, Request, State};
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderValue, header};
use ruma::ServerName;
use ruma::api::client::authenticated_media::{
    get_content, get_content_as_filename, get_content_thumbnail, get_media_config, get_media_preview,
};
use ruma::api::client::media;
use ruma::media::Method as RumaMethod;
use serde_json::{Value, json};

use crate::accounts::Session;
use crate::api::AppState;
use crate::api::extract::{Ruma, access_token};
use crate::error::{Error, Result};
use crate::media::thumbnail::Method;
use crate::media::{Content, ThumbnailRequest};

/// Content types a browser may render inline from our origin (the spec's list for serving
/// inline content); everything else is served as an attachment.
const INLINE_CONTENT_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Sent with every file: no scripts, plugins or same-origin access even if a browser renders
/// the content as a page.
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Whether `content_type` may be served `inline`.
pub fn is_inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    INLINE_CONTENT_TYPES.contains(&essence.as_str())
}

/// `inline` or `attachment`, with the file name: plain `filename="…"` when it is printable
/// ASCII without quotes or backslashes, otherwise the RFC 6266 `filename*=utf-8''…` form.
pub fn content_disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    match filename {
        None | Some("") => kind.to_owned(),
        Some(name) if name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') => {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            let mut encoded = String::new();
            for b in name.bytes() {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    encoded.push(b as char);
                } else {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
}

/// Streams stored content with the spec's serving headers.
async fn serve(state: &AppState, content: Content, filename: Option<&str>, thumbnail: bool) -> Result<Response> {
    let file = state.media.open(&content).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    // Thumbnails are always inline (they are images of the safe kinds); files are inline only
    // when their type is on the list.
    let inline = thumbnail || is_inline_safe(&content.content_type);
    let disposition = content_disposition(inline, filename.or(content.filename.as_deref()));
    let content_type =
        HeaderValue::from_str(&content.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut res = Response::new(body);
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content.size));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    // Content behind an mxc URI never changes; it is per-user authenticated, so only private caches.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    Ok(res)
}

/// Authenticates an upload request (it bypasses `Ruma<T>`, which buffers bodies as JSON) and
/// applies the rate limit ruma declares for the upload endpoints.
async fn upload_session(state: &AppState, parts: &http::request::Parts) -> Result<Session> {
    let token = access_token(parts)?.ok_or_else(Error::missing_token)?;
    let ip = crate::api::extract::client_ip(parts, &state.trusted_proxies).to_string();
    let session = state.accounts.authenticate(&token, Some(&ip)).await?;
    state.limits.requests.check(session.user_id.as_str())?;
    if session.suspended {
        return Err(Error::user_suspended());
    }
    Ok(session)
}

/// The `filename` query parameter and the `Content-Type` and `Content-Length` headers.
fn upload_metadata(parts: &http::request::Parts) -> Result<(Option<String>, Option<String>, Option<u64>)> {
    let query = parts.uri.query().unwrap_or("");
    let filename =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "filename").map(|(_, v)| v.into_owned());
    if filename.as_ref().is_some_and(|f| f.len() > 255 || f.chars().any(char::is_control)) {
        return Err(Error::invalid_param("Invalid filename"));
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let declared =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    Ok((filename, content_type, declared))
}

/// Most of an unread request body read and discarded before an early error answer.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Reads and discards (up to [`DRAIN_LIMIT`], for up to 10 s) the body of a request refused
/// before its upload was read. A client still sending when the server answers and closes would
/// otherwise often see a reset connection instead of the error.
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(State(state): State<AppState>, req: Request) -> Result<Json<Value>> {
    let (parts, body) = req.into_parts();
    let checked = async { Ok::<_, Error>((upload_session(&state, &parts).await?, upload_metadata(&parts)?)) }.await;
    let (session, (filename, content_type, declared)) = match checked {
        Ok(v) => v,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let uri = state
        .media
        .upload(&session.user_id, content_type.as_deref(), filename.as_deref(), body.into_data_stream(), declared)
        .await?;
    Ok(Json(json!({ "content_uri": uri })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_async(State(state): State<AppState>, params: RawPathParams, req: Request) -> Result<Json<Value>> {
    let (parts, body) = req.into_parts();
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_owned()).unwrap_or_default();
    let media_id = param("media_id");
    let checked = async {
        let session = upload_session(&state, &parts).await?;
        let server =
            ServerName::parse(param("server_name")).map_err(|_| Error::invalid_param("Invalid server name"))?;
        let meta = upload_metadata(&parts)?;
        state.media.check_upload_target(&session.user_id, &server, &media_id).await?;
        Ok::<_, Error>((session, server, meta))
    }
    .await;
    let (session, server, (filename, content_type, declared)) = match checked {
        Ok(v) => v,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    state
        .media
        .upload_pending(
            &session.user_id,
            &server,
            &media_id,
            content_type.as_deref(),
            filename.as_deref(),
            body.into_data_stream(),
            declared,
        )
        .await?;
    Ok(Json(json!({})))
}

/// Registers the two upload endpoints on every path ruma knows for them.
pub fn upload_routes(mut router: axum::Router<AppState>) -> axum::Router<AppState> {
    use ruma::api::Metadata;
    use ruma::api::path_builder::PathBuilder;
    for path in media::create_content::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::post(upload));
    }
    for path in media::create_content_async::v3::Request::PATH_BUILDER.all_paths() {
        router = router.route(path, axum::routing::put(upload_async));
    }
    router
}

/// `POST /_matrix/media/v1/create`
pub async fn create(
    State(state): State<AppState>,
    req: Ruma<media::create_mxc_uri::v1::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let (uri, expires) = state.media.create_pending(&s.user_id).await?;
    Ok(Json(json!({ "content_uri": uri, "unused_expires_at": expires })))
}

fn config_body(state: &AppState) -> Json<Value> {
    Json(json!({ "m.upload.size": state.media.max_upload_bytes() }))
}

/// `GET /_matrix/client/v1/media/config`
pub async fn config(State(state): State<AppState>, _req: Ruma<get_media_config::v1::Request>) -> Result<Json<Value>> {
    Ok(config_body(&state))
}

/// `GET /_matrix/media/v3/config` (deprecated, still authenticated, not frozen).
#[allow(deprecated)] // Served on purpose: the legacy paths are part of the spec.
pub async fn config_legacy(
    State(state): State<AppState>,
    _req: Ruma<media::get_media_config::v3::Request>,
) -> Result<Json<Value>> {
    Ok(config_body(&state))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn download(State(state): State<AppState>, req: Ruma<get_content::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let content = state.media.content(&b.server_name, &b.media_id, b.timeout_ms).await?;
    serve(&state, content, None, false).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn download_as(
    State(state): State<AppState>,
    req: Ruma<get_content_as_filename::v1::Request>,
) -> Result<Response> {
    let b = &req.body;
    let content = state.media.content(&b.server_name, &b.media_id, b.timeout_ms).await?;
    serve(&state, content, Some(&b.filename), false).await
}

/// The thumbnail parameters of a client or federation request.
pub(crate) fn thumbnail_request(
    method: Option<&RumaMethod>,
    width: ruma::UInt,
    height: ruma::UInt,
    animated: Option<bool>,
    timeout: std::time::Duration,
) -> Result<ThumbnailRequest> {
    let method = match method {
        None | Some(RumaMethod::Scale) => Method::Scale,
        Some(RumaMethod::Crop) => Method::Crop,
        Some(other) => return Err(Error::invalid_param(format!("Unknown thumbnail method {}", other.as_str()))),
    };
    let to_u32 = |v: ruma::UInt| u32::try_from(u64::from(v)).map_err(|_| Error::invalid_param("Size out of range"));
    Ok(ThumbnailRequest {
        width: to_u32(width)?,
        height: to_u32(height)?,
        method,
        animated: animated == Some(true),
        timeout,
    })
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    State(state): State<AppState>,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    let b = &req.body;
    let request = thumbnail_request(b.method.as_ref(), b.width, b.height, b.animated, b.timeout_ms)?;
    let content = state.media.thumbnail(&b.server_name, &b.media_id, request).await?;
    let ext = content.content_type.strip_prefix("image/").unwrap_or("bin").to_owned();
    serve(&state, content, Some(&format!("thumbnail.{ext}")), true).await
}

/// `GET /_matrix/client/v1/media/preview_url`
pub async fn preview_url(
    State(state): State<AppState>,
    req: Ruma<get_media_preview::v1::Request>,
) -> Result<Json<Value>> {
    Ok(Json(state.media.preview_url(&req.body.url).await?))
}

/// `GET /_matrix/media/v3/preview_url` (deprecated, still authenticated, not frozen).
#[allow(deprecated)] // Served on purpose: the legacy paths are part of the spec.
pub async fn preview_url_legacy(
    State(state): State<AppState>,
    req: Ruma<media::get_media_preview::v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(state.media.preview_url(&req.body.url).await?))
}

/// The answer of the frozen unauthenticated endpoints. The spec (v1.11) lets a server stop
/// serving media created after it froze unauthenticated access with 404 `M_NOT_FOUND`; this
/// server has always been frozen, so no media — local or remote — predates the freeze.
fn frozen() -> Error {
    Error::not_found("Unauthenticated media access is frozen; use /_matrix/client/v1/media")
}

/// The legacy download and thumbnail endpoints (`GET /_matrix/media/v3/download/…`,
/// `/thumbnail/…`): all three answer [`frozen`].
pub async fn frozen_legacy<R: Send>(State(_state): State<AppState>, _req: Ruma<R>) -> Result<Response> {
    Err(frozen())
}

/// Registers the frozen legacy download and thumbnail endpoints.
#[allow(deprecated)] // Served on purpose: the legacy paths are part of the spec.
pub fn frozen_routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    use super::RouterExt;
    router
        .ruma(frozen_legacy::<media::get_content::v3::Request>)
        .ruma(frozen_legacy::<media::get_content_as_filename::v3::Request>)
        .ruma(frozen_legacy::<media::get_content_thumbnail::v3::Request>)
}
