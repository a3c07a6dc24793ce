//! Push rules over real HTTP on both backends.

#[macro_use]
mod common;

use serde_json::json;

both_backends!(push_rules_crud_and_sync, |server| async move {
    let alice = server.register("alice").await;
    let (status, all) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, 200, "{all}");
    let overrides = all["global"]["override"].as_array().expect("override rules");
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"), "{all}");
    assert!(all["global"]["underride"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.message"));

    let base = "/_matrix/client/v3/pushrules/global/content/cats";
    let (status, body) = alice.put(base, &json!({ "pattern": "cat*", "actions": ["notify"] })).await;
    assert_eq!(status, 200, "{body}");
    let (status, rule) = alice.get(base).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["pattern"], "cat*");
    assert_eq!(rule["default"], false);
    assert_eq!(alice.put(&format!("{base}/enabled"), &json!({ "enabled": false })).await.0, 200);
    assert_eq!(alice.get(&format!("{base}/enabled")).await.1["enabled"], false);
    assert_eq!(alice.put(&format!("{base}/actions"), &json!({ "actions": [] })).await.0, 200);
    assert_eq!(alice.get(&format!("{base}/actions")).await.1["actions"], json!([]));
    // Server-default rules can be toggled but not removed; unknown rules are 404.
    let master = "/_matrix/client/v3/pushrules/global/override/.m.rule.master";
    assert_eq!(alice.put(&format!("{master}/enabled"), &json!({ "enabled": true })).await.0, 200);
    assert_eq!(alice.get(&format!("{master}/enabled")).await.1["enabled"], true);
    assert_ne!(alice.delete(master, &json!({})).await.0, 200);
    let (status, body) = alice.get("/_matrix/client/v3/pushrules/global/room/!nope:x").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    assert_eq!(
        alice
            .put("/_matrix/client/v3/pushrules/global/content/.bad", &json!({ "pattern": "x", "actions": [] }))
            .await
            .0,
        400
    );
    // The ruleset reaches clients through /sync account data.
    let (status, sync) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{sync}");
    let events = sync["account_data"]["events"].as_array().expect("account data");
    let rules = events.iter().find(|e| e["type"] == "m.push_rules").expect("m.push_rules in sync");
    assert!(rules["content"]["global"]["content"].as_array().unwrap().iter().any(|r| r["rule_id"] == "cats"));
    assert_eq!(alice.delete(base, &json!({})).await.0, 200);
    assert_eq!(alice.get(base).await.0, 404);
});
