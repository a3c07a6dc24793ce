//! Media administration through Synapse's admin API over real HTTP on both backends: listing a
//! user's uploads, deleting (one item, by age and size), quarantine (one item, a room's, a
//! user's; quarantined media is served by neither the authenticated nor the legacy paths),
//! protection, the media of a room, per-user statistics, and purging the remote media cache.

#[macro_use]
mod common;

use std::io::Cursor;

use common::{Client, assert_error, enc, make_admin, ok, send};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "/_synapse/admin/v1";
const UPLOAD: &str = "/_matrix/media/v3/upload";

/// Uploads `bytes`; returns the media id.
async fn upload(client: &Client, bytes: Vec<u8>, content_type: &str, filename: &str) -> String {
    let path = format!("{UPLOAD}?filename={filename}");
    let (status, body) =
        send(client.request(Method::POST, &path).header("content-type", content_type).body(bytes)).await;
    assert_eq!(status, 200, "upload: {body}");
    body["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 99]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// What [`served`] gives for media that is served: the legacy unauthenticated paths are frozen
/// on Myelin (404 for all media, spec v1.11), so only the authenticated ones answer 200.
const SERVED: [u16; 4] = [200, 404, 200, 404];

/// The statuses of the four ways to fetch an item: authenticated and legacy download, then
/// authenticated and legacy thumbnail.
async fn served(client: &Client, server_name: &str, id: &str) -> [u16; 4] {
    let mut out = [0; 4];
    for (i, path) in [
        format!("/_matrix/client/v1/media/download/{server_name}/{id}"),
        format!("/_matrix/media/v3/download/{server_name}/{id}"),
        format!("/_matrix/client/v1/media/thumbnail/{server_name}/{id}?width=8&height=8"),
        format!("/_matrix/media/v3/thumbnail/{server_name}/{id}?width=8&height=8"),
    ]
    .iter()
    .enumerate()
    {
        out[i] = client.request(Method::GET, path).send().await.unwrap().status().as_u16();
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn files_in(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|f| f == "tmp") {
            continue;
        }
        if path.is_dir() {
            n += files_in(&path);
        } else {
            n += 1;
        }
    }
    n
}

both_backends!(media_admin_is_for_server_admins_only, |server| async move {
    let alice = server.register("alice").await;
    let id = upload(&alice, b"hello".to_vec(), "text/plain", "a.txt").await;
    let sn = server.server_name();
    let user = enc(&alice.user_id);
    let room = enc(&format!("!r:{sn}"));
    for (method, path) in [
        (Method::GET, format!("{A}/users/{user}/media")),
        (Method::DELETE, format!("{A}/users/{user}/media")),
        (Method::DELETE, format!("{A}/media/{sn}/{id}")),
        (Method::POST, format!("{A}/media/delete?before_ts={}", now_ms())),
        (Method::POST, format!("{A}/purge_media_cache?before_ts={}", now_ms())),
        (Method::POST, format!("{A}/media/quarantine/{sn}/{id}")),
        (Method::POST, format!("{A}/media/unquarantine/{sn}/{id}")),
        (Method::POST, format!("{A}/room/{room}/media/quarantine")),
        (Method::POST, format!("{A}/user/{user}/media/quarantine")),
        (Method::POST, format!("{A}/media/protect/{id}")),
        (Method::POST, format!("{A}/media/unprotect/{id}")),
        (Method::GET, format!("{A}/rooms/{room}/media")),
        (Method::GET, format!("{A}/statistics/users/media")),
    ] {
        let anonymous = send(server.request(method.clone(), &path)).await;
        assert_error(&anonymous, 401, "M_MISSING_TOKEN");
        assert_error(&send(alice.request(method.clone(), &path)).await, 403, "M_FORBIDDEN");
    }
    // Still there and served.
    assert_eq!(served(&alice, &sn, &id).await[0], 200);
});

both_backends!(user_media_list_statistics_and_deletion, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let sn = server.server_name();
    let small = upload(&alice, b"tiny".to_vec(), "text/plain", "small.txt").await;
    let big = upload(&alice, vec![7u8; 5000], "application/octet-stream", "big.bin").await;
    let image = upload(&alice, png(40, 30), "image/png", "pic.png").await;
    let bobs = upload(&bob, vec![1u8; 100], "application/octet-stream", "bob.bin").await;
    let user = enc(&alice.user_id);

    let list = ok(&admin.get(&format!("{A}/users/{user}/media")).await).clone();
    assert_eq!(list["total"], 3, "{list}");
    let first = &list["media"][0];
    assert_eq!(first["media_id"], small, "oldest first: {list}");
    assert_eq!(
        (&first["media_type"], &first["media_length"], &first["upload_name"]),
        (&json!("text/plain"), &json!(4), &json!("small.txt"))
    );
    assert!(first["created_ts"].as_i64().unwrap() > 0 && first["last_access_ts"].is_i64(), "{first}");
    assert_eq!((&first["quarantined_by"], &first["safe_from_quarantine"]), (&Value::Null, &json!(false)));
    let by_size = ok(&admin.get(&format!("{A}/users/{user}/media?order_by=media_length&dir=b&limit=2")).await).clone();
    let ids: Vec<&str> = by_size["media"].as_array().unwrap().iter().map(|m| m["media_id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], big, "{by_size}");
    assert_eq!((ids.len(), &by_size["next_token"], &by_size["total"]), (2, &json!(2), &json!(3)));
    assert_error(&admin.get(&format!("{A}/users/{user}/media?order_by=nope")).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.get(&format!("{A}/users/{}/media", enc(&server.user_id("ghost")))).await, 404, "M_NOT_FOUND");

    let stats = ok(&admin.get(&format!("{A}/statistics/users/media?order_by=media_length&dir=b")).await).clone();
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["users"][0]["user_id"], alice.user_id);
    assert_eq!(stats["users"][0]["media_count"], 3);
    let alice_bytes: i64 = list["media"].as_array().unwrap().iter().map(|m| m["media_length"].as_i64().unwrap()).sum();
    assert!(alice_bytes > 5004, "{list}");
    assert_eq!(stats["users"][0]["media_length"], alice_bytes, "{stats}");
    assert_eq!((&stats["users"][1]["user_id"], &stats["users"][1]["media_count"]), (&json!(bob.user_id), &json!(1)));
    let found = ok(&admin.get(&format!("{A}/statistics/users/media?search_term=BOB")).await).clone();
    assert_eq!(found["total"], 1, "{found}");
    let none = ok(&admin.get(&format!("{A}/statistics/users/media?until_ts=1")).await).clone();
    assert_eq!(none["total"], 0, "{none}");

    // One item: gone from the list, not served, its file removed.
    let media_dir = server.dir().join("data").join("media");
    let files = files_in(&media_dir);
    let deleted = ok(&admin.delete(&format!("{A}/media/{sn}/{big}"), &json!({})).await).clone();
    assert_eq!(deleted, json!({ "deleted_media": [big], "total": 1 }));
    assert_eq!(served(&alice, &sn, &big).await[0], 404);
    assert_eq!(files_in(&media_dir), files - 1);
    assert_error(&admin.delete(&format!("{A}/media/{sn}/{big}"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(
        &admin.delete(&format!("{A}/media/elsewhere.example/{big}"), &json!({})).await,
        400,
        "M_INVALID_PARAM",
    );

    // By age and size: the protected item, the avatar and the small one stay.
    ok(&admin.post(&format!("{A}/media/protect/{bobs}"), &json!({})).await);
    let avatar = upload(&alice, png(8, 8), "image/png", "me.png").await;
    ok(&alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&alice.user_id)),
            &json!({ "avatar_url": format!("mxc://{sn}/{avatar}") }),
        )
        .await);
    let cutoff = now_ms() + 1000;
    let old = ok(&admin.post(&format!("{A}/media/delete?before_ts={cutoff}&size_gt=10"), &json!({})).await).clone();
    assert_eq!(
        old,
        json!({ "deleted_media": [image], "total": 1 }),
        "size_gt keeps {small}, protection {bobs}, the avatar {avatar}"
    );
    assert_eq!(served(&alice, &sn, &small).await[0], 200);
    assert_eq!(served(&alice, &sn, &avatar).await[0], 200);
    let with_profiles =
        admin.post(&format!("{A}/media/delete?before_ts={cutoff}&keep_profiles=false"), &json!({})).await;
    let mut gone: Vec<String> = ok(&with_profiles)["deleted_media"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    gone.sort();
    let mut expected = vec![small.clone(), avatar.clone()];
    expected.sort();
    assert_eq!(gone, expected);
    assert_eq!(served(&bob, &sn, &bobs).await[0], 200, "protected media stays");
    // Also under the older path with the server name.
    let legacy = admin.post(&format!("{A}/media/{sn}/delete?before_ts={cutoff}"), &json!({})).await;
    assert_eq!(ok(&legacy)["total"], 0);
    assert_error(&admin.post(&format!("{A}/media/delete"), &json!({})).await, 400, "M_MISSING_PARAM");
    assert_error(&admin.post(&format!("{A}/media/delete?before_ts=1000"), &json!({})).await, 400, "M_INVALID_PARAM");
    assert_error(
        &admin.post(&format!("{A}/media/delete?before_ts={cutoff}&size_gt=-1"), &json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    // No remote media cached here: nothing to purge.
    assert_eq!(
        ok(&admin.post(&format!("{A}/purge_media_cache?before_ts={cutoff}"), &json!({})).await),
        &json!({ "deleted": 0 })
    );
    assert_error(&admin.post(&format!("{A}/purge_media_cache"), &json!({})).await, 400, "M_MISSING_PARAM");

    // All of a user's uploads at once, protected ones included.
    let more = upload(&bob, b"more".to_vec(), "text/plain", "more.txt").await;
    let all = ok(&admin.delete(&format!("{A}/users/{}/media", enc(&bob.user_id)), &json!({})).await).clone();
    let mut gone: Vec<&str> = all["deleted_media"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    gone.sort();
    let mut expected = vec![bobs.as_str(), more.as_str()];
    expected.sort();
    assert_eq!((gone, &all["total"]), (expected, &json!(2)), "{all}");
    assert_eq!(served(&bob, &sn, &bobs).await[0], 404);
    assert_eq!(ok(&admin.get(&format!("{A}/users/{}/media", enc(&bob.user_id))).await)["total"], 0);
});

both_backends!(quarantined_media_is_not_served, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let sn = server.server_name();
    let one = upload(&alice, png(16, 16), "image/png", "one.png").await;
    assert_eq!(served(&bob, &sn, &one).await, SERVED);
    assert_eq!(ok(&admin.post(&format!("{A}/media/quarantine/{sn}/{one}"), &json!({})).await), &json!({}));
    assert_eq!(served(&bob, &sn, &one).await, [404, 404, 404, 404]);
    assert_eq!(served(&alice, &sn, &one).await, [404, 404, 404, 404], "not even for the uploader");
    let listed = ok(&admin.get(&format!("{A}/users/{}/media", enc(&alice.user_id))).await).clone();
    assert_eq!(listed["media"][0]["quarantined_by"], admin.user_id, "{listed}");
    ok(&admin.post(&format!("{A}/media/unquarantine/{sn}/{one}"), &json!({})).await);
    assert_eq!(served(&bob, &sn, &one).await, SERVED);

    // A user's uploads, except the protected ones.
    let two = upload(&alice, png(12, 12), "image/png", "two.png").await;
    let kept = upload(&alice, png(10, 10), "image/png", "kept.png").await;
    ok(&admin.post(&format!("{A}/media/protect/{kept}"), &json!({})).await);
    let n = ok(&admin.post(&format!("{A}/user/{}/media/quarantine", enc(&alice.user_id)), &json!({})).await).clone();
    assert_eq!(n, json!({ "num_quarantined": 2 }));
    assert_eq!(served(&bob, &sn, &one).await[0], 404);
    assert_eq!(served(&bob, &sn, &two).await[0], 404);
    assert_eq!(served(&bob, &sn, &kept).await[0], 200);
    assert_error(&admin.post(&format!("{A}/media/protect/unknown"), &json!({})).await, 404, "M_NOT_FOUND");

    // A room's media: what its events reference, local and remote.
    let room =
        ok(&alice.post("/_matrix/client/v3/createRoom", &json!({})).await)["room_id"].as_str().unwrap().to_owned();
    let three = upload(&alice, png(14, 14), "image/png", "three.png").await;
    let remote = "mxc://elsewhere.example/abcdef";
    for (i, content) in [
        json!({ "msgtype": "m.image", "body": "three.png", "url": format!("mxc://{sn}/{three}"), "info": { "thumbnail_url": format!("mxc://{sn}/{kept}") } }),
        json!({ "msgtype": "m.file", "body": "x", "url": remote }),
        json!({ "msgtype": "m.text", "body": "not media: mxc://nothing/here" }),
    ]
    .iter()
    .enumerate()
    {
        ok(&alice.put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m{i}", enc(&room)), content).await);
    }
    let media = ok(&admin.get(&format!("{A}/rooms/{}/media", enc(&room))).await).clone();
    let mut local = vec![format!("mxc://{sn}/{three}"), format!("mxc://{sn}/{kept}")];
    local.sort();
    assert_eq!(media, json!({ "local": local, "remote": [remote] }));
    let n = ok(&admin.post(&format!("{A}/room/{}/media/quarantine", enc(&room)), &json!({})).await).clone();
    assert_eq!(n, json!({ "num_quarantined": 2 }), "three and the remote item; kept is protected");
    assert_eq!(served(&bob, &sn, &three).await, [404, 404, 404, 404]);
    assert_eq!(served(&bob, &sn, &kept).await[0], 200);
    assert_error(&admin.get(&format!("{A}/rooms/{}/media", enc(&format!("!nope:{sn}")))).await, 404, "M_NOT_FOUND");
});
