//! The user directory (`POST /user_directory/search`): the users a user may find are those
//! who share a joined room with them and those joined to a room anyone may join (join rule
//! `public`), as on Synapse with its default `search_all_users: false`. Deactivated users are
//! never found.
//!
//! Names shown are public ones only: a local user's global profile, and for a remote user the
//! display name and avatar of their member event in one of the rooms that make them visible
//! (Synapse does the same: a room-specific nickname is public to the room's members).
//!
//! Matching is by word prefix, case-insensitive: every word of the search term must begin a
//! word of the user id or the display name, so "ali smi" finds "Alice Smith" and
//! `@alice:example.org`, while "ice" finds neither.
//!
//! The candidates are read at each search (the searcher's rooms' members, and the public
//! rooms' members): no index is kept, so a search costs one read of those memberships. That
//! is cheap next to a typing client's debounce, but it is linear in the members of public
//! rooms; a maintained search table is the next step for servers with very large ones.

use std::collections::HashMap;

use ruma::{OwnedUserId, UserId};

use super::Rooms;
use crate::error::Result;

/// Most results one search returns, whatever the client asks.
pub const MAX_LIMIT: usize = 100;

/// One user found by a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundUser {
    pub user_id: OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// Lower-cased words of `s`: runs of letters and digits.
pub fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// How well `user` matches `terms` (all of which must match), lower is better; None when a
/// term matches no word.
fn rank(terms: &[String], user: &FoundUser) -> Option<u8> {
    let mut id_words = words(user.user_id.localpart());
    id_words.extend(words(user.user_id.server_name().as_str()));
    let name_words = user.display_name.as_deref().map(words).unwrap_or_default();
    let all = || id_words.iter().chain(&name_words);
    if !terms.iter().all(|t| all().any(|w| w.starts_with(t.as_str()))) {
        return None;
    }
    // Whole words before prefixes, and named users before unnamed ones.
    let exact = terms.iter().all(|t| all().any(|w| w == t));
    Some(match (exact, user.display_name.is_some()) {
        (true, true) => 0,
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => 3,
    })
}

impl Rooms {
    /// The users `searcher` may find that match `term`, best first, at most `limit` of them;
    /// and whether more matched.
    pub async fn search_users(&self, searcher: &UserId, term: &str, limit: usize) -> Result<(Vec<FoundUser>, bool)> {
        let terms = words(term);
        if terms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let rules = self.db.join_rule_events().await?;
        let rule_ids: Vec<String> = rules.iter().map(|(_, e)| e.clone()).collect();
        let rule_pdus = self.cached_pdus(&rule_ids).await?;
        let public: Vec<&str> = rules
            .iter()
            .filter(|(_, e)| rule_pdus.get(e).is_some_and(|p| p.content()["join_rule"] == "public"))
            .map(|(r, _)| r.as_str())
            .collect();
        let rows = self.db.directory_candidates(searcher.as_str(), &public).await?;

        // One entry per user; remote users' names come from a member event.
        let mut users: HashMap<String, Option<FoundUser>> = HashMap::new();
        let mut remote: HashMap<String, String> = HashMap::new();
        for row in rows {
            if users.contains_key(&row.user_id) || remote.contains_key(&row.user_id) {
                continue;
            }
            let Ok(user_id) = UserId::parse(row.user_id.as_str()) else { continue };
            match row.local {
                Some(p) if p.deactivated => {
                    users.insert(row.user_id, None);
                }
                Some(p) => {
                    let found = FoundUser { user_id, display_name: p.displayname, avatar_url: p.avatar_url };
                    users.insert(row.user_id, Some(found));
                }
                None if user_id.server_name() == &*self.server_name => {}
                None => {
                    remote.insert(row.user_id, row.member_event_id);
                }
            }
        }
        let member_ids: Vec<String> = remote.values().cloned().collect();
        let members = self.cached_pdus(&member_ids).await?;
        for (user, event_id) in remote {
            let Ok(user_id) = UserId::parse(user.as_str()) else { continue };
            let content = members.get(&event_id).map(|p| p.content()).unwrap_or_default();
            let text = |k: &str| content.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_owned);
            users.insert(
                user,
                Some(FoundUser { user_id, display_name: text("displayname"), avatar_url: text("avatar_url") }),
            );
        }

        let mut found: Vec<(u8, FoundUser)> =
            users.into_values().flatten().filter_map(|u| rank(&terms, &u).map(|r| (r, u))).collect();
        found.sort_by(|(ra, a), (rb, b)| {
            let name = |u: &FoundUser| u.display_name.as_deref().map(str::to_lowercase);
            ra.cmp(rb).then_with(|| name(a).cmp(&name(b))).then_with(|| a.user_id.cmp(&b.user_id))
        });
        let limit = limit.clamp(1, MAX_LIMIT);
        let limited = found.len() > limit;
        Ok((found.into_iter().take(limit).map(|(_, u)| u).collect(), limited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: Option<&str>) -> FoundUser {
        FoundUser { user_id: UserId::parse(id).unwrap(), display_name: name.map(str::to_owned), avatar_url: None }
    }

    #[test]
    fn every_term_must_begin_a_word() {
        let alice = user("@alice:example.org", Some("Alice Smith"));
        let t = |s: &str| rank(&words(s), &alice);
        assert_eq!(t("alice"), Some(0));
        assert_eq!(t("ALI"), Some(2));
        assert_eq!(t("ali smi"), Some(2));
        assert_eq!(t("smith"), Some(0));
        assert_eq!(t("example"), Some(0));
        assert_eq!(t("@alice:example.org"), Some(0));
        assert_eq!(t("ice"), None);
        assert_eq!(t("alice jones"), None);
        assert_eq!(rank(&words("bo"), &user("@bob:x", None)), Some(3));
    }
}
