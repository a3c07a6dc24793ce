//! The PDU: a room event as servers exchange it, and its client-facing form.

use std::sync::{Arc, OnceLock};

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Largest PDU in bytes (spec: "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;

/// The fields of a PDU that the server reads; the full JSON travels alongside.
#[derive(Debug, Clone, Deserialize)]
pub struct PduFields {
    /// Absent in room version 12 create events (the room id is derived from the event id).
    pub room_id: Option<OwnedRoomId>,
    /// Sender.
    pub sender: OwnedUserId,
    /// Sender's timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    /// Content, unparsed.
    pub content: Box<RawJsonValue>,
    /// State key for state events.
    pub state_key: Option<String>,
    /// Parents in the DAG.
    #[serde(default)]
    pub prev_events: Vec<OwnedEventId>,
    /// Events authorising this one.
    #[serde(default)]
    pub auth_events: Vec<OwnedEventId>,
    /// Depth in the DAG.
    #[serde(default)]
    pub depth: i64,
    /// Target of a redaction (room versions before 11).
    pub redacts: Option<OwnedEventId>,
}

/// A PDU with its id, room and full JSON.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Event id (reference hash).
    pub event_id: OwnedEventId,
    /// Room id (derived for v12 create events).
    pub room_id: OwnedRoomId,
    /// Parsed fields.
    pub fields: PduFields,
    /// `redacts` of a redaction, from the top level or (v11+) the content.
    pub redacts_target: Option<OwnedEventId>,
    /// The full canonical JSON (without `event_id`); see [`Pdu::json`].
    json: Arc<LazyJson>,
    /// Whether the event failed authorization.
    pub rejected: bool,
}

/// A PDU's canonical JSON, parsed when first asked for. Events read from the database to be shown
/// to clients need only their [`PduFields`]; building the whole object tree (signatures, hashes,
/// auth events) for each of them, and dropping it again, was a tenth of an initial sync's CPU
/// time. Signing, redacting and serving to other servers parse it on demand.
#[derive(Debug)]
struct LazyJson {
    raw: Option<Box<str>>,
    parsed: OnceLock<CanonicalJsonObject>,
}

impl Pdu {
    /// The full canonical JSON (without `event_id`).
    pub fn json(&self) -> &CanonicalJsonObject {
        self.json.parsed.get_or_init(|| {
            let raw = self.json.raw.as_deref().unwrap_or("{}");
            serde_json::from_str(raw).unwrap_or_else(|e| {
                // Stored events were canonical JSON when written; this would be a corrupt row.
                tracing::error!(event_id = %self.event_id, error = %e, "stored PDU is not canonical JSON");
                CanonicalJsonObject::new()
            })
        })
    }

    /// Builds a PDU from its canonical JSON and known id.
    pub fn from_json(event_id: OwnedEventId, room_id: Option<OwnedRoomId>, json: CanonicalJsonObject) -> Result<Self> {
        let value = serde_json::to_value(&json)?;
        let fields: PduFields =
            serde_json::from_value(value).map_err(|e| Error::bad_json(format!("Invalid PDU: {e}")))?;
        Self::from_parts(event_id, room_id, fields, LazyJson { raw: None, parsed: OnceLock::from(json) })
    }

    fn from_parts(
        event_id: OwnedEventId,
        room_id: Option<OwnedRoomId>,
        fields: PduFields,
        json: LazyJson,
    ) -> Result<Self> {
        let room_id = match (room_id, &fields.room_id) {
            (_, Some(r)) => r.clone(),
            (Some(r), None) => r,
            (None, None) => {
                // v12 create event: the room id is the event id's hash with the room sigil.
                RoomId::parse(format!("!{}", &event_id.as_str()[1..])).map_err(|e| Error::bad_json(e.to_string()))?
            }
        };
        let redacts_target = fields.redacts.clone().or_else(|| {
            #[derive(Deserialize)]
            struct C {
                redacts: Option<OwnedEventId>,
            }
            if fields.kind == TimelineEventType::RoomRedaction {
                serde_json::from_str::<C>(fields.content.get()).ok().and_then(|c| c.redacts)
            } else {
                None
            }
        });
        Ok(Self { event_id, room_id, fields, redacts_target, json: Arc::new(json), rejected: false })
    }

    /// Parses the stored text form (two direct parses; this runs for every event read).
    pub fn from_stored(event_id: &str, room_id: &str, json: &str, rejected: bool) -> Result<Self> {
        let fields: PduFields = serde_json::from_str(json).map_err(Error::internal)?;
        let mut pdu = Self::from_parts(
            EventId::parse(event_id).map_err(Error::internal)?,
            Some(RoomId::parse(room_id).map_err(Error::internal)?),
            fields,
            LazyJson { raw: Some(json.into()), parsed: OnceLock::new() },
        )?;
        pdu.rejected = rejected;
        Ok(pdu)
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.fields.state_key.is_some()
    }

