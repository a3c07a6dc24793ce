//! The media repository over real HTTP on both backends: uploads (plain and async), downloads
//! byte for byte, thumbnails with checked dimensions, authentication, size limits, the frozen
//! legacy endpoints, serving headers and URL previews with their SSRF guard.

#[macro_use]
mod common;

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, Resp, TestServer, assert_error, raw, send, set_config};
use image::{AnimationDecoder, GenericImageView, ImageFormat};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPLOAD: &str = "/_matrix/media/v3/upload";
const CREATE: &str = "/_matrix/media/v1/create";
const DOWNLOAD: &str = "/_matrix/client/v1/media/download";
const THUMBNAIL: &str = "/_matrix/client/v1/media/thumbnail";

/// A raw response: status, headers, body bytes.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header")).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn raw(req: reqwest::RequestBuilder) -> Raw {
    let res = req.send().await.expect("HTTP request failed");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("reading body").to_vec();
    Raw { status, headers, body }
}

/// Uploads `chunks` as a chunked body (no Content-Length); returns the answer. The server may
/// answer 413 and close before taking everything.
async fn chunked_upload(server: &TestServer, client: &Client, chunks: &[Vec<u8>]) -> raw::Answer {
    let head = format!(
        "POST {UPLOAD} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        client.access_token
    );
    raw::request(server, &head, raw::chunked(chunks)).await
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// Uploads `bytes`; returns the answer.
async fn upload_raw(client: &Client, bytes: Vec<u8>, content_type: &str, filename: Option<&str>) -> Resp {
    let path = match filename {
        Some(f) => {
            format!("{UPLOAD}?filename={}", url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>())
        }
        None => UPLOAD.to_owned(),
    };
    send(client.request(Method::POST, &path).header("content-type", content_type).body(bytes)).await
}

/// Uploads `bytes` and returns `server/mediaId` of the new mxc URI.
async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str, filename: Option<&str>) -> String {
    let (status, body) = upload_raw(client, bytes, content_type, filename).await;
    assert_eq!(status, 200, "upload: {body}");
    let uri = body["content_uri"].as_str().expect("content_uri");
    uri.strip_prefix("mxc://").expect("an mxc URI").to_owned()
}

async fn download(client: &Client, mxc: &str) -> Raw {
    raw(client.request(Method::GET, &format!("{DOWNLOAD}/{mxc}"))).await
}

async fn thumbnail(client: &Client, mxc: &str, query: &str) -> Raw {
    raw(client.request(Method::GET, &format!("{THUMBNAIL}/{mxc}?{query}"))).await
}

/// A `w`×`h` image with a gradient (so resizing has something to do), encoded as `format`.
fn make_image(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, format).expect("encoding test image");
    out.into_inner()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    image::load_from_memory(bytes).expect("a decodable image").dimensions()
}

