//! The room engine: events, authorization, state and ordering.

pub mod version;
