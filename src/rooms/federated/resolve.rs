//! State around remote events: the state before an event (resolved over its prev events'
//! states), state resolution, state groups, and the current state as the resolution of the
//! states at every forward extremity.

use std::collections::{HashMap, HashSet};

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::StateMap;
use ruma::{EventId, OwnedEventId, ServerName};

use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::rooms::Rooms;
use crate::storage::WriteTx;
use crate::storage::rooms::{StateIds, StoredEvent};

impl Rooms {
    /// The state before `pdu` from the state groups after its prev events (`prev_groups`): one
    /// group's state as is (with the group and its delta-chain length, for storing the state
    /// after as a delta), several resolved together. `None` (a prev event missing, held without
    /// a state, or rejected): see [`Rooms::state_before_with_gaps`].
    pub(in crate::rooms) async fn state_before(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        prev_groups: Option<Vec<i64>>,
    ) -> Result<(StateIds, Option<(i64, i64)>)> {
        Ok(match prev_groups {
            Some(groups) if groups.len() == 1 => {
                let (state, chain) = self.state_cache.load(&self.db, groups[0]).await?;
                ((*state).clone(), Some((groups[0], chain)))
            }
            Some(groups) => {
                let mut states = Vec::new();
                for g in groups {
                    states.push((*self.state_at_group(g).await?).clone());
                }
                (self.resolve_states(rules, states).await?, None)
            }
            None => match self.state_before_with_gaps(origin, rules, pdu).await {
                Ok(state) => (state, None),
                Err(e) => {
                    // The origin could not give the state at one of the prevs (e.g. it does not
                    // serve that event): its answer for the event itself is the best left.
                    tracing::info!(event_id = %pdu.event_id, error = %e.message, "state at the prev events unavailable; asking the state at the event");
                    (self.fetch_state_before(origin, rules, pdu).await?, None)
                }
            },
        })
    }

    /// The state before `pdu` when some prev events are not held with a state (spec: the
    /// resolution of the states after each prev event; issue 16, defect 7). Each prev event
    /// contributes the state after it:
    /// - held with a state group (a timeline or soft-failed event): that group, as usual;
    /// - rejected: the state *before* it (as Synapse, whose state group for a rejected event is
    ///   the one before it), from its own prev events when we hold them with a state, otherwise
    ///   the origin's `/state_ids` at it;
    /// - missing, or an outlier whose state we do not know: the origin's `/state_ids` at it
    ///   (the state before it) plus the event itself, fetched with `/event` as an outlier.
    ///
    /// Only what is missing is asked: the states of the prevs we hold stay ours, so a state
    /// event of our own branch is not lost when the origin's view of it differs.
    async fn state_before_with_gaps(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<StateIds> {
        let ids: Vec<String> = pdu.fields.prev_events.iter().map(|e| e.to_string()).collect();
        let held: HashMap<String, StoredEvent> =
            self.db.get_events(&ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e)).collect();
        let mut states: Vec<StateIds> = Vec::new();
        for id in &ids {
            let state = match held.get(id) {
                Some(StoredEvent { pdu, state_group: Some(group), .. }) if !pdu.rejected => {
                    (*self.state_at_group(*group).await?).clone()
                }
                Some(e) if e.pdu.rejected => match self.prev_groups(&e.pdu).await? {
                    Some(groups) => {
                        let mut prev_states = Vec::new();
                        for g in groups {
                            prev_states.push((*self.state_at_group(g).await?).clone());
                        }
                        self.resolve_states(rules, prev_states).await?
                    }
                    None => self.fetch_state_at(origin, rules, &pdu.room_id, id).await?,
                },
                _ => {
                    let mut state = self.fetch_state_at(origin, rules, &pdu.room_id, id).await?;
                    self.fetch_events_as_outliers(origin, rules, &pdu.room_id, std::slice::from_ref(id)).await?;
                    let prev = self
                        .db
                        .get_event(id)
                        .await?
                        .ok_or_else(|| Error::forbidden(format!("{origin} did not serve prev event {id}")))?;
                    // The prev itself enters the state only if the state before it allows it:
                    // a prev that fails the auth rules counts as rejected (the state before it),
                    // so that a peer cannot slip a forbidden state event in through a gap.
                    if let Some(k) = prev.pdu.fields.state_key.as_ref().filter(|_| !prev.pdu.rejected) {
                        let by_key = self.state_pdus(&state).await?;
                        match ruma::state_res::check_state_dependent_auth_rules(
                            &rules.authorization,
                            &prev.pdu,
                            |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
                        ) {
                            Ok(()) => {
                                state.insert((prev.pdu.fields.kind.to_string(), k.clone()), id.clone());
                            }
                            Err(e) => {
                                tracing::info!(event_id = %id, error = %e, "missing prev event fails auth against the state before it; counted as rejected");
                            }
                        }
                    }
                    state
                }
            };
            if !states.contains(&state) {
                states.push(state);
            }
        }
        if states.len() == 1 {
            return Ok(states.pop().unwrap_or_default());
        }
        self.resolve_states(rules, states).await
    }

