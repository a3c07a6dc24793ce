//! Operating a server over real HTTP on both backends: `/health`, delegation through
//! `/.well-known/matrix/*`, and the Synapse-compatible admin API (`/_synapse/admin/...`).

#[macro_use]
mod common;

use common::{Backend, PASSWORD, TestServer, assert_error, create_room, enc, make_admin, ok, send, set_config};
use reqwest::Method;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Health

both_backends!(health_answers_ok_while_the_database_answers, |server| async move {
    let res = server.request(Method::GET, "/health").send().await.expect("GET /health");
    assert_eq!(res.status().as_u16(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    assert_eq!(res.text().await.unwrap(), "OK");
});

/// Turns connections to the server's PostgreSQL database on or off and ends the open ones.
async fn pg_connections(server: &TestServer, allow: bool) {
    use sqlx::Connection;
    let url = server.config()["database"]["url"].as_str().unwrap().to_owned();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let mut conn = sqlx::PgConnection::connect(&common::pg_admin_url()).await.expect("admin connection");
    let sql = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("ALTER DATABASE");
    if !allow {
        let sql = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("terminating connections");
    }
    let _ = conn.close().await;
}

#[tokio::test]
async fn health_is_503_while_the_database_is_down() {
    let server = TestServer::start(Backend::Postgres).await;
    assert_eq!(server.get("/health").await, (200, json!("OK")));
    pg_connections(&server, false).await;
    let started = std::time::Instant::now();
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    pg_connections(&server, true).await;
    // The pool connects again: healthy without a restart.
    let mut healthy = false;
    for _ in 0..50 {
        if server.get("/health").await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the server did not become healthy again");
}

// ---------------------------------------------------------------------------------------------
// Delegation and discovery

both_backends!(
    well_known_follows_public_baseurl_and_well_known_server,
    with | c | {
        set_config(c, "public_baseurl", "https://matrix.example.org/");
        set_config(c, "well_known.server", "matrix.example.org:443");
    },
    |server| async move {
        let (status, body) = server.get("/.well-known/matrix/client").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.org", "{body}");
        let (status, body) = server.get("/.well-known/matrix/server").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ "m.server": "matrix.example.org:443" }));
        // Nothing configured for support: 404.
        assert_error(&server.get("/.well-known/matrix/support").await, 404, "M_NOT_FOUND");
    }
);

both_backends!(
    well_known_support_lists_the_configured_contacts,
    with | c | {
        let contacts: toml::Value = toml::from_str::<toml::Table>(
            r#"c = [
            { role = "m.role.admin", matrix_id = "@admin:example.org", email_address = "admin@example.org" },
            { role = "m.role.security", email_address = "security@example.org" },
        ]"#,
        )
        .unwrap()["c"]
            .clone();
        set_config(c, "well_known.support_contacts", contacts);
        set_config(c, "well_known.support_page", "https://example.org/support");
    },
    |server| async move {
        let (status, body) = server.get("/.well-known/matrix/support").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({
                "contacts": [
                    { "role": "m.role.admin", "matrix_id": "@admin:example.org", "email_address": "admin@example.org" },
                    { "role": "m.role.security", "email_address": "security@example.org" },
                ],
                "support_page": "https://example.org/support",
            })
        );
    }
);

/// With the server name's port being the HTTPS federation listener, clients are sent to the
/// client listener, not to the federation port (which speaks TLS and may not serve them).
#[tokio::test]
async fn well_known_client_never_points_at_the_federation_port() {
    let fed_port = common::free_port();
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        set_config(c, "server_name", format!("localhost:{fed_port}"));
        set_config(c, "listen.federation", format!("127.0.0.1:{fed_port}"));
        set_config(c, "tls.cert", cert_path.display().to_string());
        set_config(c, "tls.key", key_path.display().to_string());
    })
    .await;
    let (status, body) = server.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200, "{body}");
    let client_port = server.url().rsplit(':').next().unwrap().to_owned();
    assert_eq!(body["m.homeserver"]["base_url"], format!("http://localhost:{client_port}"), "{body}");
    // The federation delegation still names the federation port.
    assert_eq!(server.get("/.well-known/matrix/server").await.1["m.server"], format!("localhost:{fed_port}"));
}

