//! Room events as data: the PDU (an event as servers exchange it) and the room versions this
//! server speaks.
//!
//! This is the vocabulary every layer shares (storage stores PDUs, the engine builds and checks
//! them, sync and federation serve them), so it sits at the bottom: it does no I/O and imports
//! nothing of Myelin but the error type.

pub mod pdu;
pub mod signed;
pub mod version;

pub use pdu::Pdu;

/// State event types shown to invited and knocking users (spec: "Stripped state").
pub const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];
