//! Push rules and push notifications: each user's ruleset, stored as the `m.push_rules` account
//! data (so that `/sync` delivers it like any account data), starting from the spec's
//! predefined rules (`rules.rs`, which also evaluates them); pushers (`pushers.rs`) and the
//! sender that posts to push gateways (`sender.rs`).

pub mod pushers;
pub mod rules;
pub mod sender;

use ruma::UserId;
use ruma::push::Ruleset;
use serde_json::json;

use crate::error::Result;
use crate::sync::SyncEngine;

pub use rules::PUSH_RULES;

/// The user's ruleset; the server default is stored on first use so that `/sync` carries it.
/// A stored ruleset lacking predefined rules (stored before they existed here) gets them.
pub async fn ruleset(sync: &SyncEngine, user: &UserId) -> Result<Ruleset> {
    if let Some(stored) = sync.account_data(user, None, PUSH_RULES).await?
        && let Ok(rules) = serde_json::from_value::<Ruleset>(stored["global"].clone())
    {
        return Ok(rules::complete(rules, user));
    }
    let rules = rules::server_default(user);
    save(sync, user, &rules).await?;
    Ok(rules)
}

/// Stores the user's ruleset (and wakes their `/sync`).
pub async fn save(sync: &SyncEngine, user: &UserId, rules: &Ruleset) -> Result<()> {
    sync.set_account_data(user, None, PUSH_RULES, &json!({ "global": rules })).await
}
