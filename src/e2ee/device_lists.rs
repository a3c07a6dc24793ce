//! Device-list change tracking: which users' devices or keys changed between two sync
//! positions, as `/keys/changes` and `/sync`'s `device_lists` report them.
//!
//! A user is in `changed` when they share a joined room with the syncing user now and either
//! their device list moved on the `device_lists` stream in the range, or they began to share a
//! room in the event range (a new room-mate's devices must be fetched). The syncing user's own
//! changes count too (their other devices need them). A user is in `left` when they stopped
//! sharing any room in the event range.

use std::collections::BTreeSet;

use super::E2ee;
use crate::error::{Error, Result};
use crate::storage::e2ee::{DEVICE_LISTS_STREAM, DeviceListChange};
use serde_json::{Value, json};

/// The `m.device_list_update` EDU that tells the servers sharing a room with a local user of
/// a change of one of the user's devices: a remaining device with its display name and its
/// keys (with the user's own later signatures, e.g. the self-signing key's), a deleted one
/// marked `deleted`. Storage reads the change in the transaction that makes it and queues
/// what this builds.
pub fn device_list_update_edu(change: &DeviceListChange<'_>) -> String {
    let mut content = json!({
        "user_id": change.user_id,
        "device_id": change.device_id,
        "stream_id": change.stream_id,
        "prev_id": change.prev_id.into_iter().collect::<Vec<_>>(),
        "deleted": change.deleted,
    });
    if let Some(name) = &change.display_name {
        content["device_display_name"] = json!(name);
    }
    if let Some(mut keys) = change.keys.as_deref().and_then(|k| serde_json::from_str::<Value>(k).ok()) {
        for (key_id, sig) in &change.own_signatures {
            crate::events::signed::add_signature(&mut keys, change.user_id, key_id, sig);
        }
        content["keys"] = keys;
    }
    json!({ "edu_type": "m.device_list_update", "content": content }).to_string()
}

/// A position in the two streams device lists depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    /// Room events (membership changes).
    pub events: i64,
    /// The device-list stream.
    pub device_lists: i64,
}

/// Which users to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceListDelta {
    /// Users whose device list the client should re-fetch.
    pub changed: Vec<String>,
    /// Users who no longer share a room with the client.
    pub left: Vec<String>,
}

/// Index of the device-list position among the `_`-separated parts of a sync token
/// `s<events>_<typing>_<receipts>_<account data>_<to-device>_<presence>_<device lists>`.
const DEVICE_LISTS_PART: usize = 6;

/// Reads the events and device-list positions of a sync token. Tokens without a device-list
/// part (`s<events>`, or written before that stream existed) give `None` for it.
pub fn parse_sync_token(token: &str) -> Result<(i64, Option<i64>)> {
    let bad = || Error::invalid_param(format!("Invalid sync token {token:?}"));
    let rest = token.strip_prefix('s').ok_or_else(bad)?;
    let mut events = None;
    let mut device_lists = None;
    for (i, part) in rest.split('_').enumerate() {
        let n: i64 = part.parse().map_err(|_| bad())?;
        if n < 0 {
            return Err(bad());
        }
        match i {
            0 => events = Some(n),
            DEVICE_LISTS_PART => device_lists = Some(n),
            _ => {}
        }
    }
    Ok((events.ok_or_else(bad)?, device_lists))
}

impl E2ee {
    /// The current end of the device-list stream.
    pub async fn device_lists_position(&self) -> Result<i64> {
        Ok(self.db.current_stream_position(DEVICE_LISTS_STREAM).await?)
    }

    /// Users to report to `user_id` for the range `(from, to]`.
    /// `members_moved`: whether a membership may have changed in `(from.events, to.events]` in
    /// a room of the user (false skips the membership queries).
    pub async fn device_list_delta(
        &self,
        user_id: &str,
        from: Positions,
        to: Positions,
        members_moved: bool,
    ) -> Result<DeviceListDelta> {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        if to.device_lists > from.device_lists {
            changed.extend(self.db.e2e_changed_sharing(user_id, from.device_lists, to.device_lists).await?);
        }
        let mut left = BTreeSet::new();
        if to.events > from.events
            && members_moved
            && self.db.e2e_memberships_moved(user_id, from.events, to.events).await?
        {
            changed.extend(self.db.e2e_newly_sharing(user_id, from.events, to.events).await?);
            let maybe_left = self.db.e2e_maybe_left(user_id, from.events, to.events).await?;
            if !maybe_left.is_empty() {
                let sharing: BTreeSet<String> = self.db.e2e_users_sharing(user_id).await?.into_iter().collect();
                left.extend(maybe_left.into_iter().filter(|u| !sharing.contains(u)));
            }
        }
        let changed = changed.into_iter().filter(|u| !left.contains(u)).collect();
        Ok(DeviceListDelta { changed, left: left.into_iter().collect() })
    }

    /// `GET /keys/changes?from&to`: both are sync tokens. A token without a device-list part
    /// reads as 0 for `from` (report every change, which costs the client a re-query at
    /// worst) and as the current position for `to`.
    pub async fn key_changes(&self, user_id: &str, from: &str, to: &str) -> Result<DeviceListDelta> {
        let (from_events, from_lists) = parse_sync_token(from)?;
        let (to_events, to_lists) = parse_sync_token(to)?;
        let to_lists = match to_lists {
            Some(p) => p,
            None => self.device_lists_position().await?,
        };
        self.device_list_delta(
            user_id,
            Positions { events: from_events, device_lists: from_lists.unwrap_or(0) },
            Positions { events: to_events, device_lists: to_lists },
            true,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::parse_sync_token;

    #[test]
    fn tokens() {
        assert_eq!(parse_sync_token("s12").unwrap(), (12, None));
        assert_eq!(parse_sync_token("s12_0_3_4_5_6_77").unwrap(), (12, Some(77)));
        assert_eq!(parse_sync_token("s12_0_3").unwrap(), (12, None));
        assert!(parse_sync_token("t1_2").is_err());
        assert!(parse_sync_token("s").is_err());
        assert!(parse_sync_token("s1_x").is_err());
    }
}