fn media_dir(server: &TestServer) -> std::path::PathBuf {
    server.dir().join("data").join("media")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Serving headers every downloaded file and thumbnail must carry.
#[track_caller]
fn assert_safe_headers(res: &Raw) {
    let csp = res.header("content-security-policy");
    assert!(csp.starts_with("sandbox;") && csp.contains("default-src 'none'"), "CSP: {csp:?}");
    assert_eq!(res.header("x-content-type-options"), "nosniff");
    assert_eq!(res.header("cross-origin-resource-policy"), "cross-origin");
}

// ---------------------------------------------------------------------------------------------
// Upload and download

both_backends!(round_trip_binary, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    // Larger than many HTTP chunks and than axum's default 2 MB body limit, every byte value.
    let data = random_bytes(3_000_000);
    let mxc = upload(&alice, data.clone(), "application/octet-stream", Some("data.bin")).await;
    assert!(mxc.starts_with(&format!("{}/", server.server_name())), "{mxc}");

    // Anyone logged in may download; the bytes are identical.
    let res = download(&bob, &mxc).await;
    assert_eq!(res.status, 200);
    assert!(res.body == data, "downloaded bytes differ from the upload");
    assert_eq!(res.header("content-type"), "application/octet-stream");
    assert_eq!(res.header("content-length"), data.len().to_string());
    assert_eq!(res.header("content-disposition"), "attachment; filename=\"data.bin\"");
    assert_safe_headers(&res);

    // The file is stored under its SHA-256, with no temporary files left behind.
    let hash = sha256_hex(&data);
    let path = media_dir(&server).join(&hash[0..2]).join(&hash[2..4]).join(&hash);
    assert_eq!(std::fs::read(&path).expect("content-addressed file"), data);
    assert_eq!(std::fs::read_dir(media_dir(&server).join("tmp")).unwrap().count(), 0);

    // The same bytes again: a new media id, one file.
    let again = upload(&alice, data.clone(), "application/octet-stream", None).await;
    assert_ne!(again, mxc);
    let res = download(&alice, &again).await;
    assert!(res.body == data);
    // No filename at upload: none in the header.
    assert_eq!(res.header("content-disposition"), "attachment");

    // The file name in the path overrides the uploaded one.
    let res = raw(alice.request(Method::GET, &format!("{DOWNLOAD}/{mxc}/other%20name.bin"))).await;
    assert_eq!(res.status, 200);
    assert!(res.body == data);
    assert_eq!(res.header("content-disposition"), "attachment; filename=\"other name.bin\"");

    // Empty uploads are valid media too.
    let empty = upload(&alice, Vec::new(), "text/plain", None).await;
    let res = download(&alice, &empty).await;
    assert_eq!((res.status, res.body.len()), (200, 0));

    // Unknown media.
    let resp = alice.get(&format!("{DOWNLOAD}/{}/doesNotExist", server.server_name())).await;
    assert_error(&resp, 404, "M_NOT_FOUND");
});

both_backends!(crash_mid_upload_leaves_no_file, |server| async move {
    let mut server = server;
    let alice = server.register("alice").await;
    // Half of a declared 200 kB upload, then the server dies.
    let addr = server.url().trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {UPLOAD} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 200000\r\n\r\n",
        alice.access_token
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&random_bytes(100_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill9();
    server.start_again().await;

    // Only the temporary directory may hold anything; no content file became visible.
    let visible: Vec<_> = std::fs::read_dir(media_dir(&server))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "tmp")
        .collect();
    assert!(visible.is_empty(), "files after a crash mid-upload: {visible:?}");
    // (The upload had started: its temporary file is there, to be swept once stale.)
    assert_eq!(std::fs::read_dir(media_dir(&server).join("tmp")).unwrap().count(), 1);
    // The server works on.
    let alice = server.login("alice", common::PASSWORD).await;
    let mxc = upload(&alice, b"after".to_vec(), "text/plain", None).await;
    assert_eq!(download(&alice, &mxc).await.body, b"after");
});

