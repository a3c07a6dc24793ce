//! State at events: writing and loading state groups (snapshot + bounded delta chain), with a
//! cache.
//!
//! Every accepted event is stored with the group of the state after it, whoever produced it:
//! the local writer (`build.rs`), the inbound federation pipeline (`federated/inbound.rs`,
//! also for soft-failed events), backfill (`backfill.rs`) and a join over federation
//! (`federated/outbound.rs`). They all write through [`Rooms::write_state_after`] and
//! [`Rooms::write_state_group`], and record what a state event replaced with
//! [`Rooms::replaces_state`], so the state before any stored event can be read back the same
//! way (`state_before_event`). State groups are immutable once written, so caching them by id
//! is safe across processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::error::Result;
use crate::events::pdu::Pdu;
use crate::rooms::Rooms;
use crate::storage::rooms::StateIds;
use crate::storage::{Db, WriteTx};

/// A group's chain length is the number of entries in the deltas between it and its snapshot
/// (one per hop for a state event's group). A new delta is written while the chain stays within
/// the room's state size, bounded below by `MIN_CHAIN` and above by `MAX_CHAIN`; past that the
/// group is a snapshot.
///
/// Bounding the chain by the state size keeps both costs proportional: reading a group from the
/// database reads at most about twice its state (the snapshot and the deltas above it), and a
/// snapshot is written once per as many changes as it has entries, so a state change costs a
/// constant share of a snapshot whatever the room's size. With a fixed bound of 50, a topic
/// change in a room of 1,001 members cost 5,116 bytes on SQLite (a 1,000-entry snapshot every
/// 50 changes) against 1,737 bytes in a room of two.
pub const MIN_CHAIN: i64 = 50;

/// The longest chain whatever the state size: a group read from the database walks its chain
/// one link at a time in a recursive statement.
pub const MAX_CHAIN: i64 = 1000;

/// Whether a delta of `added` entries may go on a chain of `chain` under a state of
/// `state_len` entries.
fn extends_chain(chain: i64, added: usize, state_len: usize) -> bool {
    chain + added as i64 <= (state_len as i64).clamp(MIN_CHAIN, MAX_CHAIN)
}

/// Cache of resolved state groups, in two generations: new entries go into the young one; when
/// it is full it becomes the old one (the previous old one is dropped), and a hit in the old one
/// moves the entry back. The groups in use survive a turn over, where clearing the whole cache
/// when full made an initial sync of 1,000 rooms evict its own groups and load them again,
/// thousands of times.
#[derive(Default)]
pub struct StateCache {
    groups: Mutex<Generations>,
}

type Cached = (Arc<StateIds>, i64);

#[derive(Default)]
struct Generations {
    young: HashMap<i64, Cached>,
    old: HashMap<i64, Cached>,
}

/// Entries of one generation (so at most twice as many are held).
const CACHE_LIMIT: usize = 4096;

impl Generations {
    fn put(&mut self, id: i64, entry: Cached) {
        if self.young.len() >= CACHE_LIMIT {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id, entry);
    }
}

impl StateCache {
    /// The full state of a group, and its chain length.
    pub async fn load(&self, db: &Db, group: i64) -> Result<(Arc<StateIds>, i64)> {
        if let Some(hit) = self.get(group) {
            return Ok(hit);
        }
        let mut loaded = self.load_many(db, &[group]).await?;
        match loaded.remove(&group) {
            Some(found) => Ok(found),
            // Cached by a concurrent load in between.
            None => {
                self.get(group).ok_or_else(|| crate::error::Error::internal(format!("state group {group} missing")))
            }
        }
    }

    fn get(&self, group: i64) -> Option<(Arc<StateIds>, i64)> {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = g.young.get(&group) {
            return Some(hit.clone());
        }
        let hit = g.old.remove(&group)?;
        g.put(group, hit.clone());
        Some(hit)
    }