#[test]
fn bad_delegation_settings_stop_start_up_naming_the_key() {
    for (key, value) in [
        ("MYELIN_PUBLIC_BASEURL", "matrix.example.org"),
        ("MYELIN_WELL_KNOWN__SERVER", "https://matrix.example.org"),
        ("MYELIN_WELL_KNOWN__SUPPORT_PAGE", "ftp://example.org"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::myelin_command()
            .args(["generate-config"])
            .current_dir(dir.path())
            .output()
            .expect("running myelin");
        assert!(out.status.success());
        let config = dir.path().join("myelin.toml");
        std::fs::write(&config, &out.stdout).unwrap();
        let out = common::myelin_command()
            .args(["register-user", "--config", config.to_str().unwrap(), "someone", "--password", "pw"])
            .env(key, value)
            .current_dir(dir.path())
            .output()
            .expect("running myelin");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value} was accepted");
        let name = key.trim_start_matches("MYELIN_").replace("__", ".").to_lowercase();
        assert!(stderr.contains(&format!("`{name}`")), "{key}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API

const A: &str = "/_synapse/admin";

/// Whether `token` is accepted by the client API.
async fn token_works(server: &TestServer, token: &str) -> bool {
    let resp = send(server.request(Method::GET, "/_matrix/client/v3/account/whoami").bearer_auth(token)).await;
    resp.0 == 200
}

/// The status and errcode of a login with a password.
async fn login_status(server: &TestServer, localpart: &str, password: &str) -> (u16, Value) {
    let (status, body) = server
        .post(
            "/_matrix/client/v3/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": password,
            }),
        )
        .await;
    (status, body["errcode"].clone())
}

both_backends!(admin_api_is_for_server_admins_only, |server| async move {
    let alice = server.register("alice").await;
    let admin = make_admin(&server).await;
    let user = enc(&alice.user_id);
    let room = enc(&create_room(&alice, json!({})).await);
    let endpoints: Vec<(Method, String)> = vec![
        (Method::GET, format!("{A}/v1/server_version")),
        (Method::GET, format!("{A}/v2/users")),
        (Method::GET, format!("{A}/v3/users")),
        (Method::GET, format!("{A}/v2/users/{user}")),
        (Method::PUT, format!("{A}/v2/users/{user}")),
        (Method::POST, format!("{A}/v1/deactivate/{user}")),
        (Method::POST, format!("{A}/v1/reset_password/{user}")),
        (Method::GET, format!("{A}/v1/whois/{user}")),
        (Method::GET, format!("{A}/v1/users/{user}/admin")),
        (Method::PUT, format!("{A}/v1/users/{user}/admin")),
        (Method::GET, format!("{A}/v1/users/{user}/joined_rooms")),
        (Method::GET, format!("{A}/v1/users/{user}/pushers")),
        (Method::GET, format!("{A}/v1/users/{user}/memberships")),
        (Method::GET, format!("{A}/v2/users/{user}/devices")),
        (Method::GET, format!("{A}/v2/users/{user}/devices/{}", alice.device_id)),
        (Method::PUT, format!("{A}/v2/users/{user}/devices/{}", alice.device_id)),
        (Method::DELETE, format!("{A}/v2/users/{user}/devices/{}", alice.device_id)),
        (Method::POST, format!("{A}/v2/users/{user}/delete_devices")),
        (Method::GET, format!("{A}/v1/rooms")),
        (Method::GET, format!("{A}/v1/rooms/{room}")),
        (Method::GET, format!("{A}/v1/rooms/{room}/members")),
        (Method::GET, format!("{A}/v1/rooms/{room}/state")),
        (Method::GET, format!("{A}/v1/event_reports")),
        (Method::GET, format!("{A}/v1/event_reports/abc")),
        (Method::DELETE, format!("{A}/v1/event_reports/abc")),
    ];
    for (method, path) in &endpoints {
        let anonymous = send(server.request(method.clone(), path).json(&json!({}))).await;
        assert_error(&anonymous, 401, "M_MISSING_TOKEN");
        let bad = send(server.request(method.clone(), path).bearer_auth("nope").json(&json!({}))).await;
        assert_error(&bad, 401, "M_UNKNOWN_TOKEN");
        let user = send(alice.request(method.clone(), path).json(&json!({ "admin": true }))).await;
        assert_error(&user, 403, "M_FORBIDDEN");
    }
    // Nothing changed for the non-admin's attempts: still no admin, still logged in.
    assert!(token_works(&server, &alice.access_token).await);
    assert_eq!(ok(&admin.get(&format!("{A}/v1/users/{user}/admin")).await)["admin"], false);
    let version = ok(&admin.get(&format!("{A}/v1/server_version")).await).clone();
    assert!(version["server_version"].is_string(), "{version}");
    // Browser-based tools (synapse-admin, Ketesa) get their CORS preflight and headers.
    let preflight = server
        .request(Method::OPTIONS, &format!("{A}/v2/users"))
        .header("origin", "https://admin.example.org")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    let res = admin.request(Method::GET, &format!("{A}/v2/users")).send().await.unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    // Endpoints not served answer M_UNRECOGNIZED.
    assert_error(&admin.get(&format!("{A}/v1/room_reports")).await, 404, "M_UNRECOGNIZED");
});

both_backends!(users_list_filters_sorts_and_pages, |server| async move {
    let admin = make_admin(&server).await;
    let _alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let name = "/_matrix/client/v3/profile";
    ok(&carol
        .put(&format!("{name}/{}/displayname", enc(&carol.user_id)), &json!({ "displayname": "Zed Person" }))
        .await);

    let page = ok(&admin.get(&format!("{A}/v2/users?limit=2")).await).clone();
    assert_eq!(page["total"], 4, "{page}");
    let names: Vec<&str> = page["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, [server.user_id("alice"), server.user_id("bob")]);
    assert_eq!(page["next_token"], "2", "{page}");
    let u = &page["users"][0];
    for (field, kind) in [
        ("is_guest", "bool"),
        ("admin", "bool"),
        ("deactivated", "bool"),
        ("erased", "bool"),
        ("shadow_banned", "bool"),
        ("locked", "bool"),
        ("creation_ts", "number"),
        ("displayname", "string"),
    ] {
        let v = &u[field];
        let right = match kind {
            "bool" => v.is_boolean(),
            "number" => v.is_i64(),
            _ => v.is_string(),
        };
        assert!(right, "{field} should be a {kind}: {u}");
    }
    assert!(u.get("avatar_url").is_some() && u.get("user_type").is_some(), "{u}");
    // In seconds, as Synapse serves it (synapse-admin/Ketesa multiply it by 1000).
    let created = u["creation_ts"].as_i64().unwrap();
    assert!((1_600_000_000..10_000_000_000).contains(&created), "creation_ts is in seconds: {u}");
    let rest = ok(&admin.get(&format!("{A}/v2/users?limit=2&from=2")).await).clone();
    assert_eq!(rest["users"].as_array().unwrap().len(), 2, "{rest}");
    assert!(rest.get("next_token").is_none(), "{rest}");

    // Filters: name (localpart or display name, any case), user_id, admins.
    let found = ok(&admin.get(&format!("{A}/v2/users?name=zed")).await).clone();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["users"][0]["name"], carol.user_id);
    assert_eq!(found["users"][0]["displayname"], "Zed Person");
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users?name=BO")).await)["users"][0]["name"], bob.user_id);
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users?user_id=%25")).await)["total"], 0);
    let admins = ok(&admin.get(&format!("{A}/v2/users?admins=true")).await).clone();
    assert_eq!(admins["total"], 1, "{admins}");
    assert_eq!(admins["users"][0]["name"], admin.user_id);
    assert_eq!(admins["users"][0]["admin"], true);
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users?admins=false")).await)["total"], 3);

    // Order: newest first; by display name backwards.
    let newest = ok(&admin.get(&format!("{A}/v2/users?order_by=creation_ts&dir=b")).await).clone();
    assert_eq!(newest["users"][0]["name"], carol.user_id, "{newest}");
    let by_name = ok(&admin.get(&format!("{A}/v2/users?order_by=displayname&dir=b")).await).clone();
    assert_eq!(by_name["users"][0]["name"], carol.user_id, "{by_name}");

    // Deactivated accounts: v2 shows them only when asked, v3 filters both ways.
    ok(&admin.post(&format!("{A}/v1/deactivate/{}", enc(&bob.user_id)), &json!({})).await);
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users")).await)["total"], 3);
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users?deactivated=true")).await)["total"], 4);
    assert_eq!(ok(&admin.get(&format!("{A}/v3/users")).await)["total"], 4);
    let only = ok(&admin.get(&format!("{A}/v3/users?deactivated=true")).await).clone();
    assert_eq!(only["total"], 1, "{only}");
    assert_eq!(only["users"][0]["name"], bob.user_id);
    assert_eq!(only["users"][0]["deactivated"], true);
    assert_eq!(ok(&admin.get(&format!("{A}/v3/users?deactivated=false")).await)["total"], 3);

    // Bad parameters are Matrix errors.
    assert_error(&admin.get(&format!("{A}/v2/users?order_by=nonsense")).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.get(&format!("{A}/v2/users?limit=-1")).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.get(&format!("{A}/v2/users?limit=lots")).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.get(&format!("{A}/v2/users?dir=x")).await, 400, "M_INVALID_PARAM");
    let far = ok(&admin.get(&format!("{A}/v2/users?from={}&limit={}", i64::MAX, i64::MAX)).await).clone();
    assert_eq!((&far["users"], &far["total"]), (&json!([]), &json!(3)), "{far}");
});

both_backends!(put_user_creates_and_changes_accounts, |server| async move {
    let admin = make_admin(&server).await;
    let dave = server.user_id("dave");
    let path = format!("{A}/v2/users/{}", enc(&dave));
    assert_error(&admin.get(&path).await, 404, "M_NOT_FOUND");

    // Created: 201 with the account; the password works; threepids are accepted and ignored.
    let (status, body) = admin
        .put(&path, &json!({ "password": "pw-one", "displayname": "Dave", "admin": false, "threepids": [] }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], dave);
    assert_eq!(body["displayname"], "Dave");
    assert_eq!(body["admin"], false);
    assert_eq!(body["deactivated"], false);
    assert_eq!(body["threepids"], json!([]));
    let first = server.login("dave", "pw-one").await;
    let got = ok(&admin.get(&path).await).clone();
    assert_eq!(got["displayname"], "Dave");
    for field in ["is_guest", "erased", "shadow_banned", "locked", "suspended", "creation_ts", "external_ids"] {
        assert!(got.get(field).is_some(), "{field} missing: {got}");
    }

    // Changed: 200; the admin flag takes effect for the user's existing token at once.
    assert_error(&first.get(&format!("{A}/v2/users")).await, 403, "M_FORBIDDEN");
    let (status, body) = admin.put(&path, &json!({ "displayname": "David", "admin": true })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["admin"], true);
    assert_eq!(body["displayname"], "David");
    ok(&first.get(&format!("{A}/v2/users")).await);
    let profile = ok(&server.get(&format!("/_matrix/client/v3/profile/{}", enc(&dave))).await).clone();
    assert_eq!(profile["displayname"], "David");

    // A new password logs the user out unless `logout_devices` is false.
    ok(&admin.put(&path, &json!({ "password": "pw-two", "logout_devices": false })).await);
    assert!(token_works(&server, &first.access_token).await);
    ok(&admin.put(&path, &json!({ "password": "pw-three" })).await);
    assert!(!token_works(&server, &first.access_token).await);
    assert_eq!(login_status(&server, "dave", "pw-two").await, (403, json!("M_FORBIDDEN")));
    let second = server.login("dave", "pw-three").await;

    // Deactivated: no login, no token. Reactivation needs a password.
    let (status, body) = admin.put(&path, &json!({ "deactivated": true })).await;
    assert_eq!((status, &body["deactivated"]), (200, &json!(true)), "{body}");
    assert!(!token_works(&server, &second.access_token).await);
    assert_eq!(login_status(&server, "dave", "pw-three").await, (403, json!("M_USER_DEACTIVATED")));
    assert_error(&admin.put(&path, &json!({ "deactivated": false })).await, 400, "M_INVALID_PARAM");
    let body = ok(&admin.put(&path, &json!({ "deactivated": false, "password": "pw-four" })).await).clone();
    assert_eq!(body["deactivated"], false);
    server.login("dave", "pw-four").await;

    // An admin cannot demote themselves; remote users and bad input are refused.
    let me = format!("{A}/v2/users/{}", enc(&admin.user_id));
    assert_error(&admin.put(&me, &json!({ "admin": false })).await, 400, "M_INVALID_PARAM");
    let remote = format!("{A}/v2/users/{}", enc("@eve:elsewhere.example"));
    assert_error(&admin.put(&remote, &json!({ "password": "x" })).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.get(&format!("{A}/v2/users/not-a-user-id")).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.put(&path, &json!({ "admin": "yes" })).await, 400, "M_BAD_JSON");
    let not_json = send(admin.request(Method::PUT, &path).body("{not json")).await;
    assert_error(&not_json, 400, "M_NOT_JSON");
    assert_error(&admin.put(&path, &json!({ "avatar_url": "https://x" })).await, 400, "M_INVALID_PARAM");

    // Created deactivated, with an admin flag, through the dedicated endpoints too.
    let frank = format!("{A}/v2/users/{}", enc(&server.user_id("frank")));
    let (status, body) = admin.put(&frank, &json!({ "password": "pw", "deactivated": true })).await;
    assert_eq!((status, &body["deactivated"]), (201, &json!(true)), "{body}");
    assert_eq!(login_status(&server, "frank", "pw").await.0, 403);
    let flag = format!("{A}/v1/users/{}/admin", enc(&dave));
    assert_eq!(ok(&admin.get(&flag).await)["admin"], true);
    ok(&admin.put(&flag, &json!({ "admin": false })).await);
    assert_eq!(ok(&admin.get(&flag).await)["admin"], false);
});

both_backends!(deactivate_with_erase_logs_out_leaves_rooms_and_removes_the_profile, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&bob, json!({ "preset": "public_chat" })).await;
    ok(&alice.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
    let joined = format!("{A}/v1/users/{}/joined_rooms", enc(&alice.user_id));
    assert_eq!(ok(&admin.get(&joined).await).clone(), json!({ "joined_rooms": [room], "total": 1 }));
    let memberships = format!("{A}/v1/users/{}/memberships", enc(&alice.user_id));
    assert_eq!(ok(&admin.get(&memberships).await).clone(), json!({ "memberships": { room.clone(): "join" } }));
    let pusher = json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": "key-1", "app_display_name": "Example",
        "device_display_name": "Phone", "lang": "en", "data": { "url": "https://push.example.org/_matrix/push/v1/notify" },
    });
    ok(&alice.post("/_matrix/client/v3/pushers/set", &pusher).await);
    let pushers = format!("{A}/v1/users/{}/pushers", enc(&alice.user_id));
    let listed = ok(&admin.get(&pushers).await).clone();
    assert_eq!((&listed["total"], &listed["pushers"][0]["pushkey"]), (&json!(1), &json!("key-1")), "{listed}");
    assert_eq!(listed["pushers"][0]["data"]["url"], "https://push.example.org/_matrix/push/v1/notify");

    let path = format!("{A}/v1/deactivate/{}", enc(&alice.user_id));
    let body = ok(&admin.post(&path, &json!({ "erase": true })).await).clone();
    assert!(body["id_server_unbind_result"].is_string(), "{body}");
    assert!(!token_works(&server, &alice.access_token).await);
    assert_eq!(login_status(&server, "alice", PASSWORD).await, (403, json!("M_USER_DEACTIVATED")));
    let user = ok(&admin.get(&format!("{A}/v2/users/{}", enc(&alice.user_id))).await).clone();
    assert_eq!(
        (&user["deactivated"], &user["erased"], &user["displayname"]),
        (&json!(true), &json!(true), &Value::Null)
    );
    assert_eq!(ok(&admin.get(&joined).await).clone(), json!({ "joined_rooms": [], "total": 0 }));
    assert_eq!(ok(&admin.get(&memberships).await).clone(), json!({ "memberships": { room.clone(): "leave" } }));
    let members = ok(&admin.get(&format!("{A}/v1/rooms/{}/members", enc(&room))).await).clone();
    assert_eq!(members, json!({ "members": [bob.user_id], "total": 1 }));
    // No more notifications for a deactivated account.
    assert_eq!(ok(&admin.get(&pushers).await).clone(), json!({ "pushers": [], "total": 0 }));

    // Without erase the profile stays; an empty body is accepted; unknown users are 404.
    let carol = server.register("carol").await;
    ok(&send(admin.request(Method::POST, &format!("{A}/v1/deactivate/{}", enc(&carol.user_id)))).await);
    let user = ok(&admin.get(&format!("{A}/v2/users/{}", enc(&carol.user_id))).await).clone();
    assert_eq!(
        (&user["deactivated"], &user["erased"], &user["displayname"]),
        (&json!(true), &json!(false), &json!("carol"))
    );
    let nobody = format!("{A}/v1/deactivate/{}", enc(&server.user_id("nobody")));
    assert_error(&admin.post(&nobody, &json!({})).await, 404, "M_NOT_FOUND");
});

