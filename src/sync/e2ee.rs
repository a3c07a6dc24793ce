//! The end-to-end encryption parts of a sync response: `device_lists` (changed / left, only in
//! incremental syncs), `device_one_time_keys_count` and `device_unused_fallback_key_types`,
//! from the E2EE engine (`crate::e2ee`). Its `device_lists` stream position is the last `_` part
//! of sync tokens (`SyncToken::device_lists`); the E2EE engine wakes the affected users' `/sync`
//! after each change. Key counts alone never end a long-poll ([`E2eeSync::is_empty`]).

use std::collections::BTreeMap;

use ruma::{DeviceId, UserId};
use serde_json::{Map, Value, json};

use super::SyncEngine;
use super::token::SyncToken;
use crate::e2ee::device_lists::Positions;
use crate::error::Result;

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
    /// The current position of the device list stream.
    pub async fn device_lists_position(&self) -> Result<i64> {
        self.e2ee.device_lists_position().await
    }

    /// The E2EE part of a sync of `device` for `(since, now]` (`since` None: initial sync).
    pub async fn e2ee_sync(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<SyncToken>,
        now: SyncToken,
    ) -> Result<E2eeSync> {
        let mut out = E2eeSync::default();
        if let Some(s) = since {
            let delta = self
                .e2ee
                .device_list_delta(
                    user_id.as_str(),
                    Positions { events: s.events, device_lists: s.device_lists },
                    Positions { events: now.events, device_lists: now.device_lists },
                )
                .await?;
            out.changed = delta.changed;
            out.left = delta.left;
        }
        let counts = self.e2ee.one_time_key_counts(user_id.as_str(), device_id.as_str()).await?;
        out.one_time_keys_count = Some(counts.into_iter().map(|(k, n)| (k, n.max(0) as u64)).collect());
        out.unused_fallback_key_types =
            Some(self.e2ee.unused_fallback_key_types(user_id.as_str(), device_id.as_str()).await?);
        Ok(out)
    }
}
