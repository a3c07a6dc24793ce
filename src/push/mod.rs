//! Push rules and push notifications: each user's ruleset, stored as the `m.push_rules` account
//! data (so that `/sync` delivers it like any account data), starting from the spec's
//! predefined rules (`rules.rs`, which also evaluates them); pushers (`pushers.rs`) and the
//! sender that posts to push gateways (`crate::delivery::push`).

pub mod pushers;
pub mod rules;

pub use rules::PUSH_RULES;
