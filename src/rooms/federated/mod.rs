//! Rooms across servers: incoming PDUs, the resident side of joins/leaves/invites, and local
//! users joining, inviting into and leaving rooms through other servers.
//!
//! Every incoming PDU goes through the same checks (spec: "Checks performed on receipt of a
//! PDU"): format, signatures of the origin and sender servers, content hash (a mismatch means
//! the redacted form is kept), auth against its own `auth_events`, auth against the state
//! before it (state resolution over its prev events' states), and a soft-fail check against
//! the current state (a soft-failed event is stored as an outlier with its state group: served
//! to servers and usable as a prev or auth event, never shown to clients nor applied to the
//! current state). Missing prev events are fetched with `get_missing_events`; when a gap
//! remains, the state after each missing prev event comes from the origin's `state_ids` at it.
//! The current state is the resolution of the states at every forward extremity. A room's
//! events are processed one at a time under `room_lock`; rooms proceed in parallel.
//! docs/federation.md describes the pipeline step by step.
//!
//! - `inbound`: a transaction's PDUs: verify, check, persist (accepted, soft-failed, rejected).
//! - `resolve`: the state before an event, state resolution, state groups, the current state.
//! - `fetch`: missing prev events, auth chains and `state_ids` from other servers; outliers.
//! - `resident`: answering `make_*`/`send_*` joins, leaves and knocks, and invites, as a
//!   resident server; serving auth chains.
//! - `outbound`: local users joining, knocking, inviting and leaving through other servers.
//! - `acl`: server ACLs.

pub mod acl;
pub mod fetch;
pub mod inbound;
pub mod outbound;
pub mod policy;
pub mod resident;
pub mod resolve;
pub mod third_party;

use std::sync::Arc;

use ruma::room_version_rules::RoomVersionRules;
use ruma::{RoomId, RoomVersionId};

use super::Rooms;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::federation::Federation;
use crate::storage::rooms::StateIds;

/// Room versions we offer in `make_join` (`ver=`).
fn ver_query() -> String {
    crate::events::version::SUPPORTED_ROOM_VERSIONS.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&")
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What processing one PDU established.
pub struct Processed {
    /// The event.
    pub pdu: Pdu,
    /// The state before it.
    pub state_before: StateIds,
    /// Whether it was soft-failed: stored and served to servers, but not applied to the
    /// current state, not a forward extremity and not shown to local clients.
    pub soft_failed: bool,
}

impl Rooms {
    fn fed(&self) -> Result<&Arc<Federation>> {
        self.federation().ok_or_else(|| Error::forbidden("Federation is disabled on this server"))
    }

    /// Room version and rules of a known room.
    pub async fn room_rules(&self, room_id: &RoomId) -> Result<(RoomVersionId, RoomVersionRules)> {
        let (version, _) = self.db.get_room(room_id.as_str()).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
        let rules = crate::events::version::rules(&version)?;
        Ok((version, rules))
    }
}