    /// The content as JSON.
    pub fn content(&self) -> Value {
        serde_json::from_str(self.fields.content.get()).unwrap_or(Value::Object(Default::default()))
    }

    /// The canonical JSON as text (as read from the database, when it was).
    pub fn json_string(&self) -> Result<String> {
        match &self.json.raw {
            Some(raw) => Ok(raw.to_string()),
            None => Ok(serde_json::to_string(self.json())?),
        }
    }

    /// The PDU as sent over federation (with `event_id` only for... never: v3+ ids are derived).
    pub fn federation_json(&self) -> Value {
        serde_json::to_value(self.json()).unwrap_or(Value::Null)
    }

    /// The client-server API form ("ClientEvent"), with server-computed `unsigned` data.
    pub fn client_json(&self, unsigned: Option<&Value>, now_ms: i64) -> Value {
        let mut ev = json!({
            "type": self.fields.kind.to_string(),
            "content": self.content(),
            "event_id": self.event_id,
            "sender": self.fields.sender,
            "origin_server_ts": self.fields.origin_server_ts,
            "room_id": self.room_id,
        });
        if let Some(key) = &self.fields.state_key {
            ev["state_key"] = json!(key);
        }
        if let Some(r) = &self.fields.redacts {
            ev["redacts"] = json!(r);
        } else if let Some(r) = &self.redacts_target {
            ev["redacts"] = json!(r);
        }
        let mut unsigned = match unsigned {
            Some(Value::Object(map)) => map.clone(),
            _ => Default::default(),
        };
        let age = now_ms - i64::from(self.fields.origin_server_ts.get());
        unsigned.insert("age".into(), json!(age.max(0)));
        ev["unsigned"] = Value::Object(unsigned);
        ev
    }

    /// [`Pdu::client_json`] written as JSON text to `out`, with `extra` entries added to
    /// `unsigned` (replacing stored ones of the same name). The content is copied as stored
    /// instead of parsed into a tree and written again: for a `/messages` page of 100 events
    /// building and dropping those trees was a fifth of the page's CPU time.
    pub fn write_client_json(&self, out: &mut Vec<u8>, unsigned: Option<&Value>, extra: &[(&str, Value)], now_ms: i64) {
        fn string(out: &mut Vec<u8>, s: &str) {
            serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
        }
        fn value(out: &mut Vec<u8>, v: &Value) {
            serde_json::to_writer(&mut *out, v).expect("writing a Value to a Vec cannot fail");
        }
        out.extend_from_slice(b"{\"type\":");
        string(out, &self.fields.kind.to_string());
        out.extend_from_slice(b",\"content\":");
        out.extend_from_slice(self.fields.content.get().as_bytes());
        out.extend_from_slice(b",\"event_id\":");
        string(out, self.event_id.as_str());
        out.extend_from_slice(b",\"sender\":");
        string(out, self.fields.sender.as_str());
        out.extend_from_slice(
            format!(",\"origin_server_ts\":{}", u64::from(self.fields.origin_server_ts.get())).as_bytes(),
        );
        out.extend_from_slice(b",\"room_id\":");
        string(out, self.room_id.as_str());
        if let Some(key) = &self.fields.state_key {
            out.extend_from_slice(b",\"state_key\":");
            string(out, key);
        }
        if let Some(r) = self.fields.redacts.as_ref().or(self.redacts_target.as_ref()) {
            out.extend_from_slice(b",\"redacts\":");
            string(out, r.as_str());
        }
        out.extend_from_slice(b",\"unsigned\":{");
        if let Some(Value::Object(map)) = unsigned {
            for (k, v) in map {
                if k == "age" || extra.iter().any(|(e, _)| e == k) {
                    continue;
                }
                string(out, k);
                out.push(b':');
                value(out, v);
                out.push(b',');
            }
        }
        for (k, v) in extra {
            string(out, k);
            out.push(b':');
            value(out, v);
            out.push(b',');
        }
        let age = (now_ms - i64::from(self.fields.origin_server_ts.get())).max(0);
        out.extend_from_slice(format!("\"age\":{age}}}}}").as_bytes());
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.fields.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.fields.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.fields.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.fields.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.fields.content
    }
    fn state_key(&self) -> Option<&str> {
        self.fields.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.fields.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.fields.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts_target.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
