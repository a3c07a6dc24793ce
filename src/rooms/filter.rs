//! Event filters (spec: "Filtering"), shared by `/messages`, `/context` and `/sync`.

use serde_json::Value;

use crate::storage::rooms::StoredEvent;

/// A `RoomEventFilter`, read leniently from JSON.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Largest number of events.
    pub limit: Option<usize>,
    /// Event types to include (`*` wildcards).
    pub types: Option<Vec<String>>,
    /// Event types to exclude.
    pub not_types: Vec<String>,
    /// Senders to include.
    pub senders: Option<Vec<String>>,
    /// Senders to exclude.
    pub not_senders: Vec<String>,
    /// Rooms to include.
    pub rooms: Option<Vec<String>>,
    /// Rooms to exclude.
    pub not_rooms: Vec<String>,
    /// Only events with (true) or without (false) a `url` in content.
    pub contains_url: Option<bool>,
    /// Send member events only for senders of returned events.
    pub lazy_load_members: bool,
    /// With lazy loading, resend member events the client already has.
    pub include_redundant_members: bool,
}

/// A JSON array of strings (other entries skipped); `None` if `v` is not an array.
pub(crate) fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
}

/// `*` wildcards as in the spec's `types`/`not_types`.
pub(crate) fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// Reads a filter object; unknown or malformed fields are ignored like Synapse does.
    pub fn from_json(v: &Value) -> Self {
        Self {
            limit: v["limit"].as_u64().map(|l| l as usize),
            types: strings(&v["types"]),
            not_types: strings(&v["not_types"]).unwrap_or_default(),
            senders: strings(&v["senders"]),
            not_senders: strings(&v["not_senders"]).unwrap_or_default(),
            rooms: strings(&v["rooms"]),
            not_rooms: strings(&v["not_rooms"]).unwrap_or_default(),
            contains_url: v["contains_url"].as_bool(),
            lazy_load_members: v["lazy_load_members"].as_bool().unwrap_or(false),
            include_redundant_members: v["include_redundant_members"].as_bool().unwrap_or(false),
        }
    }

    /// Whether the room passes `rooms` / `not_rooms`.
    pub fn room_allowed(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self.rooms.as_ref().is_none_or(|rs| rs.iter().any(|r| r == room_id))
    }

    /// Whether an event passes the filter.
    pub fn matches(&self, ev: &StoredEvent) -> bool {
        let kind = ev.pdu.fields.kind.to_string();
        let sender = ev.pdu.fields.sender.as_str();
        if self.not_types.iter().any(|p| type_matches(p, &kind)) {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|p| type_matches(p, &kind))
        {
            return false;
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.iter().any(|s| s == sender)
        {
            return false;
        }
        if !self.room_allowed(ev.pdu.room_id.as_str()) {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = ev.pdu.content().get("url").is_some_and(Value::is_string);
            if has != want {
                return false;
            }
        }
        true
    }
}