    /// Loads and caches the groups not cached yet: their chains in one statement, the entries
    /// of the links above the first cached one (or the snapshot) in another, whatever the
    /// number of groups (an initial sync asks for one per room). Answers the groups it loaded.
    pub async fn load_many(&self, db: &Db, groups: &[i64]) -> Result<HashMap<i64, (Arc<StateIds>, i64)>> {
        let wanted: Vec<i64> = groups.iter().copied().filter(|g| self.get(*g).is_none()).collect();
        let mut loaded = HashMap::new();
        if wanted.is_empty() {
            return Ok(loaded);
        }
        let links = db.state_group_chains(&wanted).await?;
        // Each wanted group's chain, top down, to a cached group or a snapshot.
        let mut chains: Vec<(Vec<i64>, Option<Arc<StateIds>>)> = Vec::new();
        let mut uncached = std::collections::HashSet::new();
        for &g in &wanted {
            let mut chain = Vec::new();
            let mut base = None;
            let mut next = Some(g);
            while let Some(id) = next {
                if let Some((state, _)) = self.get(id) {
                    base = Some(state);
                    break;
                }
                let Some(&(prev, _)) = links.get(&id) else {
                    return Err(crate::error::Error::internal(format!("state group {id} missing")));
                };
                chain.push(id);
                uncached.insert(id);
                next = prev;
            }
            chains.push((chain, base));
        }
        let mut entries = db.state_group_entries_of(&uncached.into_iter().collect::<Vec<_>>()).await?;
        for (chain, base) in chains {
            let Some(&top) = chain.first() else { continue };
            let mut state = base.map(|b| (*b).clone()).unwrap_or_default();
            for id in chain.iter().rev() {
                if let Some(own) = entries.get(id) {
                    state.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            // Only the wanted groups are kept: the links below them would push other rooms'
            // groups out of the cache, and a chain is two statements to read again.
            let arc = Arc::new(state);
            self.insert(top, arc.clone(), links[&top].1);
            loaded.insert(top, (arc, links[&top].1));
        }
        entries.clear();
        Ok(loaded)
    }

    /// Remembers a group just written.
    pub fn insert(&self, id: i64, state: Arc<StateIds>, chain_length: i64) {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).put(id, (state, chain_length));
    }
}

impl Rooms {
    /// Writes the group of the state after `pdu` and answers it with its chain length.
    ///
    /// `before` is the group holding the state before the event (with its chain length) when
    /// there is one; `state_after` is the full state after it, written as a snapshot when there
    /// is no such group or its chain is long. A state event adds a one-entry delta, so a hot
    /// room's writers never compare or copy its whole state; any other event shares `before`.
    pub(in crate::rooms) async fn write_state_after(
        &self,
        tx: &mut WriteTx,
        pdu: &Pdu,
        before: Option<(i64, i64)>,
        state_after: &StateIds,
    ) -> Result<(i64, i64)> {
        let room_id = pdu.room_id.as_str();
        match (&pdu.fields.state_key, before) {
            (None, Some(group)) => Ok(group),
            (Some(key), Some((group, chain))) if extends_chain(chain, 1, state_after.len()) => {
                let entry = StateIds::unit((pdu.fields.kind.to_string(), key.clone()), pdu.event_id.to_string());
                Ok((self.db.insert_state_group(tx, room_id, Some(group), chain + 1, &entry).await?, chain + 1))
            }
            _ => Ok((self.db.insert_state_group(tx, room_id, None, 0, state_after).await?, 0)),
        }
    }

    /// Writes the group of an arbitrary `state` (a resolved current state, the state a join
    /// was given), as a delta on `base` (group, chain length, its state) when `state` only adds
    /// to or changes it and the chain is short, else as a snapshot. Answers `base` itself when
    /// nothing differs.
    pub(in crate::rooms) async fn write_state_group(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        base: Option<(i64, i64, &StateIds)>,
        state: &StateIds,
    ) -> Result<(i64, i64)> {
        if let Some((group, chain, base_state)) = base {
            if base_state == state {
                return Ok((group, chain));
            }
            // A delta has at least one entry: when not even that fits, no delta is computed.
            if extends_chain(chain, 1, state.len()) && base_state.keys().all(|k| state.contains_key(k)) {
                let delta: StateIds = state
                    .iter()
                    .filter(|(k, v)| base_state.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if extends_chain(chain, delta.len(), state.len()) {
                    let chain = chain + delta.len() as i64;
                    return Ok((self.db.insert_state_group(tx, room_id, Some(group), chain, &delta).await?, chain));
                }
            }
        }
        Ok((self.db.insert_state_group(tx, room_id, None, 0, state).await?, 0))
    }

    /// The `unsigned` data of a state event that replaces an entry of the state `before` it:
    /// `replaces_state`, `prev_content` and `prev_sender` (clients read the last two; the first
    /// is how the state before a stored event is told from the state after it). `written`
    /// holds events of the same uncommitted write that a lookup would not find yet.
    pub(in crate::rooms) async fn replaces_state(
        &self,
        pdu: &Pdu,
        before: &StateIds,
        written: &HashMap<String, Pdu>,
    ) -> Result<Option<Value>> {
        let Some(key) = &pdu.fields.state_key else { return Ok(None) };
        let Some(prev_id) = before.get(&(pdu.fields.kind.to_string(), key.clone())) else { return Ok(None) };
        let prev = match written.get(prev_id) {
            Some(p) => Some(p.clone()),
            None => self.cached_pdus(std::slice::from_ref(prev_id)).await?.remove(prev_id),
        };
        // The replaced event is normally held; when it is not (state taken from a resident
        // without its events), the id alone still lets the state before be read back.
        Ok(Some(match prev {
            Some(prev) => json!({
                "replaces_state": prev_id,
                "prev_content": prev.content(),
                "prev_sender": prev.fields.sender,
            }),
            None => json!({ "replaces_state": prev_id }),
        }))
    }
}

/// The state after `pdu`, given the state before it.
pub(in crate::rooms) fn state_after(before: &StateIds, pdu: &Pdu) -> StateIds {
    let mut after = before.clone();
    if let Some(key) = &pdu.fields.state_key {
        after.insert((pdu.fields.kind.to_string(), key.clone()), pdu.event_id.to_string());
    }
    after
}
