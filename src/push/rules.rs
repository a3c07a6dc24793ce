//! Push rule evaluation shared by the counts, `/notifications` and the push sender: the spec's
//! full list of default rules, and one evaluation of an event for many users (the event is
//! flattened once, each user's ruleset comes from a cache).
//!
//! This module depends only on storage and ruma, so that the room engine can evaluate rules in
//! the transaction of each event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::push::{
    Action, AnyPushRuleRef, ConditionalPushRule, FlattenedJson, HighlightTweakValue, PatternedPushRule, PushCondition,
    PushConditionRoomCtx, Ruleset, Tweak,
};
use ruma::serde::Raw;
use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::error::Result;
use crate::storage::Db;

/// The account data type holding push rules.
pub const PUSH_RULES: &str = "m.push_rules";

/// Rulesets remembered at most (the cache is emptied when it would grow past this).
const MAX_CACHED: usize = 100_000;
/// How long a cached ruleset is trusted: another process sharing the database may have changed
/// it (this process forgets a user's rules at once when it stores them).
const CACHE_TTL: Duration = Duration::from_secs(60);

/// Rule ids the spec deprecates in favour of `m.mentions`: they apply only to events without
/// an `m.mentions` property (spec, "Push rules: predefined rules").
const LEGACY_MENTION_RULES: [&str; 3] =
    [".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"];

/// The spec's predefined rules for `user`: ruma's server default plus the deprecated (but still
/// predefined) `.m.rule.contains_display_name`, `.m.rule.roomnotif` and
/// `.m.rule.contains_user_name`, in the spec's order.
pub fn server_default(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    let highlight_sound = json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }]);
    let display_name: ConditionalPushRule = serde_json::from_value(json!({
        "rule_id": ".m.rule.contains_display_name",
        "default": true,
        "enabled": true,
        "conditions": [{ "kind": "contains_display_name" }],
        "actions": highlight_sound,
    }))
    .expect("a valid rule");
    let roomnotif: ConditionalPushRule = serde_json::from_value(json!({
        "rule_id": ".m.rule.roomnotif",
        "default": true,
        "enabled": true,
        "conditions": [
            { "kind": "event_match", "key": "content.body", "pattern": "@room" },
            { "kind": "sender_notification_permission", "key": "room" },
        ],
        "actions": ["notify", { "set_tweak": "highlight" }],
    }))
    .expect("a valid rule");
    // Override order: ... is_user_mention, contains_display_name, is_room_mention, roomnotif, ...
    for (after, rule) in [(".m.rule.is_user_mention", display_name), (".m.rule.is_room_mention", roomnotif)] {
        let at = rules.override_.get_index_of(after).map_or(rules.override_.len(), |i| i + 1);
        rules.override_.shift_insert(at, rule);
    }
    let user_name: PatternedPushRule = serde_json::from_value(json!({
        "rule_id": ".m.rule.contains_user_name",
        "default": true,
        "enabled": true,
        "pattern": user.localpart(),
        "actions": highlight_sound,
    }))
    .expect("a valid rule");
    rules.content.insert(user_name);
    rules
}

/// A stored ruleset with every predefined rule it lacks added (stored before the rule existed
/// here), keeping the user's choices (`enabled`, `actions`) for those it has.
pub fn complete(mut stored: Ruleset, user: &UserId) -> Ruleset {
    stored.update_with_server_default(server_default(user));
    stored
}

/// The user's ruleset from their account data (the server default when none is stored).
pub async fn load(db: &Db, user: &UserId) -> Result<Option<Ruleset>> {
    let Some(raw) = db.get_account_data(user.as_str(), "", PUSH_RULES).await? else { return Ok(None) };
    Ok(parse(&raw, user))
}

/// A stored `m.push_rules` content's global ruleset, completed.
fn parse(raw: &str, user: &UserId) -> Option<Ruleset> {
    let stored: Option<Ruleset> =
        serde_json::from_str::<Value>(raw).ok().and_then(|v| serde_json::from_value(v["global"].clone()).ok());
    stored.map(|r| complete(r, user))
}

/// Per-user rulesets, parsed once and shared by every evaluation.
#[derive(Default)]
pub struct RulesCache {
    rules: Mutex<HashMap<OwnedUserId, (Instant, Arc<Ruleset>)>>,
}

impl RulesCache {
    /// The user's ruleset.
    pub async fn get(&self, db: &Db, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(r) = self.cached(user) {
            return Ok(r);
        }
        let rules = Arc::new(load(db, user).await?.unwrap_or_else(|| server_default(user)));
        let mut map = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(user.to_owned(), (Instant::now(), rules.clone()));
        Ok(rules)
    }

