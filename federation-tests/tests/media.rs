//! Remote media between two Myelin servers: a user of B downloads and thumbnails media
//! uploaded on A (fetched over the federation media endpoints, then cached on B), and A's
//! federation endpoints answer signed requests only, with the spec's multipart bodies.

mod common;

use std::io::Cursor;

use base64::Engine;
use common::*;
use image::{GenericImageView, ImageFormat};
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::signatures::Ed25519KeyPair;

/// Status, headers and bytes of a request.
async fn raw(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let res = req.send().await.expect("HTTP request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.bytes().await.expect("body").to_vec())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str, filename: &str) -> String {
    let res = http_client()
        .post(format!("{}/_matrix/media/v3/upload?filename={}", client.base, enc(filename)))
        .bearer_auth(&client.access_token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    body["content_uri"].as_str().expect("content_uri").strip_prefix("mxc://").expect("mxc").to_owned()
}

async fn get(client: &Client, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    raw(http_client().get(format!("{}{path}", client.base)).bearer_auth(&client.access_token)).await
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 77]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Png).expect("png");
    out.into_inner()
}

fn dims(bytes: &[u8]) -> (u32, u32) {
    image::load_from_memory(bytes).expect("an image").dimensions()
}

#[tokio::test]
async fn remote_media_is_fetched_cached_and_thumbnailed() {
    let mut a = FedServer::start("127.0.40.11").await;
    let b = FedServer::start("127.0.40.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;

    let data: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
    let blob = upload(&alice, data.clone(), "application/octet-stream", "blob.bin").await;
    assert!(blob.starts_with(&format!("{}/", a.name())), "{blob}");
    let picture = png(640, 480);
    let pic = upload(&alice, picture.clone(), "image/png", "pic.png").await;

    // Bob, on B, downloads A's media: identical bytes, A's file name, safe headers.
    let (status, headers, body) = get(&bob, &format!("/_matrix/client/v1/media/download/{blob}")).await;
    assert_eq!(status, 200, "remote download: {}", String::from_utf8_lossy(&body));
    assert!(body == data, "remote bytes differ");
    assert_eq!(header(&headers, "content-disposition"), "attachment; filename=\"blob.bin\"");
    assert_eq!(header(&headers, "content-type"), "application/octet-stream");
    assert!(header(&headers, "content-security-policy").starts_with("sandbox"));

    // Thumbnails of remote images, with the sizes the spec's rules give.
    for (query, want) in
        [("width=32&height=32&method=crop", (32, 32)), ("width=100&height=100&method=scale", (320, 240))]
    {
        let (status, headers, body) = get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{pic}?{query}")).await;
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        assert_eq!(header(&headers, "content-type"), "image/png");
        assert_eq!(dims(&body), want, "{query}");
    }
    let (status, _, body) = get(&bob, &format!("/_matrix/client/v1/media/download/{pic}")).await;
    assert_eq!(status, 200);
    assert!(body == picture);

    // A picture Bob only ever sees as a thumbnail: B asks A for the thumbnail (A's federation
    // thumbnail endpoint), not for the whole picture.
    let thumb_only = upload(&alice, png(300, 300), "image/png", "t.png").await;
    let (status, _, body) =
        get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{thumb_only}?width=96&height=96&method=crop")).await;
    assert_eq!((status, dims(&body)), (200, (96, 96)));

    // Unknown remote media.
    let (status, _, body) = get(&bob, &format!("/_matrix/client/v1/media/download/{}/noSuchMedia", a.name())).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // With A gone, B still serves what it fetched.
    a.stop();
    let (status, _, body) = get(&bob, &format!("/_matrix/client/v1/media/download/{blob}")).await;
    assert_eq!(status, 200, "cached remote download");
    assert!(body == data);
    let (status, _, body) =
        get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{pic}?width=32&height=32&method=crop")).await;
    assert_eq!((status, dims(&body)), (200, (32, 32)), "cached remote thumbnail");
    let (status, _, body) =
        get(&bob, &format!("/_matrix/client/v1/media/thumbnail/{thumb_only}?width=96&height=96&method=crop")).await;
    assert_eq!((status, dims(&body)), (200, (96, 96)), "cached remote thumbnail");
    // Media never fetched cannot be had now, including the original of that thumbnail.
    let (status, _, _) = get(&bob, &format!("/_matrix/client/v1/media/download/{thumb_only}")).await;
    assert!(status == 502 || status == 404, "{status}: the original was fetched for a thumbnail");
    let (status, _, _) = get(&bob, &format!("/_matrix/client/v1/media/download/{}/neverSeen", a.name())).await;
    assert!(status == 502 || status == 404, "{status}");
}

#[tokio::test]
async fn federation_media_endpoints_are_signed_and_multipart() {
    let a = FedServer::start("127.0.41.11").await;
    let b = FedServer::start("127.0.41.12").await;
    let alice = a.register("alice").await;
    let data: Vec<u8> = (0..5000).map(|_| rand::random::<u8>()).collect();
    let mxc = upload(&alice, data.clone(), "text/plain", "notes.txt").await;
    let media_id = mxc.rsplit('/').next().expect("media id").to_owned();

    let https = {
        init_crypto();
        let pem = std::fs::read(ca().pem()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
            .build()
            .expect("client")
    };
    // B's key, read from its data directory, signs as B would.
    let text = std::fs::read_to_string(b.data_dir().join("signing.key")).expect("B's signing key");
    let parts: Vec<&str> = text.lines().next().expect("key line").split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD.decode(parts[2]).expect("base64");
    let b_key = Ed25519KeyPair::from_der(&der, parts[1].to_owned()).expect("key");
    let origin = ruma::ServerName::parse(b.name()).expect("name");
    let dest = ruma::ServerName::parse(a.name()).expect("name");
    let signed_get = |path: String, sign: bool| {
        let mut req = https.get(format!("https://{dest}{path}"));
        if sign {
            let r = http::Request::builder().method("GET").uri(&path).body(&[][..]).expect("req");
            let x = XMatrix::sign_http_request(&r, XMatrixSigningInput::new(origin.clone(), dest.clone(), &b_key))
                .expect("sign");
            req = req.header("authorization", http::HeaderValue::from(&x));
        }
        raw(req)
    };

    let path = format!("/_matrix/federation/v1/media/download/{media_id}");
    let (status, _, body) = signed_get(path.clone(), false).await;
    assert_eq!(status, 401, "unsigned: {}", String::from_utf8_lossy(&body));

    let (status, headers, body) = signed_get(path, true).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let content_type = header(&headers, "content-type");
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap_or_else(|| panic!("not multipart/mixed: {content_type}"));
    // Exactly two parts: `{}` as JSON, then the bytes with their headers.
    let mut expected = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: text/plain\r\n\
         Content-Disposition: inline; filename=\"notes.txt\"\r\n\r\n"
    )
    .into_bytes();
    expected.extend_from_slice(&data);
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(body == expected, "unexpected multipart body");

    // Thumbnails likewise; unknown media is 404.
    let pic = upload(&alice, png(200, 100), "image/png", "p.png").await;
    let pic_id = pic.rsplit('/').next().expect("id").to_owned();
    let (status, headers, _) =
        signed_get(format!("/_matrix/federation/v1/media/thumbnail/{pic_id}?width=32&height=32&method=crop"), true)
            .await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("multipart/mixed; boundary="));
    let (status, _, _) = signed_get("/_matrix/federation/v1/media/download/nothingHere".into(), true).await;
    assert_eq!(status, 404);
}
