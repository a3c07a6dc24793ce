//! Which endpoints of the spec Myelin serves: every endpoint in `tests/spec/endpoints.tsv` (the
//! spec's OpenAPI data) is called on a running server, as a logged-in user, with placeholder
//! path parameters. An endpoint that is served answers anything but the router's 404/405
//! `M_UNRECOGNIZED` (a 404 `M_NOT_FOUND` for a made-up room is still an answer). The endpoints
//! that are not served must be exactly those listed, with the reason, in
//! `docs/spec-coverage.md`, so that the document cannot go stale in either direction.

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

fn endpoints() -> Vec<(String, String, String, bool)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spec/endpoints.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].trim().to_owned(), f.get(4) == Some(&"deprecated"))
        })
        .collect()
}

/// The `METHOD /path` lines of the table in `docs/spec-coverage.md`.
fn documented_unserved() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/spec-coverage.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|e| e.contains(" /"))
        .map(str::to_owned)
        .collect()
}

fn fill(path: &str, server: &str, user: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let value = match &rest[start + 1..end] {
            "userId" => user.to_owned(),
            "roomId" | "roomIdOrAlias" => format!("!nowhere:{server}"),
            "roomAlias" => format!("#nowhere:{server}"),
            "eventId" => "$nothing".to_owned(),
            "serverName" => server.to_owned(),
            "eventType" | "type" => "m.room.message".to_owned(),
            "kind" => "global".to_owned(),
            "receiptType" => "m.read".to_owned(),
            "relType" => "m.annotation".to_owned(),
            "version" => "1".to_owned(),
            "queryType" => "profile".to_owned(),
            "stateKey" => String::new(),
            _ => "x".to_owned(),
        };
        out.push_str(&value.replace('#', "%23").replace('$', "%24"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

both_backends!(
    unserved_endpoints_are_the_documented_ones,
    with | c | set_config(c, "federation.enabled", true),
    |server| async move {
        let alice = server.register("alice").await;
        let mut unserved = BTreeSet::new();
        let mut counts = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for (api, method, path, deprecated) in endpoints() {
            let url = fill(&path, &server.server_name(), &alice.user_id);
            let method: reqwest::Method = method.parse().unwrap();
            let mut req =
                server.request(method.clone(), &url).header("Authorization", format!("Bearer {}", alice.access_token));
            if method == reqwest::Method::POST || method == reqwest::Method::PUT {
                // Not `{}`: some bodies need a `type` to be parsed at all.
                req = req.json(&json!({ "type": "org.example.probe" }));
            }
            let (status, body) = send(req).await;
            let served = !((status == 404 || status == 405) && body["errcode"] == "M_UNRECOGNIZED");
            if !deprecated {
                let entry = counts.entry(api.clone()).or_default();
                entry.1 += 1;
                entry.0 += usize::from(served);
            }
            if !served {
                unserved.insert(format!("{method} {path}"));
            }
        }
        for (api, (served, total)) in &counts {
            eprintln!("{api}: {served} of {total} non-deprecated endpoints answer");
        }
        let documented = documented_unserved();
        let undocumented: Vec<_> = unserved.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&unserved).collect();
        assert!(undocumented.is_empty(), "not served and not in docs/spec-coverage.md: {undocumented:#?}");
        assert!(stale.is_empty(), "served now, but docs/spec-coverage.md says they are not: {stale:#?}");
    }
);