    /// The rulesets of `users`, in their order; those not cached are read in one query.
    pub async fn get_many(&self, db: &Db, users: &[&UserId]) -> Result<Vec<Arc<Ruleset>>> {
        let mut out: Vec<Option<Arc<Ruleset>>> = users.iter().map(|u| self.cached(u)).collect();
        let missing: Vec<&str> = users.iter().zip(&out).filter(|(_, r)| r.is_none()).map(|(u, _)| u.as_str()).collect();
        if !missing.is_empty() {
            let stored: HashMap<String, String> = db.push_rules_of(&missing).await?.into_iter().collect();
            let mut map = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() + missing.len() >= MAX_CACHED {
                map.clear();
            }
            let now = Instant::now();
            for (user, slot) in users.iter().zip(out.iter_mut()).filter(|(_, r)| r.is_none()) {
                let parsed = stored.get(user.as_str()).and_then(|raw| parse(raw, user));
                let rules = Arc::new(parsed.unwrap_or_else(|| server_default(user)));
                map.insert((*user).to_owned(), (now, rules.clone()));
                *slot = Some(rules);
            }
        }
        Ok(out.into_iter().map(|r| r.expect("filled above")).collect())
    }

    fn cached(&self, user: &UserId) -> Option<Arc<Ruleset>> {
        let map = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        map.get(user).filter(|(at, _)| at.elapsed() < CACHE_TTL).map(|(_, r)| r.clone())
    }

    /// Forgets the user's ruleset (it was just changed).
    pub fn forget(&self, user: &UserId) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).remove(user);
    }
}

/// One event, flattened once for the evaluation of every user's rules.
pub struct PreparedEvent {
    flat: FlattenedJson,
    sender: String,
    has_mentions: bool,
}

impl PreparedEvent {
    /// Prepares the client form of an event.
    pub fn new(client_json: &Value) -> Result<Self> {
        let raw: Raw<Value> =
            Raw::from_json(serde_json::value::to_raw_value(client_json).map_err(crate::error::Error::internal)?);
        Ok(Self {
            flat: FlattenedJson::from_raw(&raw),
            sender: client_json["sender"].as_str().unwrap_or_default().to_owned(),
            has_mentions: client_json["content"].get("m.mentions").is_some(),
        })
    }

    /// The actions of the first rule of `rules` that applies for the user of `ctx` (none for
    /// the sender's own events). `ctx.user_display_name` empty means the user has none.
    pub async fn actions<'r>(&self, rules: &'r Ruleset, ctx: &PushConditionRoomCtx) -> &'r [Action] {
        if self.sender == ctx.user_id.as_str() {
            return &[];
        }
        for rule in rules.iter() {
            if self.has_mentions && LEGACY_MENTION_RULES.contains(&rule.rule_id()) {
                continue;
            }
            // An empty display name would be found in every body.
            if ctx.user_display_name.is_empty()
                && let AnyPushRuleRef::Override(r) | AnyPushRuleRef::Underride(r) = rule
                && r.conditions.iter().any(is_display_name_condition)
            {
                continue;
            }
            if rule.applies(&self.flat, ctx).await {
                return rule.actions();
            }
        }
        &[]
    }
}

#[allow(deprecated)]
fn is_display_name_condition(c: &PushCondition) -> bool {
    matches!(c, PushCondition::ContainsDisplayName)
}

/// Whether actions notify, and whether they highlight.
pub fn notify_highlight(actions: &[Action]) -> (bool, bool) {
    let highlight = actions.iter().any(|a| matches!(a, Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes))));
    (actions.iter().any(Action::should_notify), highlight)
}

/// Actions as stored: `None` for the plain `["notify"]`.
pub fn stored_actions(actions: &[Action]) -> Option<String> {
    if actions.len() == 1 && matches!(actions[0], Action::Notify) {
        return None;
    }
    serde_json::to_string(actions).ok()
}

/// Stored actions back as a list.
pub fn actions_from_stored(stored: Option<&str>) -> Vec<Action> {
    match stored {
        None => vec![Action::Notify],
        Some(s) => serde_json::from_str(s).unwrap_or_else(|_| vec![Action::Notify]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_in_spec_order() {
        let user = ruma::user_id!("@alice:example.org");
        let rules = server_default(user);
        let ids: Vec<&str> = rules.override_.iter().map(|r| r.rule_id.as_str()).collect();
        let pos = |id: &str| ids.iter().position(|i| *i == id).unwrap();
        assert!(pos(".m.rule.is_user_mention") + 1 == pos(".m.rule.contains_display_name"));
        assert!(pos(".m.rule.contains_display_name") + 1 == pos(".m.rule.is_room_mention"));
        assert!(pos(".m.rule.is_room_mention") + 1 == pos(".m.rule.roomnotif"));
        assert!(pos(".m.rule.roomnotif") + 1 == pos(".m.rule.tombstone"));
        let content: Vec<&str> = rules.content.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(content, [".m.rule.contains_user_name"]);
        assert_eq!(rules.content[0].pattern, "alice");
        // A ruleset stored from ruma's defaults gets the missing rules, keeping what the user set.
        let mut old = Ruleset::server_default(user);
        old.set_enabled(ruma::push::RuleKind::Override, ".m.rule.suppress_notices", false).unwrap();
        let done = complete(old, user);
        assert_eq!(done.override_.len(), rules.override_.len());
        assert!(!done.override_.get(".m.rule.suppress_notices").unwrap().enabled);
        assert!(done.content.get(".m.rule.contains_user_name").is_some());
    }
}
