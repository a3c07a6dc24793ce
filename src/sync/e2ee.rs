//! The end-to-end encryption parts of a sync response: `device_lists` (changed / left, only in
//! incremental syncs), `device_one_time_keys_count` and `device_unused_fallback_key_types`,
//! from the E2EE engine (`crate::e2ee`). Its `device_lists` stream position is the last `_` part
//! of sync tokens (`SyncToken::device_lists`); the E2EE engine wakes the affected users' `/sync`
//! after each change. Key counts alone never end a long-poll ([`E2eeSync::is_empty`]).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::{Ctx, SyncEngine};
use crate::e2ee::device_lists::Positions;
use crate::error::Result;
use crate::storage::sync::MembershipRow;

/// E2EE data of one sync response.
#[derive(Debug, Clone, Default)]
pub struct E2eeSync {
    /// Users whose device lists changed and who share an encrypted room with the syncing user.
    pub changed: Vec<String>,
    /// Users who no longer share an encrypted room with the syncing user.
    pub left: Vec<String>,
    /// Unclaimed one-time keys of the syncing device, per algorithm; `None` leaves the field out.
    pub one_time_keys_count: Option<BTreeMap<String, u64>>,
    /// Unused fallback key algorithms of the syncing device; `None` leaves the field out.
    pub unused_fallback_key_types: Option<Vec<String>>,
}

impl E2eeSync {
    /// Whether there is a change that should end a long-poll.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }

    /// Adds the fields to a sync response object.
    pub fn write_into(self, res: &mut Map<String, Value>) {
        if !self.is_empty() {
            res.insert("device_lists".into(), json!({ "changed": self.changed, "left": self.left }));
        }
        if let Some(c) = self.one_time_keys_count {
            res.insert("device_one_time_keys_count".into(), json!(c));
        }
        if let Some(f) = self.unused_fallback_key_types {
            res.insert("device_unused_fallback_key_types".into(), json!(f));
        }
    }
}

impl SyncEngine {
    /// The E2EE part of a sync for `(since, now]` (`since` None: initial sync).
    pub async fn e2ee_sync(&self, ctx: &Ctx<'_>, memberships: &[MembershipRow]) -> Result<E2eeSync> {
        let (user_id, device_id, now) = (ctx.user.as_str(), ctx.device.as_str(), ctx.now);
        let mut out = E2eeSync::default();
        if let Some(s) = ctx.since {
            // Whether anyone joined or left one of the user's rooms: the log answers for recent
            // tokens, the database for older ones.
            let members_moved = if s.events >= now.events {
                false
            } else if ctx.view.covers(s.events) && ctx.view.end == now.events {
                let rooms: HashSet<&str> = memberships.iter().map(|m| m.room_id.as_str()).collect();
                ctx.view.members_moved_in(&rooms, s.events)
            } else {
                true
            };
            let delta = self
                .e2ee
                .device_list_delta(
                    user_id,
                    Positions { events: s.events, device_lists: s.device_lists },
                    Positions { events: now.events, device_lists: now.device_lists },
                    members_moved,
                )
                .await?;
            out.changed = delta.changed;
            out.left = delta.left;
        }
        let (counts, fallback) = self.e2ee.key_counts(user_id, device_id).await?;
        out.one_time_keys_count = Some(counts.into_iter().map(|(k, n)| (k, n.max(0) as u64)).collect());
        out.unused_fallback_key_types = Some(fallback);
        Ok(out)
    }
}