    /// State groups of all prev events, or None if one is missing or has no state.
    pub(in crate::rooms) async fn prev_groups(&self, pdu: &Pdu) -> Result<Option<Vec<i64>>> {
        let ids: Vec<String> = pdu.fields.prev_events.iter().map(|e| e.to_string()).collect();
        let evs = self.db.get_events(&ids).await?;
        let mut groups = Vec::new();
        for id in &ids {
            match evs.iter().find(|e| e.pdu.event_id.as_str() == id) {
                // Timeline events, and soft-failed ones (outliers with a state group).
                Some(e) if !e.pdu.rejected && e.state_group.is_some() => groups.push(e.state_group.unwrap_or_default()),
                Some(e) if e.pdu.rejected && !e.outlier && e.state_group.is_none() => {
                    // A rejected prev: use the state before it is not known; skip it.
                }
                _ => return Ok(None),
            }
        }
        groups.sort();
        groups.dedup();
        if groups.is_empty() {
            return Ok(None);
        }
        Ok(Some(groups))
    }

    /// A state received from another server (a `send_join` answer, `/state_ids`) without the
    /// events that failed the auth rules ([`Rooms::store_outliers`] stored them as rejected):
    /// such an entry falls back to the event of the same type and state key among the rejected
    /// event's auth events (the one it claimed to replace, e.g. the previous power levels), if
    /// that one was accepted, and is dropped otherwise. The events must be stored.
    pub(in crate::rooms) async fn without_rejected(&self, state: StateIds) -> Result<StateIds> {
        let ids: Vec<String> = state.values().cloned().collect();
        let rejected: Vec<Pdu> =
            self.db.get_events(&ids).await?.into_iter().map(|e| e.pdu).filter(|p| p.rejected).collect();
        let mut state = state;
        for bad in rejected {
            let Some(k) = bad.fields.state_key.clone() else { continue };
            let key = (bad.fields.kind.to_string(), k);
            state.remove(&key);
            let mut current = bad;
            // Walk back through same-key auth events while they are rejected too (bounded:
            // auth events are older, and a hostile loop in v1/v2 ids stops at a visited one).
            let mut visited = HashSet::new();
            while visited.insert(current.event_id.to_string()) {
                let auth: Vec<String> = current.fields.auth_events.iter().map(|a| a.to_string()).collect();
                let Some(prev) = self.db.get_events(&auth).await?.into_iter().map(|e| e.pdu).find(|p| {
                    p.fields.kind.to_string() == key.0 && p.fields.state_key.as_deref() == Some(key.1.as_str())
                }) else {
                    break;
                };
                if !prev.rejected {
                    state.insert(key.clone(), prev.event_id.to_string());
                    break;
                }
                current = prev;
            }
        }
        Ok(state)
    }

    /// Resolves several states with the room version's state resolution algorithm.
    pub async fn resolve_states(&self, rules: &RoomVersionRules, states: Vec<StateIds>) -> Result<StateIds> {
        self.resolve_states_with(rules, states, None).await
    }