both_backends!(reset_password_sets_the_password_and_logs_out, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let other = server.login("alice", PASSWORD).await;
    let path = format!("{A}/v1/reset_password/{}", enc(&alice.user_id));

    ok(&admin.post(&path, &json!({ "new_password": "kept-devices", "logout_devices": false })).await);
    assert!(token_works(&server, &alice.access_token).await);
    assert_eq!(login_status(&server, "alice", PASSWORD).await, (403, json!("M_FORBIDDEN")));
    server.login("alice", "kept-devices").await;

    ok(&admin.post(&path, &json!({ "new_password": "fresh" })).await);
    assert!(!token_works(&server, &alice.access_token).await);
    assert!(!token_works(&server, &other.access_token).await);
    assert_eq!(login_status(&server, "alice", "kept-devices").await, (403, json!("M_FORBIDDEN")));
    server.login("alice", "fresh").await;

    assert_error(&admin.post(&path, &json!({})).await, 400, "M_MISSING_PARAM");
    let nobody = format!("{A}/v1/reset_password/{}", enc(&server.user_id("nobody")));
    assert_error(&admin.post(&nobody, &json!({ "new_password": "x" })).await, 404, "M_NOT_FOUND");
});

both_backends!(whois_and_devices, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let phone = server.login("alice", PASSWORD).await;
    let user = enc(&alice.user_id);

    let whois = ok(&admin.get(&format!("{A}/v1/whois/{user}")).await).clone();
    assert_eq!(whois["user_id"], alice.user_id);
    for device in [&alice.device_id, &phone.device_id] {
        let connections = &whois["devices"][device.as_str()]["sessions"][0]["connections"];
        assert_eq!(connections[0]["ip"], "127.0.0.1", "{whois}");
        assert!(connections[0]["last_seen"].is_i64(), "{whois}");
    }
    // The spec's endpoint: admins about anyone, users about themselves only.
    let client_whois = format!("/_matrix/client/v3/admin/whois/{user}");
    assert_eq!(ok(&alice.get(&client_whois).await)["user_id"], alice.user_id);
    assert_eq!(ok(&admin.get(&client_whois).await)["user_id"], alice.user_id);
    assert_error(&bob.get(&client_whois).await, 403, "M_FORBIDDEN");

    let devices = format!("{A}/v2/users/{user}/devices");
    let list = ok(&admin.get(&devices).await).clone();
    assert_eq!(list["total"], 2, "{list}");
    let d = &list["devices"][0];
    for field in ["device_id", "display_name", "last_seen_ip", "last_seen_ts", "user_id"] {
        assert!(d.get(field).is_some(), "{field} missing: {d}");
    }
    let one = format!("{devices}/{}", phone.device_id);
    assert_eq!(ok(&admin.get(&one).await)["device_id"], phone.device_id);
    ok(&admin.put(&one, &json!({ "display_name": "Phone" })).await);
    assert_eq!(ok(&admin.get(&one).await)["display_name"], "Phone");
    assert_error(&admin.get(&format!("{devices}/NOPE")).await, 404, "M_NOT_FOUND");

    // Deleting a device ends its token only.
    ok(&admin.delete(&one, &json!({})).await);
    assert!(!token_works(&server, &phone.access_token).await);
    assert!(token_works(&server, &alice.access_token).await);
    assert_error(&admin.get(&one).await, 404, "M_NOT_FOUND");
    ok(&admin.post(&format!("{A}/v2/users/{user}/delete_devices"), &json!({ "devices": [alice.device_id] })).await);
    assert!(!token_works(&server, &alice.access_token).await);
    assert_eq!(ok(&admin.get(&devices).await).clone(), json!({ "devices": [], "total": 0 }));
    let nobody = format!("{A}/v2/users/{}/devices", enc(&server.user_id("nobody")));
    assert_error(&admin.get(&nobody).await, 404, "M_NOT_FOUND");
});

