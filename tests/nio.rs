//! A real Matrix client, matrix-nio, against Myelin: the scenarios live in
//! `tests/nio/scenarios.py`; each test here runs one and cross-checks its results over HTTP.

#[macro_use]
mod common;

use common::{Backend, TestServer, run_nio_script};
use serde_json::Value;

/// The step named `step` in a scenario's output.
fn step<'a>(out: &'a [Value], step: &str) -> &'a Value {
    out.iter().find(|v| v["step"] == step).unwrap_or_else(|| panic!("no step {step:?} in {out:?}"))
}

#[tokio::test]
async fn nio_register_login_whoami_logout() {
    let server = TestServer::start(Backend::Sqlite).await;
    let url = server.url();
    let (ok, out, stderr) = run_nio_script("scenarios.py", &[&url, "accounts"]).await;
    assert!(ok, "nio scenario failed:\n{stderr}\noutput: {out:?}\nserver log:\n{}", server.log());

    let register = step(&out, "register");
    let user_id = register["user_id"].as_str().unwrap();
    assert!(user_id.ends_with(&format!(":{}", server.server_name())), "{user_id}");
    let login = step(&out, "login");
    assert_eq!(login["user_id"], user_id);

    // What nio saw must be what the server stored: the login device (named by nio) remains,
    // the logged-out register device is gone.
    let token = login["access_token"].as_str().unwrap();
    let (status, devices) =
        common::send(server.request(reqwest::Method::GET, "/_matrix/client/v3/devices").bearer_auth(token)).await;
    assert_eq!(status, 200, "{devices}");
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["device_id"], login["device_id"]);
    assert_eq!(devices[0]["display_name"], "nio login");
}

#[tokio::test]
async fn nio_two_clients_share_one_room_order() {
    let server = TestServer::start(Backend::Sqlite).await;
    let url = server.url();
    let (ok, out, stderr) = run_nio_script("scenarios.py", &[&url, "rooms"]).await;
    assert!(ok, "nio scenario failed:\n{stderr}\noutput: {out:?}\nserver log:\n{}", server.log());
    let sent = step(&out, "sent")["event_ids"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 6);
    assert_eq!(step(&out, "history")["event_ids"].as_array().unwrap(), &sent);
}

#[tokio::test]
async fn nio_long_poll_sync_sees_other_clients_message() {
    let server = TestServer::start(Backend::Sqlite).await;
    let url = server.url();
    let (ok, out, stderr) = run_nio_script("scenarios.py", &[&url, "sync"]).await;
    assert!(ok, "nio scenario failed:\n{stderr}\noutput: {out:?}\nserver log:\n{}", server.log());
    let room = step(&out, "joined")["room_id"].as_str().unwrap().to_owned();
    let message = step(&out, "message");
    eprintln!("nio long-poll woke {} ms after the send", message["wake_ms"]);
    // What nio saw is what the server stored.
    let event_id = message["event_id"].as_str().unwrap();
    let token = message["access_token"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{room}/event/{event_id}");
    let (status, event) = common::send(server.request(reqwest::Method::GET, &path).bearer_auth(token)).await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["content"]["body"], "wake up, bob");
    assert_eq!(step(&out, "typing")["users"].as_array().unwrap().len(), 1);
    assert!(step(&out, "timeout")["waited_ms"].as_f64().unwrap() >= 1400.0);
}
