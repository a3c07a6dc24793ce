//! Federation destinations through Synapse's admin API over real HTTP on both backends: the
//! retry state the sender records for a server that cannot be reached, the rooms shared with
//! it, and `reset_connection` ending the backoff at once.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Client, assert_error, enc, make_admin, ok, send, set_config};
use reqwest::Method;
use serde_json::{Value, json};

const D: &str = "/_synapse/admin/v1/federation/destinations";

/// Polls the destination until `done` holds for it.
async fn wait_for(admin: &Client, dest: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = admin.get(&format!("{D}/{}", enc(dest))).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both_backends!(
    destinations_show_the_senders_retry_state,
    with | c | {
        set_config(c, "federation.enabled", true);
        set_config(c, "federation.allow_private_addresses", true);
        // A first retry a minute away: only a reset makes the sender try again soon.
        set_config(c, "federation.retry_min_ms", 60_000);
        set_config(c, "federation.retry_max_ms", 600_000);
    },
    |server| async move {
        let admin = make_admin(&server).await;
        let alice = server.register("alice").await;
        assert_eq!(ok(&admin.get(D).await), &json!({ "destinations": [], "total": 0 }));
        // Nothing listens on this port: every attempt fails.
        let dest = format!("127.0.0.1:{}", common::free_port());
        let body = json!({ "messages": { format!("@bob:{dest}"): { "DEVICE": { "hello": "there" } } } });
        ok(&alice.put("/_matrix/client/v3/sendToDevice/m.test/t1", &body).await);

        let failing = wait_for(&admin, &dest, "a failed attempt", |d| d["failure_ts"].is_i64()).await;
        assert_eq!(failing["destination"], dest);
        assert_eq!(failing["retry_interval"], 60_000, "{failing}");
        let first_try = failing["retry_last_ts"].as_i64().unwrap();
        assert!(first_try > 0 && failing["failure_ts"] == first_try, "{failing}");
        assert_eq!(failing["last_successful_stream_ordering"], Value::Null);

        let list = ok(&admin.get(D).await).clone();
        assert_eq!((&list["total"], &list["destinations"][0]), (&json!(1), &failing), "{list}");
        assert_eq!(ok(&admin.get(&format!("{D}?destination=127.0.0")).await)["total"], 1);
        assert_eq!(ok(&admin.get(&format!("{D}?destination=nowhere")).await)["total"], 0);
        assert_error(&admin.get(&format!("{D}?order_by=nope")).await, 400, "M_INVALID_PARAM");
        let rooms = ok(&admin.get(&format!("{D}/{}/rooms", enc(&dest))).await).clone();
        assert_eq!(rooms, json!({ "rooms": [], "total": 0 }), "no room is shared with it");

        // The reset ends the minute-long wait: the sender tries again at once (and fails again,
        // which starts a new run of failures).
        let started = Instant::now();
        assert_eq!(ok(&admin.post(&format!("{D}/{}/reset_connection", enc(&dest)), &json!({})).await), &json!({}));
        let again = wait_for(&admin, &dest, "a new attempt after the reset", |d| {
            d["retry_last_ts"].as_i64().is_some_and(|t| t > first_try)
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(20), "{again}");
        assert_eq!(again["retry_interval"], 60_000, "the backoff starts over: {again}");
        assert!(again["failure_ts"].as_i64().unwrap() > first_try, "{again}");

        // Errors.
        let unknown = enc("unknown.example");
        assert_error(&admin.get(&format!("{D}/{unknown}")).await, 404, "M_NOT_FOUND");
        assert_error(&admin.get(&format!("{D}/{unknown}/rooms")).await, 404, "M_NOT_FOUND");
        assert_error(&admin.post(&format!("{D}/{unknown}/reset_connection"), &json!({})).await, 404, "M_NOT_FOUND");
        let own = enc(&server.server_name());
        assert_error(&admin.post(&format!("{D}/{own}/reset_connection"), &json!({})).await, 400, "M_INVALID_PARAM");
        for (method, path) in [
            (Method::GET, D.to_owned()),
            (Method::GET, format!("{D}/{}", enc(&dest))),
            (Method::GET, format!("{D}/{}/rooms", enc(&dest))),
            (Method::POST, format!("{D}/{}/reset_connection", enc(&dest))),
        ] {
            assert_error(&send(alice.request(method, &path)).await, 403, "M_FORBIDDEN");
        }
    }
);
