//! State at events: loading state groups (snapshot + bounded delta chain) with a cache.
//!
//! State groups are immutable once written, so caching them by id is safe across processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::storage::Db;
use crate::storage::rooms::StateIds;

/// Longest delta chain before a full snapshot is written.
pub const MAX_CHAIN: i64 = 50;

/// Cache of resolved state groups.
#[derive(Default)]
pub struct StateCache {
    groups: Mutex<HashMap<i64, (Arc<StateIds>, i64)>>,
}

const CACHE_LIMIT: usize = 4096;

impl StateCache {
    /// The full state of a group, and its chain length.
    pub async fn load(&self, db: &Db, group: i64) -> Result<(Arc<StateIds>, i64)> {
        if let Some(hit) = self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&group) {
            return Ok(hit.clone());
        }
        // Walk the chain down to a cached group or a snapshot, then apply deltas upwards.
        let mut chain = Vec::new();
        let mut next = Some(group);
        let mut base: Option<Arc<StateIds>> = None;
        while let Some(id) = next {
            if let Some((state, _)) = self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned() {
                base = Some(state);
                break;
            }
            let (prev, len, entries) = db.state_group_row(id).await?;
            chain.push((id, len, entries));
            next = prev;
        }
        let mut state = base.map(|b| (*b).clone()).unwrap_or_default();
        let mut result = None;
        for (id, len, entries) in chain.into_iter().rev() {
            state.extend(entries);
            let arc = Arc::new(state.clone());
            self.insert(id, arc.clone(), len);
            result = Some((arc, len));
        }
        Ok(result.unwrap_or_else(|| {
            self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&group).cloned().expect("cached above")
        }))
    }

    /// Remembers a group just written.
    pub fn insert(&self, id: i64, state: Arc<StateIds>, chain_length: i64) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups.len() >= CACHE_LIMIT {
            groups.clear();
        }
        groups.insert(id, (state, chain_length));
    }
}
