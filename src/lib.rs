//! Myelin, a Matrix homeserver. See `docs/ARCHITECTURE.md` for the codemap and invariants.

pub mod accounts;
pub mod api;
pub mod appservice;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod e2ee;
pub mod email;
pub mod error;
pub mod events;
pub mod federation;
pub mod ids;
pub mod import;
pub mod lease;
pub mod media;
pub mod metrics;
pub mod notifier;
pub mod push;
pub mod ratelimit;
pub mod rooms;
pub mod server;
pub mod signing;
pub mod ssrf;
pub mod storage;
pub mod sync;
pub mod voip;