    /// Same, with one event that is not stored yet.
    async fn resolve_states_with(
        &self,
        rules: &RoomVersionRules,
        states: Vec<StateIds>,
        pending: Option<&Pdu>,
    ) -> Result<StateIds> {
        if states.windows(2).all(|w| w[0] == w[1]) {
            return Ok(states.into_iter().next().unwrap_or_default());
        }
        // Load every event of every state and its full auth chain.
        let mut loaded: HashMap<String, Pdu> = HashMap::new();
        if let Some(p) = pending {
            loaded.insert(p.event_id.to_string(), p.clone());
        }
        let mut chains = Vec::new();
        for state in &states {
            let mut chain: HashSet<String> = HashSet::new();
            let mut frontier: Vec<String> = state.values().cloned().collect();
            while !frontier.is_empty() {
                let missing: Vec<String> = frontier.iter().filter(|id| !loaded.contains_key(*id)).cloned().collect();
                for ev in self.db.get_events(&missing).await? {
                    loaded.insert(ev.pdu.event_id.to_string(), ev.pdu);
                }
                let mut next = Vec::new();
                for id in frontier {
                    let Some(p) = loaded.get(&id) else { continue };
                    for a in &p.fields.auth_events {
                        if chain.insert(a.to_string()) {
                            next.push(a.to_string());
                        }
                    }
                }
                frontier = next;
            }
            chains.push(chain);
        }
        let events: HashMap<OwnedEventId, Pdu> = loaded.into_values().map(|p| (p.event_id.clone(), p)).collect();
        let auth_chains: Vec<_> = chains
            .into_iter()
            .map(|c| c.into_iter().filter_map(|id| EventId::parse(id.as_str()).ok()).collect())
            .collect();
        let maps: Vec<StateMap<OwnedEventId>> = states
            .iter()
            .map(|s| {
                s.iter()
                    .filter_map(|((t, k), id)| {
                        EventId::parse(id.as_str()).ok().map(|e| ((StateEventType::from(t.as_str()), k.clone()), e))
                    })
                    .collect()
            })
            .collect();
        let fetch = |id: &EventId| events.get(id).cloned();
        let subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| {
            // Events on auth paths between conflicted events (room version 12).
            let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            let mut memo: HashMap<OwnedEventId, bool> = HashMap::new();
            fn reaches(
                id: &OwnedEventId,
                targets: &HashSet<OwnedEventId>,
                events: &HashMap<OwnedEventId, Pdu>,
                memo: &mut HashMap<OwnedEventId, bool>,
                top: bool,
            ) -> bool {
                if !top && targets.contains(id) {
                    return true;
                }
                if let Some(r) = memo.get(id) {
                    return *r;
                }
                memo.insert(id.clone(), false);
                let mut r = false;
                if let Some(p) = events.get(id) {
                    for a in &p.fields.auth_events {
                        if reaches(a, targets, events, memo, false) {
                            r = true;
                        }
                    }
                }
                if !top {
                    memo.insert(id.clone(), r);
                }
                r
            }
            let mut out: HashSet<OwnedEventId> = HashSet::new();
            for t in &targets {
                out.insert(t.clone());
                // Walk the ancestors of t; keep those that reach another conflicted event.
                let mut stack = vec![t.clone()];
                let mut visited = HashSet::new();
                while let Some(id) = stack.pop() {
                    if !visited.insert(id.clone()) {
                        continue;
                    }
                    if let Some(p) = events.get(&id) {
                        for a in &p.fields.auth_events {
                            if reaches(a, &targets, &events, &mut memo, false) {
                                out.insert(a.clone());
                            }
                            stack.push(a.clone());
                        }
                    }
                }
            }
            Some(out.into_iter().collect())
        };
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            rules.state_res.v2_rules().unwrap_or(&ruma::room_version_rules::StateResolutionV2Rules::V2_0),
            maps.iter(),
            auth_chains,
            fetch,
            subgraph,
        )
        .map_err(|e| Error::internal(format!("state resolution: {e}")))?;
        Ok(resolved.into_iter().map(|((t, k), id)| ((t.to_string(), k), id.to_string())).collect())
    }

    /// The resolution of the states after the forward extremities `others` and `new_state`
    /// (the state after `pending`, the event being persisted). Extremities sharing a state
    /// (the common case: one fork that sent a message) count once; when all share it, there is
    /// nothing to resolve.
    pub(super) async fn state_at_extremities(
        &self,
        rules: &RoomVersionRules,
        others: &[String],
        new_state: &StateIds,
        pending: &Pdu,
    ) -> Result<StateIds> {
        let mut groups: Vec<i64> =
            self.db.get_events(others).await?.into_iter().filter_map(|e| e.state_group).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut states = vec![new_state.clone()];
        for g in groups {
            let state = self.state_at_group(g).await?;
            if !states.contains(&state) {
                states.push((*state).clone());
            }
        }
        if states.len() == 1 {
            return Ok(new_state.clone());
        }
        self.resolve_states_with(rules, states, Some(pending)).await
    }

    /// Writes the difference between two current states into `current_state` and memberships.
    pub(super) async fn apply_current_state(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        old: &StateIds,
        new: &StateIds,
        stream: i64,
        pending: &Pdu,
    ) -> Result<()> {
        let changed: Vec<(&(String, String), &String)> = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).collect();
        let ids: Vec<String> = changed.iter().map(|(_, v)| (*v).clone()).collect();
        let mut evs: HashMap<String, Pdu> =
            self.db.get_events(&ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        evs.insert(pending.event_id.to_string(), pending.clone());
        for ((t, k), id) in changed {
            self.db.set_current_state(tx, room_id, t, k, id).await?;
            if t == "m.room.member" {
                let membership = evs
                    .get(id)
                    .and_then(|p| p.content()["membership"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "leave".to_owned());
                self.db.set_membership(tx, room_id, k, &membership, id, stream).await?;
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            self.db.delete_current_state(tx, room_id, &k.0, &k.1).await?;
        }
        Ok(())
    }

    /// The state before a stored event (`/state_ids`, `/state`).
    ///
    /// An event held with a state group (the state after it) gets that state with its own entry
    /// put back to what it replaced (`unsigned.replaces_state`, written with every state event
    /// we accept; as Synapse's `get_state_ids_for_pdu`). This is the state it was accepted
    /// against, also when its prev events are outliers or unknown (a gap bridged with the
    /// origin's state): recomputing it from the prevs' states answered a partial or empty
    /// state then (issue 16, defect 8). An event without a state group gets the resolution of
    /// its prev events' states when all of them have one; otherwise its state is not known
    /// (404), never partial.
    pub async fn state_before_event(&self, pdu: &Pdu) -> Result<StateIds> {
        let stored = self.db.get_event(pdu.event_id.as_str()).await?;
        if let Some(ev) = stored.as_ref().filter(|e| !e.pdu.rejected)
            && let Some(group) = ev.state_group
        {
            let mut state = (*self.state_at_group(group).await?).clone();
            if let Some(k) = &pdu.fields.state_key {
                let key = (pdu.fields.kind.to_string(), k.clone());
                if state.get(&key).map(String::as_str) == Some(pdu.event_id.as_str()) {
                    match ev.unsigned.as_ref().and_then(|u| u["replaces_state"].as_str()) {
                        Some(replaced) => state.insert(key, replaced.to_owned()),
                        None => state.remove(&key),
                    };
                }
            }
            return Ok(state);
        }
        let (_, rules) = self.room_rules(&pdu.room_id).await?;
        let groups =
            self.prev_groups(pdu).await?.ok_or_else(|| Error::not_found("The state at this event is not known"))?;
        let mut states = Vec::new();
        for g in groups {
            states.push((*self.state_at_group(g).await?).clone());
        }
        self.resolve_states(&rules, states).await
    }
}