both_backends!(rooms_list_details_members_and_state, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alpha = create_room(
        &alice,
        json!({ "name": "Alpha", "preset": "public_chat", "visibility": "public", "room_alias_name": "alpha", "topic": "first" }),
    )
    .await;
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&alpha)), &json!({})).await);
    let beta = create_room(
        &alice,
        json!({
            "name": "Beta",
            "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
        }),
    )
    .await;

    let list = ok(&admin.get(&format!("{A}/v1/rooms")).await).clone();
    assert_eq!(list["total_rooms"], 2, "{list}");
    assert_eq!(list["offset"], 0, "{list}");
    assert!(list.get("next_batch").is_none(), "{list}");
    let first = &list["rooms"][0];
    assert_eq!(first["room_id"], alpha, "sorted by name: {list}");
    assert_eq!(first["name"], "Alpha");
    assert_eq!(first["canonical_alias"], format!("#alpha:{}", server.server_name()));
    assert_eq!(first["joined_members"], 2);
    assert_eq!(first["joined_local_members"], 2);
    assert_eq!(first["creator"], alice.user_id);
    assert_eq!(first["public"], true);
    assert_eq!(first["join_rules"], "public");
    assert_eq!(first["federatable"], true);
    assert_eq!(first["encryption"], Value::Null);
    assert!(first["version"].is_string() && first["state_events"].as_i64().unwrap() >= 5, "{first}");
    for field in ["guest_access", "history_visibility", "room_type"] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    let second = &list["rooms"][1];
    assert_eq!((&second["room_id"], &second["encryption"]), (&json!(beta), &json!("m.megolm.v1.aes-sha2")));
    assert_eq!(second["public"], false);
    assert_eq!(second["join_rules"], "invite");

    // Order, search, paging.
    let rooms_of = |body: &Value| -> Vec<String> {
        body["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
    };
    let by_size = ok(&admin.get(&format!("{A}/v1/rooms?order_by=joined_members&dir=f")).await).clone();
    assert_eq!(rooms_of(&by_size), [beta.clone(), alpha.clone()]);
    let by_size = ok(&admin.get(&format!("{A}/v1/rooms?order_by=joined_members&dir=b")).await).clone();
    assert_eq!(rooms_of(&by_size), [alpha.clone(), beta.clone()]);
    let found = ok(&admin.get(&format!("{A}/v1/rooms?search_term=BET")).await).clone();
    assert_eq!((rooms_of(&found), &found["total_rooms"]), (vec![beta.clone()], &json!(1)));
    let page = ok(&admin.get(&format!("{A}/v1/rooms?limit=1")).await).clone();
    assert_eq!((rooms_of(&page), &page["next_batch"]), (vec![alpha.clone()], &json!(1)));
    let page = ok(&admin.get(&format!("{A}/v1/rooms?limit=1&from=1")).await).clone();
    assert_eq!((rooms_of(&page), &page["prev_batch"]), (vec![beta.clone()], &json!(0)));
    assert!(page.get("next_batch").is_none(), "{page}");
    assert_error(&admin.get(&format!("{A}/v1/rooms?order_by=nonsense")).await, 400, "M_INVALID_PARAM");
    let far = ok(&admin.get(&format!("{A}/v1/rooms?from={}&limit=100", i64::MAX)).await).clone();
    assert_eq!((&far["rooms"], &far["total_rooms"]), (&json!([]), &json!(2)), "{far}");

    // One room, its members and its state.
    let room = ok(&admin.get(&format!("{A}/v1/rooms/{}", enc(&alpha))).await).clone();
    assert_eq!((&room["name"], &room["topic"], &room["forgotten"]), (&json!("Alpha"), &json!("first"), &json!(false)));
    assert_eq!(room["joined_local_devices"], 2, "{room}");
    assert!(room.get("avatar").is_some(), "{room}");
    let members = ok(&admin.get(&format!("{A}/v1/rooms/{}/members", enc(&alpha))).await).clone();
    assert_eq!(members["total"], 2, "{members}");
    let mut names: Vec<&str> = members["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, [alice.user_id.as_str(), bob.user_id.as_str()]);
    let state = ok(&admin.get(&format!("{A}/v1/rooms/{}/state", enc(&alpha))).await).clone();
    let events = state["state"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "m.room.create" && e["sender"] == alice.user_id), "{state}");
    assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Alpha"), "{state}");
    let unknown = enc(&format!("!unknown:{}", server.server_name()));
    assert_error(&admin.get(&format!("{A}/v1/rooms/{unknown}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin.get(&format!("{A}/v1/rooms/{unknown}/members")).await, 404, "M_NOT_FOUND");
    assert_error(&admin.get(&format!("{A}/v1/rooms/{unknown}/state")).await, 404, "M_NOT_FOUND");
});

both_backends!(event_reports_list_show_and_delete, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "name": "Reported", "preset": "public_chat" })).await;
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
    let sent = ok(&bob
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&room)),
            &json!({ "msgtype": "m.text", "body": "spam" }),
        )
        .await)
    .clone();
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let report = format!("/_matrix/client/v3/rooms/{}/report/{}", enc(&room), enc(&event_id));
    ok(&alice.post(&report, &json!({ "reason": "first" })).await);
    ok(&alice.post(&report, &json!({ "reason": "second" })).await);
    // Reports of rooms are not event reports.
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{}/report", enc(&room)), &json!({ "reason": "room" })).await);

    let list = ok(&admin.get(&format!("{A}/v1/event_reports")).await).clone();
    assert_eq!(list["total"], 2, "{list}");
    let newest = &list["event_reports"][0];
    assert_eq!(newest["reason"], "second", "newest first: {list}");
    assert_eq!(newest["event_id"], event_id);
    assert_eq!(newest["room_id"], room);
    assert_eq!(newest["user_id"], alice.user_id);
    assert_eq!(newest["sender"], bob.user_id);
    assert_eq!(newest["name"], "Reported");
    assert!(newest["received_ts"].is_i64() && newest.get("canonical_alias").is_some() && newest.get("score").is_some());
    assert!(list.get("next_token").is_none(), "{list}");
    let oldest = ok(&admin.get(&format!("{A}/v1/event_reports?dir=f&limit=1")).await).clone();
    assert_eq!((&oldest["event_reports"][0]["reason"], &oldest["next_token"]), (&json!("first"), &json!(1)));
    assert_eq!(ok(&admin.get(&format!("{A}/v1/event_reports?user_id=bob")).await)["total"], 0);
    let far = ok(&admin.get(&format!("{A}/v1/event_reports?from={}", i64::MAX)).await).clone();
    assert_eq!((&far["event_reports"], &far["total"]), (&json!([]), &json!(2)), "{far}");
    assert_eq!(ok(&admin.get(&format!("{A}/v1/event_reports?room_id={}", enc(&room))).await)["total"], 2);

    let id = newest["id"].as_str().unwrap().to_owned();
    let one = ok(&admin.get(&format!("{A}/v1/event_reports/{id}")).await).clone();
    assert_eq!(one["reason"], "second");
    assert_eq!(one["event_json"]["type"], "m.room.message", "{one}");
    assert_eq!(one["event_json"]["content"]["body"], "spam", "{one}");
    ok(&admin.delete(&format!("{A}/v1/event_reports/{id}"), &json!({})).await);
    assert_error(&admin.get(&format!("{A}/v1/event_reports/{id}")).await, 404, "M_NOT_FOUND");
    assert_error(&admin.delete(&format!("{A}/v1/event_reports/{id}"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_eq!(ok(&admin.get(&format!("{A}/v1/event_reports")).await)["total"], 1);
});

// A user who deactivates their own account is pushed nothing more: their pushers go with it.
both_backends!(self_deactivation_removes_pushers, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let pusher = json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": "key-1", "app_display_name": "Example",
        "device_display_name": "Phone", "lang": "en", "data": { "url": "https://push.example.org/_matrix/push/v1/notify" },
    });
    ok(&alice.post("/_matrix/client/v3/pushers/set", &pusher).await);
    let pushers = format!("{A}/v1/users/{}/pushers", enc(&alice.user_id));
    assert_eq!(ok(&admin.get(&pushers).await)["total"], 1);
    let auth = json!({ "auth": { "type": "m.login.password", "password": PASSWORD,
        "identifier": { "type": "m.id.user", "user": "alice" } } });
    ok(&alice.post("/_matrix/client/v3/account/deactivate", &auth).await);
    assert_eq!(ok(&admin.get(&pushers).await)["total"], 0);
});
