//! Sync filters (spec: "Filtering"): the parts of a `Filter` that `/sync` applies, read leniently
//! from the JSON a client uploaded or passed inline. Event-level matching is the room engine's
//! [`EventFilter`], shared with `/messages`.

use serde_json::Value;

use crate::rooms::filter::{EventFilter, strings, type_matches};

/// Timeline length when the filter gives none (Synapse's default).
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Largest timeline a filter may ask for.
pub const MAX_TIMELINE_LIMIT: usize = 500;

/// The filter of one `/sync` request.
#[derive(Debug, Clone, Default)]
pub struct SyncFilter {
    /// Top-level `presence`.
    pub presence: EventFilter,
    /// Top-level `account_data`.
    pub account_data: EventFilter,
    /// `room.rooms`.
    pub rooms: Option<Vec<String>>,
    /// `room.not_rooms`.
    pub not_rooms: Vec<String>,
    /// `room.include_leave`: left rooms in an initial sync.
    pub include_leave: bool,
    /// `room.timeline`.
    pub timeline: EventFilter,
    /// `room.state` (carries `lazy_load_members`).
    pub state: EventFilter,
    /// `room.ephemeral`.
    pub ephemeral: EventFilter,
    /// `room.account_data`.
    pub room_account_data: EventFilter,
    /// `room.timeline.unread_thread_notifications`: counts per thread, apart from the main
    /// timeline's.
    pub unread_thread_notifications: bool,
}

/// Whether a non-room event (account data, presence, ephemeral) of `kind` from `sender` passes.
pub fn allows(filter: &EventFilter, kind: &str, sender: Option<&str>) -> bool {
    if filter.limit == Some(0) || filter.not_types.iter().any(|p| type_matches(p, kind)) {
        return false;
    }
    if let Some(types) = &filter.types
        && !types.iter().any(|p| type_matches(p, kind))
    {
        return false;
    }
    if let Some(sender) = sender {
        if filter.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &filter.senders
            && !senders.iter().any(|s| s == sender)
        {
            return false;
        }
    }
    true
}

impl SyncFilter {
    /// Reads a filter definition; unknown or malformed fields are ignored, as Synapse does.
    pub fn from_json(v: &Value) -> Self {
        let room = &v["room"];
        Self {
            presence: EventFilter::from_json(&v["presence"]),
            account_data: EventFilter::from_json(&v["account_data"]),
            rooms: strings(&room["rooms"]),
            not_rooms: strings(&room["not_rooms"]).unwrap_or_default(),
            include_leave: room["include_leave"].as_bool().unwrap_or(false),
            timeline: EventFilter::from_json(&room["timeline"]),
            state: EventFilter::from_json(&room["state"]),
            ephemeral: EventFilter::from_json(&room["ephemeral"]),
            room_account_data: EventFilter::from_json(&room["account_data"]),
            unread_thread_notifications: room["timeline"]["unread_thread_notifications"].as_bool().unwrap_or(false),
        }
    }

    /// Whether a room is included at all.
    pub fn room_allowed(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self.rooms.as_ref().is_none_or(|rs| rs.iter().any(|r| r == room_id))
    }

    /// Number of timeline events per room.
    pub fn timeline_limit(&self) -> usize {
        self.timeline.limit.unwrap_or(DEFAULT_TIMELINE_LIMIT).clamp(1, MAX_TIMELINE_LIMIT)
    }

    /// Whether member state is lazy-loaded.
    pub fn lazy_load_members(&self) -> bool {
        self.state.lazy_load_members
    }

    /// Whether any presence can pass (so the query can be skipped).
    pub fn wants_presence(&self) -> bool {
        allows(&self.presence, "m.presence", None)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_parts_sync_uses() {
        let f = SyncFilter::from_json(&json!({
            "presence": {"not_types": ["*"]},
            "account_data": {"types": ["m.direct"]},
            "room": {
                "not_rooms": ["!b:x"],
                "include_leave": true,
                "timeline": {"limit": 3, "types": ["m.room.message"]},
                "state": {"lazy_load_members": true},
                "ephemeral": {"not_types": ["m.typing"]},
            }
        }));
        assert!(!f.wants_presence());
        assert!(allows(&f.account_data, "m.direct", None));
        assert!(!allows(&f.account_data, "m.push_rules", None));
        assert!(f.room_allowed("!a:x") && !f.room_allowed("!b:x"));
        assert!(f.include_leave && f.lazy_load_members());
        assert_eq!(f.timeline_limit(), 3);
        assert!(!allows(&f.ephemeral, "m.typing", None) && allows(&f.ephemeral, "m.receipt", None));
        assert_eq!(SyncFilter::default().timeline_limit(), DEFAULT_TIMELINE_LIMIT);
    }
}
