//! Caches on the send path: PDUs used for authorisation, and each room's members by state group;
//! and the transaction ids of events this process wrote.
//!
//! Both are pure caches. PDUs are immutable except for redaction, which evicts the entry. A room's
//! membership only changes together with its state group (member events are state), so a cached
//! member list is keyed by the state group it was read at and is never stale for that group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::events::pdu::Pdu;

const PDU_LIMIT: usize = 20_000;
const ROOM_LIMIT: usize = 10_000;
const TXN_LIMIT: usize = 50_000;

/// Who sent an event with which transaction id: `(user, device, txn id)`.
pub type TxnOf = (String, String, String);

/// Local members to wake and remote servers to send to, for one state of a room.
#[derive(Debug, Default)]
pub struct RoomMembers {
    /// Local users with any membership (they may be syncing the room).
    pub local: Vec<String>,
    /// Remote servers with joined members.
    pub remote_servers: Vec<String>,
    /// Local users joined to the room (appservices are sent the events of rooms their users
    /// are in).
    pub joined_local: Vec<String>,
}

/// The caches.
#[derive(Default)]
pub struct Caches {
    pdus: Mutex<HashMap<String, Pdu>>,
    members: Mutex<HashMap<String, (i64, Arc<RoomMembers>)>>,
    /// Filled by the writer after commit. A transaction id never changes once written, so an
    /// entry is never stale; an event not found here is looked up in the database.
    txns: Mutex<HashMap<String, TxnOf>>,
}

impl Caches {
    /// A cached PDU.
    pub fn pdu(&self, event_id: &str) -> Option<Pdu> {
        self.pdus.lock().unwrap_or_else(|e| e.into_inner()).get(event_id).cloned()
    }

    /// Remembers a PDU.
    pub fn put_pdu(&self, pdu: &Pdu) {
        let mut pdus = self.pdus.lock().unwrap_or_else(|e| e.into_inner());
        if pdus.len() >= PDU_LIMIT {
            pdus.clear();
        }
        pdus.insert(pdu.event_id.to_string(), pdu.clone());
    }

    /// Forgets a PDU (after its redaction).
    pub fn evict_pdu(&self, event_id: &str) {
        self.pdus.lock().unwrap_or_else(|e| e.into_inner()).remove(event_id);
    }

    /// The transaction id of an event this process wrote, if remembered.
    pub fn txn(&self, event_id: &str) -> Option<TxnOf> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner()).get(event_id).cloned()
    }

    /// Remembers the transaction ids of committed events.
    pub fn put_txns(&self, entries: impl IntoIterator<Item = (String, TxnOf)>) {
        let mut txns = self.txns.lock().unwrap_or_else(|e| e.into_inner());
        for (event_id, txn) in entries {
            if txns.len() >= TXN_LIMIT {
                txns.clear();
            }
            txns.insert(event_id, txn);
        }
    }

    /// Members of a room at a state group, if cached.
    pub fn members(&self, room_id: &str, group: i64) -> Option<Arc<RoomMembers>> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.get(room_id).filter(|(g, _)| *g == group).map(|(_, m)| m.clone())
    }

    /// Remembers the members of a room at a state group.
    pub fn put_members(&self, room_id: &str, group: i64, m: Arc<RoomMembers>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if members.len() >= ROOM_LIMIT {
            members.clear();
        }
        members.insert(room_id.to_owned(), (group, m));
    }
}
