//! The federation media endpoints (spec v1.11): other servers download this server's media and
//! thumbnails with `X-Matrix`-signed requests and get `multipart/mixed` answers (metadata `{}`,
//! then the bytes). Only media that originates here is served; the signature is checked by
//! `Ruma<T>` (ruma's `ServerSignatures` scheme).

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderValue, header};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use super::client::media::{content_disposition, is_inline_safe, thumbnail_request};
use super::extract::Ruma;
use super::{AppState, RouterExt};
use crate::error::{Error, Result};
use crate::media::{Content, multipart};

/// Adds the federation media routes.
pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    router.ruma(download).ruma(thumbnail)
}

/// Streams `content` as the two-part body.
async fn multipart_response(state: &AppState, content: Content, thumbnail: bool) -> Result<Response> {
    let file = state.media.open(&content).await?;
    let boundary = multipart::new_boundary();
    let inline = thumbnail || is_inline_safe(&content.content_type);
    let head =
        multipart::head(&boundary, &content.content_type, &content_disposition(inline, content.filename.as_deref()));
    let tail = multipart::tail(&boundary);
    let length = head.len() as u64 + content.size + tail.len() as u64;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(tokio_util::io::ReaderStream::new(file))
        .chain(futures::stream::once(async move { Ok(tail) }));
    let mut res = Response::new(Body::from_stream(stream));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&multipart::content_type(&boundary)).map_err(Error::internal)?,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(res)
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn download(State(state): State<AppState>, req: Ruma<get_content::v1::Request>) -> Result<Response> {
    req.origin()?;
    let server = state.rooms.server_name().clone();
    let content = state.media.content(&server, &req.body.media_id, req.body.timeout_ms).await?;
    multipart_response(&state, content, false).await
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn thumbnail(
    State(state): State<AppState>,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response> {
    req.origin()?;
    let b = &req.body;
    let request = thumbnail_request(b.method.as_ref(), b.width, b.height, b.animated, b.timeout_ms)?;
    let server = state.rooms.server_name().clone();
    let content = state.media.thumbnail(&server, &b.media_id, request).await?;
    multipart_response(&state, content, true).await
}