both_backends!(content_disposition_and_types, |server| async move {
    let alice = server.register("alice").await;
    // Safe types are inline, with the content type as uploaded.
    let png = make_image(10, 10, ImageFormat::Png);
    let mxc = upload(&alice, png.clone(), "image/png", Some("dot.png")).await;
    let res = download(&alice, &mxc).await;
    assert_eq!(res.header("content-type"), "image/png");
    assert_eq!(res.header("content-disposition"), "inline; filename=\"dot.png\"");
    assert_safe_headers(&res);

    // HTML (and SVG, which can script) must never render inline from the homeserver's origin.
    for ct in ["text/html", "image/svg+xml", "application/javascript"] {
        let mxc = upload(&alice, b"<script>alert(1)</script>".to_vec(), ct, Some("page.html")).await;
        let res = download(&alice, &mxc).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("content-type"), ct);
        assert_eq!(res.header("content-disposition"), "attachment; filename=\"page.html\"", "{ct}");
        assert_safe_headers(&res);
    }

    // Parameters do not stop a safe type from being inline.
    let mxc = upload(&alice, b"hello".to_vec(), "text/plain; charset=utf-8", None).await;
    let res = download(&alice, &mxc).await;
    assert_eq!(res.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(res.header("content-disposition"), "inline");

    // Non-ASCII and quote characters use the RFC 6266 extended form.
    let mxc = upload(&alice, b"x".to_vec(), "text/plain", Some("résumé \"final\".txt")).await;
    let res = download(&alice, &mxc).await;
    assert_eq!(res.header("content-disposition"), "inline; filename*=utf-8''r%C3%A9sum%C3%A9%20%22final%22.txt");

    // A missing or malformed content type is served as application/octet-stream.
    let (status, body) = send(alice.request(Method::POST, UPLOAD).body(b"abc".to_vec())).await;
    assert_eq!(status, 200, "{body}");
    let mxc = body["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let res = download(&alice, &mxc).await;
    assert_eq!(res.header("content-type"), "application/octet-stream");
    assert_eq!(res.header("content-disposition"), "attachment");
});

both_backends!(authentication_required, |server| async move {
    let alice = server.register("alice").await;
    let mxc = upload(&alice, b"secret".to_vec(), "text/plain", None).await;
    let name = server.server_name();
    for path in [
        format!("{DOWNLOAD}/{mxc}"),
        format!("{DOWNLOAD}/{mxc}/f.txt"),
        format!("{THUMBNAIL}/{mxc}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
        "/_matrix/client/v1/media/preview_url?url=https://example.org/".to_owned(),
    ] {
        assert_error(&server.get(&path).await, 401, "M_MISSING_TOKEN");
        let resp = send(server.request(Method::GET, &path).bearer_auth("wrong")).await;
        assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
    }
    let resp = send(server.request(Method::POST, UPLOAD).header("content-type", "text/plain").body("x")).await;
    assert_error(&resp, 401, "M_MISSING_TOKEN");
    let resp = send(server.request(Method::POST, UPLOAD).bearer_auth("wrong").body("x")).await;
    assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
    assert_error(&server.post(CREATE, &json!({})).await, 401, "M_MISSING_TOKEN");
    let resp = send(server.request(Method::PUT, &format!("/_matrix/media/v3/upload/{name}/abc")).body("x")).await;
    assert_error(&resp, 401, "M_MISSING_TOKEN");
});

both_backends!(upload_size_limit, with | c | set_config(c, "media.max_upload_bytes", 1000), |server| async move {
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v1/media/config").await;
    assert_eq!((status, &body), (200, &json!({ "m.upload.size": 1000 })));
    // The deprecated path answers the same (it was always authenticated, so it is not frozen).
    assert_eq!(alice.get("/_matrix/media/v3/config").await.1, body);

    // At the limit is fine; one byte more is refused up front by its Content-Length.
    let at_limit = random_bytes(1000);
    let mxc = upload(&alice, at_limit.clone(), "application/octet-stream", None).await;
    assert!(download(&alice, &mxc).await.body == at_limit);
    assert_error(&upload_raw(&alice, random_bytes(1001), "application/octet-stream", None).await, 413, "M_TOO_LARGE");

    // Without a Content-Length (chunked), the limit applies to the bytes as they arrive.
    let resp = chunked_upload(&server, &alice, &[random_bytes(600), random_bytes(600)]).await.resp();
    assert_error(&resp, 413, "M_TOO_LARGE");
    let resp = chunked_upload(&server, &alice, &[random_bytes(500), random_bytes(500)]).await.resp();
    assert_eq!(resp.0, 200, "{resp:?}");

    // The same through an async upload.
    let (_, created) = alice.post(CREATE, &json!({})).await;
    let id = created["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let resp = send(alice.request(Method::PUT, &format!("{UPLOAD}/{id}")).body(random_bytes(1001))).await;
    assert_error(&resp, 413, "M_TOO_LARGE");
    // A refused upload leaves the id usable.
    let resp = send(alice.request(Method::PUT, &format!("{UPLOAD}/{id}")).body(random_bytes(10))).await;
    assert_eq!(resp.0, 200, "{resp:?}");

    // Nothing of the refused uploads is left on disk.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read_dir(media_dir(&server).join("tmp")).unwrap().count(), 0);
});

both_backends!(async_upload, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (status, created) = alice.post(CREATE, &json!({})).await;
    assert_eq!(status, 200, "{created}");
    let id = created["content_uri"].as_str().unwrap().strip_prefix("mxc://").expect("mxc").to_owned();
    let expires = created["unused_expires_at"].as_i64().expect("unused_expires_at");
    assert!(expires > before + 23 * 3600 * 1000 && expires < before + 25 * 3600 * 1000, "{created}");

    // Not uploaded yet: downloads wait up to timeout_ms, then 504.
    let resp = alice.get(&format!("{DOWNLOAD}/{id}?timeout_ms=200")).await;
    assert_error(&resp, 504, "M_NOT_YET_UPLOADED");

    // A download waiting while the upload happens gets the content.
    let waiter = {
        let bob = bob.clone();
        let id = id.clone();
        tokio::spawn(async move { raw(bob.request(Method::GET, &format!("{DOWNLOAD}/{id}?timeout_ms=20000"))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Only the creator may upload.
    let data = random_bytes(50_000);
    let put = |c: &Client, body: Vec<u8>| {
        c.request(Method::PUT, &format!("{UPLOAD}/{id}?filename=async.bin"))
            .header("content-type", "application/octet-stream")
            .body(body)
    };
    assert_error(&send(put(&bob, data.clone())).await, 403, "M_FORBIDDEN");
    let resp = send(put(&alice, data.clone())).await;
    assert_eq!(resp, (200, json!({})));
    // Once.
    assert_error(&send(put(&alice, random_bytes(10))).await, 409, "M_CANNOT_OVERWRITE_MEDIA");

    let waited = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("waiting download").unwrap();
    assert_eq!(waited.status, 200);
    assert!(waited.body == data);
    let res = download(&alice, &id).await;
    assert!(res.body == data);
    assert_eq!(res.header("content-disposition"), "attachment; filename=\"async.bin\"");

    // Ids that were never created, or of another server.
    let name = server.server_name();
    let resp = send(alice.request(Method::PUT, &format!("{UPLOAD}/{name}/neverCreated")).body("x")).await;
    assert_error(&resp, 404, "M_NOT_FOUND");
    let resp = send(alice.request(Method::PUT, &format!("{UPLOAD}/other.example/abc")).body("x")).await;
    assert_error(&resp, 404, "M_NOT_FOUND");
    // Ids from a plain upload are not open for a second upload either.
    let plain = upload(&alice, b"x".to_vec(), "text/plain", None).await;
    let resp = send(alice.request(Method::PUT, &format!("{UPLOAD}/{plain}")).body("y")).await;
    assert_error(&resp, 409, "M_CANNOT_OVERWRITE_MEDIA");
});

both_backends!(pending_uploads_are_limited, |server| async move {
    let alice = server.register("alice").await;
    let mut last = 0;
    for _ in 0..40 {
        last = alice.post(CREATE, &json!({})).await.0;
        if last != 200 {
            break;
        }
    }
    assert_eq!(last, 429, "creating unused ids without limit");
    // Other users are unaffected.
    assert_eq!(server.register("bob").await.post(CREATE, &json!({})).await.0, 200);
});

// ---------------------------------------------------------------------------------------------
// Thumbnails

both_backends!(thumbnails_png_and_jpeg, |server| async move {
    let alice = server.register("alice").await;
    let png = make_image(640, 480, ImageFormat::Png);
    let mxc = upload(&alice, png.clone(), "image/png", Some("photo.png")).await;

    // (query, expected dimensions): crop gives the recommended squares, scale keeps 4:3.
    for (query, want) in [
        ("width=32&height=32&method=crop", (32, 32)),
        ("width=20&height=10&method=crop", (32, 32)),
        ("width=50&height=50&method=crop", (96, 96)),
        ("width=200&height=100&method=crop", (200, 100)),
        ("width=100&height=100&method=scale", (320, 240)),
        ("width=100&height=100", (320, 240)),
        ("width=400&height=300&method=scale", (640, 480)),
        // A crop that cannot be filled without upscaling: the largest 1:1 region, at full size.
        ("width=500&height=500&method=crop", (480, 480)),
    ] {
        let res = thumbnail(&alice, &mxc, query).await;
        assert_eq!(res.status, 200, "{query}: {:?}", res.json());
        assert_eq!(res.header("content-type"), "image/png", "{query}");
        assert_eq!(dimensions(&res.body), want, "{query}");
        assert!(res.header("content-disposition").starts_with("inline"), "{query}");
        assert_safe_headers(&res);
    }

    // Never upscaled: asking for more than the original returns the original itself.
    for query in ["width=800&height=600&method=scale", "width=1000&height=1000&method=crop"] {
        let res = thumbnail(&alice, &mxc, query).await;
        assert_eq!(res.status, 200);
        assert!(res.body == png, "{query}: expected the original bytes");
    }

    // Cached: the same request answers the same bytes.
    let a = thumbnail(&alice, &mxc, "width=32&height=32&method=crop").await;
    let b = thumbnail(&alice, &mxc, "width=32&height=32&method=crop").await;
    assert!(a.body == b.body);

    // JPEG stays JPEG.
    let jpeg = make_image(300, 200, ImageFormat::Jpeg);
    let mxc = upload(&alice, jpeg, "image/jpeg", None).await;
    let res = thumbnail(&alice, &mxc, "width=96&height=96&method=crop").await;
    assert_eq!(res.header("content-type"), "image/jpeg");
    assert_eq!(image::guess_format(&res.body).unwrap(), ImageFormat::Jpeg);
    assert_eq!(dimensions(&res.body), (96, 96));
    let res = thumbnail(&alice, &mxc, "width=64&height=64&method=scale").await;
    // The 320x240 box would need upscaling 300x200: the original.
    assert_eq!(dimensions(&res.body), (300, 200));

    // Not an image; nonsense sizes.
    let text = upload(&alice, b"not an image".to_vec(), "image/png", None).await;
    let res = thumbnail(&alice, &text, "width=32&height=32").await;
    assert_eq!((res.status, res.json()["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{:?}", res.json());
    let res = thumbnail(&alice, &mxc, "width=0&height=32").await;
    assert_eq!(res.status, 400);
    let res = thumbnail(&alice, &mxc, "width=-1&height=32").await;
    assert_eq!(res.status, 400);
    let res = thumbnail(&alice, &mxc, "height=32").await;
    assert_eq!(res.status, 400);
    let res = thumbnail(&alice, &format!("{}/nope", server.server_name()), "width=32&height=32").await;
    assert_eq!((res.status, res.json()["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
});

both_backends!(animated_thumbnails, |server| async move {
    let alice = server.register("alice").await;
    // A two-frame 200x200 GIF.
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite).unwrap();
        for shade in [0u8, 255] {
            let buf = image::RgbaImage::from_pixel(200, 200, image::Rgba([shade, 0, 0, 255]));
            enc.encode_frame(image::Frame::from_parts(buf, 0, 0, image::Delay::from_numer_denom_ms(100, 1))).unwrap();
        }
    }
    let mxc = upload(&alice, gif, "image/gif", None).await;

    let res = thumbnail(&alice, &mxc, "width=96&height=96&method=crop&animated=true").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), "image/gif");
    let frames =
        image::codecs::gif::GifDecoder::new(Cursor::new(&res.body)).unwrap().into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 2, "animation kept");
    assert_eq!(frames[0].buffer().dimensions(), (96, 96));

    // Not asked for (or refused): a still image, even at the original size.
    for query in
        ["width=96&height=96&method=crop", "width=96&height=96&method=crop&animated=false", "width=400&height=400"]
    {
        let res = thumbnail(&alice, &mxc, query).await;
        assert_eq!(res.status, 200, "{query}");
        assert_eq!(res.header("content-type"), "image/png", "{query}");
    }
    assert_eq!(dimensions(&thumbnail(&alice, &mxc, "width=400&height=400").await.body), (200, 200));
});

/// The GIF of the review: a 5000x5000 canvas with 40 frames of one pixel each, 959 bytes. Written
/// by hand, as the `image` crate's encoder sizes the canvas by the first frame.
fn huge_canvas_tiny_frames_gif() -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    // Logical screen 5000x5000, a global table of two colours.
    gif.extend_from_slice(&5000u16.to_le_bytes());
    gif.extend_from_slice(&5000u16.to_le_bytes());
    gif.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    // Loop for ever (NETSCAPE2.0).
    gif.extend_from_slice(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00");
    for i in 0..40u16 {
        // Graphic control: 10 cs delay.
        gif.extend_from_slice(&[0x21, 0xf9, 0x04, 0x00, 0x0a, 0x00, 0x00, 0x00]);
        // A 1x1 image somewhere on the canvas.
        gif.push(0x2c);
        gif.extend_from_slice(&(i * 100).to_le_bytes());
        gif.extend_from_slice(&(i * 100).to_le_bytes());
        gif.extend_from_slice(&[1, 0, 1, 0, 0]);
        // LZW, minimum code size 2: clear (4), index 0, end (5), in 3-bit codes.
        gif.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    gif.push(0x3b);
    gif
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_sec)
}

// A tiny GIF with a huge canvas and many frames: each frame is decoded onto (and resized from)
// the whole canvas, so the work is frames x canvas pixels, not the file's size. It cost 8.7 s of
// CPU in a release build (over 60 s in a debug one). Now an animation is made only while frames
// x canvas pixels stays within the budget of one still image; beyond it the answer is a still
// thumbnail of the first frame, which costs what the still thumbnail of the same file costs.
both_backends!(animated_thumbnail_work_is_bounded, |server| async move {
    let alice = server.register("alice").await;
    let gif = huge_canvas_tiny_frames_gif();
    assert!(gif.len() < 1000, "{} bytes", gif.len());
    let mxc = upload(&alice, gif, "image/gif", None).await;
    let pid = server.pid().unwrap();
    let mut costs = Vec::new();
    for animated in [false, true] {
        let before = cpu_time(pid);
        let query = format!("width=96&height=96&method=crop&animated={animated}");
        let res = thumbnail(&alice, &mxc, &query).await;
        let cpu = cpu_time(pid) - before;
        eprintln!("5000x5000 canvas, 40 frames, animated={animated}: {} after {cpu:?} of server CPU", res.status);
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        assert_eq!(res.header("content-type"), "image/png", "a still image of the first frame");
        assert_eq!(dimensions(&res.body), (96, 96));
        costs.push(cpu);
    }
    // Same work for both (debug builds decode slowly, so compare rather than fix a time).
    assert!(costs[1] < costs[0] * 2 + Duration::from_millis(500), "still {:?}, animated {:?}", costs[0], costs[1]);
});

// ---------------------------------------------------------------------------------------------
// Legacy endpoints

both_backends!(legacy_endpoints_are_frozen, |server| async move {
    let alice = server.register("alice").await;
    let png = make_image(100, 100, ImageFormat::Png);
    let mxc = upload(&alice, png, "image/png", Some("a.png")).await;
    // All media here was created after the freeze: the unauthenticated endpoints answer 404,
    // with or without a token, for existing and unknown media alike.
    for path in [
        format!("/_matrix/media/v3/download/{mxc}"),
        format!("/_matrix/media/v3/download/{mxc}/a.png"),
        format!("/_matrix/media/v3/thumbnail/{mxc}?width=32&height=32"),
        format!("/_matrix/media/r0/download/{mxc}"),
        format!("/_matrix/media/v3/download/{}/unknown", server.server_name()),
    ] {
        assert_error(&server.get(&path).await, 404, "M_NOT_FOUND");
        assert_error(&alice.get(&path).await, 404, "M_NOT_FOUND");
    }
    // The same media through the authenticated endpoint works.
    assert_eq!(download(&alice, &mxc).await.status, 200);
});

// ---------------------------------------------------------------------------------------------
// URL previews

/// A tiny HTTP server: answers each request with `respond(path)` and counts connections.
async fn http_stub(
    ip: &str,
    respond: impl Fn(&str) -> (String, Vec<u8>) + Send + Sync + 'static,
) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("binding the stub");
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let respond = Arc::new(respond);
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match sock.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (head, body) = respond(&path);
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock
                    .write_all(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
                    .await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    (port, hits)
}

fn preview_path(url: &str) -> String {
    format!(
        "/_matrix/client/v1/media/preview_url?url={}",
        url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>()
    )
}

both_backends!(preview_refuses_private_addresses, |server| async move {
    let alice = server.register("alice").await;
    let (port, hits) = http_stub("127.0.0.1", |_| {
        ("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n".into(), b"<title>x</title>".to_vec())
    })
    .await;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://0.0.0.0:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://10.0.0.1:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://2130706433:{port}/"), // 127.0.0.1 as a number
    ] {
        let resp = alice.get(&preview_path(&url)).await;
        assert_error(&resp, 403, "M_FORBIDDEN");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused URL was fetched");
    for url in ["file:///etc/passwd", "gopher://127.0.0.1/", "not a url"] {
        assert_eq!(alice.get(&preview_path(url)).await.0, 400, "{url}");
    }
});

both_backends!(
    preview_fetches_opengraph_and_redirects_are_checked,
    with | c | set_config(c, "media.url_preview_ip_allowlist", toml::Value::Array(vec!["127.0.0.1".into()])),
    |server| async move {
        let alice = server.register("alice").await;
        // A listener on 127.0.0.2 (loopback too, but not allowed): nothing may ever reach it.
        let (forbidden_port, forbidden_hits) =
            http_stub("127.0.0.2", |_| ("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n".into(), Vec::new())).await;
        let png = make_image(64, 48, ImageFormat::Png);
        let served = png.clone();
        let (port, _) = http_stub("127.0.0.1", move |path| match path {
            "/page" => (
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n".into(),
                br#"<html><head><title>Fallback</title>
                    <meta property="og:title" content="Hello &amp; welcome">
                    <meta property="og:description" content="A test page">
                    <meta property="og:image" content="/img.png">
                    </head><body></body></html>"#
                    .to_vec(),
            ),
            "/img.png" => ("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n".into(), served.clone()),
            "/moved" => ("HTTP/1.1 301 Moved\r\nLocation: /page\r\n".into(), Vec::new()),
            "/escape" => {
                (format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{forbidden_port}/\r\n"), Vec::new())
            }
            _ => ("HTTP/1.1 404 Not Found\r\n".into(), Vec::new()),
        })
        .await;

        let (status, body) = alice.get(&preview_path(&format!("http://127.0.0.1:{port}/page"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["og:title"], "Hello & welcome");
        assert_eq!(body["og:description"], "A test page");
        assert_eq!(body["og:image:width"], 64);
        assert_eq!(body["matrix:image:size"], png.len());
        let image = body["og:image"].as_str().expect("og:image").strip_prefix("mxc://").expect("an mxc URI");
        assert!(download(&alice, image).await.body == png);

        // A redirect within the allowed range is followed...
        let (status, body) = alice.get(&preview_path(&format!("http://127.0.0.1:{port}/moved"))).await;
        assert_eq!((status, &body["og:title"]), (200, &json!("Hello & welcome")));
        // ...one to a forbidden address is refused before connecting.
        let resp = alice.get(&preview_path(&format!("http://127.0.0.1:{port}/escape"))).await;
        assert_error(&resp, 403, "M_FORBIDDEN");
        let resp = alice.get(&preview_path(&format!("http://127.0.0.2:{forbidden_port}/"))).await;
        assert_error(&resp, 403, "M_FORBIDDEN");
        assert_eq!(forbidden_hits.load(Ordering::SeqCst), 0, "the guard let a request through");

        // Errors of the page itself.
        let resp = alice.get(&preview_path(&format!("http://127.0.0.1:{port}/missing"))).await;
        assert_eq!(resp.0, 502, "{resp:?}");
    }
);

both_backends!(
    preview_can_be_disabled,
    with | c | set_config(c, "media.url_preview_enabled", false),
    |server| async move {
        let alice = server.register("alice").await;
        assert_error(&alice.get(&preview_path("https://example.org/")).await, 404, "M_UNRECOGNIZED");
    }
);
