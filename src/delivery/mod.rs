//! Delivery: the background senders that carry what the engine committed to the outside world.
//!
//! - [`federation`]: drains `federation_outbox` to other servers, as transactions.
//! - [`appservice`]: drains `appservice_outbox` to application services.
//! - [`push`]: turns `event_push_actions` into notifications for push gateways.
//!
//! The engine never waits for a sender (principle 2): it writes the queue rows in the same
//! database transaction as the event, then signals [`crate::notifier::OutboxWakeup`], which
//! is built before the engine and handed to both sides. Each sender runs under a lease
//! (`crate::lease`), in one process at a time, and resumes from its tables after a restart or a
//! hand-over; retries reuse the stored transaction ids (principle 3). Senders sit above the
//! engine: they read events and rules through it, and nothing below imports them.

pub mod appservice;
pub mod federation;
pub mod push;
