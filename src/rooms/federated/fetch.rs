//! What we fetch from other servers to process an event: missing prev events
//! (`get_missing_events`), auth chains (`event_auth`), the state at an event (`state_ids`),
//! and storing fetched events as outliers.

use std::collections::{HashMap, HashSet};

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{EventId, RoomId, RoomVersionId, ServerName};
use serde_json::json;

use super::enc;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::rooms::Rooms;
use crate::storage::Db;
use crate::storage::rooms::{NewEventRow, StateIds};

impl Rooms {
    /// Fetches the events between our forward extremities and `pdu` with `get_missing_events`
    /// and processes them oldest first.
    pub(super) async fn fetch_missing_prevs(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) {
        let Ok(fed) = self.fed() else { return };
        let earliest: Vec<String> = match self.db.pool_extremities(pdu.room_id.as_str()).await {
            Ok(e) => e,
            Err(_) => return,
        };
        let body = json!({
            "earliest_events": earliest,
            "latest_events": [pdu.event_id],
            "limit": 50,
            "min_depth": 0,
        });
        let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(pdu.room_id.as_str()));
        let answer = match fed.request(origin, http::Method::POST, &path, Some(&body)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%origin, error = %e.message, "get_missing_events failed");
                return;
            }
        };
        let mut events = Vec::new();
        for v in answer["events"].as_array().cloned().unwrap_or_default() {
            match self.verify_pdu(rules, v, Some(&pdu.room_id)).await {
                Ok(p) => events.push(p),
                Err(e) => tracing::info!(error = %e.message, "missing event failed verification"),
            }
        }
        events.sort_by_key(|p| p.fields.depth);
        for ev in events {
            if ev.event_id == pdu.event_id {
                continue;
            }
            let id = ev.event_id.clone();
            if let Err(e) = Box::pin(self.process_pdu(origin, version, rules, ev, false, None)).await {
                tracing::info!(event_id = %id, error = %e.message, "missing event not accepted");
            }
        }
    }

    /// The state before `pdu` as the origin reports it (`state_ids` + `event`), for gaps that
    /// `get_missing_events` could not close.
    pub(in crate::rooms) async fn fetch_state_before(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<StateIds> {
        self.fetch_state_at(origin, rules, &pdu.room_id, pdu.event_id.as_str()).await
    }

    /// The state before event `event_id` as the origin reports it (`state_ids` + `event`), its
    /// events we lack stored as outliers.
    pub(super) async fn fetch_state_at(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        event_id: &str,
    ) -> Result<StateIds> {
        let fed = self.fed()?;
        let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(room_id.as_str()), enc(event_id));
        let answer = fed.request(origin, http::Method::GET, &path, None).await?;
        let mut ids: Vec<String> =
            answer["pdu_ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        let auth_ids: Vec<String> = answer["auth_chain_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let state_ids = ids.clone();
        ids.extend(auth_ids);
        self.fetch_events_as_outliers(origin, rules, room_id, &ids).await?;
        let mut state = StateIds::new();
        for ev in self.db.get_events(&state_ids).await? {
            if let Some(k) = &ev.pdu.fields.state_key {
                state.insert((ev.pdu.fields.kind.to_string(), k.clone()), ev.pdu.event_id.to_string());
            }
        }
        self.without_rejected(state).await
    }

    /// Fetches the listed events we lack from `origin` with `GET /event` and stores them as outliers.
    pub(super) async fn fetch_events_as_outliers(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        ids: &[String],
    ) -> Result<()> {
        let fed = self.fed()?;
        let have: HashSet<String> =
            self.db.get_events(ids).await?.into_iter().map(|e| e.pdu.event_id.to_string()).collect();
        let mut fetched = Vec::new();
        for id in ids.iter().filter(|i| !have.contains(*i)) {
            let path = format!("/_matrix/federation/v1/event/{}", enc(id));
            let answer = fed.request(origin, http::Method::GET, &path, None).await?;
            let Some(v) = answer["pdus"].as_array().and_then(|a| a.first()).cloned() else { continue };
            let p = self.verify_pdu(rules, v, Some(room_id)).await?;
            if p.event_id.as_str() != id {
                return Err(Error::forbidden(format!("{origin} served a different event for {id}")));
            }
            fetched.push(p);
        }
        self.store_outliers(fetched).await
    }

    /// Makes sure every auth event of `pdu` is stored, fetching the auth chain from `origin`.
    pub(in crate::rooms) async fn ensure_auth_events(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<()> {
        let ids: Vec<String> = pdu.fields.auth_events.iter().map(|e| e.to_string()).collect();
        let have = self.db.get_events(&ids).await?;
        if have.len() == ids.len() {
            return Ok(());
        }
        let fed = self.fed()?;
        let path =
            format!("/_matrix/federation/v1/event_auth/{}/{}", enc(pdu.room_id.as_str()), enc(pdu.event_id.as_str()));
        let answer = fed.request(origin, http::Method::GET, &path, None).await?;
        let mut chain = Vec::new();
        for v in answer["auth_chain"].as_array().cloned().unwrap_or_default() {
            chain.push(self.verify_pdu(rules, v, Some(&pdu.room_id)).await?);
        }
        self.store_outliers(chain).await?;
        if self.db.get_events(&ids).await?.len() != ids.len() {
            return Err(Error::forbidden("Auth events unavailable"));
        }
        Ok(())
    }

    /// Stores verified events received as a state or an auth chain (a `send_join` answer,
    /// `/state_ids`, `/event_auth`) as outliers, after checking each against the auth rules
    /// (issue 16, defect 6; Synapse's `_auth_and_persist_outliers`): in topological order of
    /// their auth events, an event must pass the state-independent and state-dependent auth
    /// rules against its own `auth_events`, each of them held or in the batch and not rejected.
    /// An event failing them is stored as rejected, so that nothing uses it as state and every
    /// event citing it as an auth event is rejected too. Events already held are kept as they are.
    pub async fn store_outliers(&self, pdus: Vec<Pdu>) -> Result<()> {
        let Some(room_id) = pdus.first().map(|p| p.room_id.clone()) else { return Ok(()) };
        let (_, rules) = self.room_rules(&room_id).await.or_else(|_| {
            // A room we are joining is not known yet: its create event gives the version.
            let create = pdus.iter().find(|p| p.fields.kind == TimelineEventType::RoomCreate);
            let version = create.and_then(|c| c.content()["room_version"].as_str().map(str::to_owned));
            let version = crate::events::version::parse(version.as_deref().unwrap_or("1"))?;
            Ok::<_, Error>((version.clone(), crate::events::version::rules(&version)?))
        })?;
        let batch: HashMap<String, Pdu> = pdus.into_iter().map(|p| (p.event_id.to_string(), p)).collect();
        let mut lookup: Vec<String> = batch.keys().cloned().collect();
        lookup.extend(batch.values().flat_map(|p| p.fields.auth_events.iter().map(|a| a.to_string())));
        if rules.authorization.room_create_event_id_as_room_id {
            // From room version 12 the room id names the create event, which is not an auth event.
            lookup.push(format!("${}", &room_id.as_str()[1..]));
        }
        lookup.sort_unstable();
        lookup.dedup();
        // Held events (accepted or rejected) and the batch's events once judged, by id.
        let mut judged: HashMap<String, Pdu> =
            self.db.get_events(&lookup).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        let create_id =
            rules.authorization.room_create_event_id_as_room_id.then(|| format!("${}", &room_id.as_str()[1..]));
        let mut tx = self.db.begin_write().await?;
        for id in auth_order(&batch) {
            if judged.contains_key(&id) {
                continue;
            }
            let mut pdu = batch[&id].clone();
            let checked =
                ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |e: &EventId| {
                    judged.get(e.as_str()).cloned()
                })
                .and_then(|()| {
                    let mut by_key: HashMap<(String, String), Pdu> = HashMap::new();
                    let auth = pdu.fields.auth_events.iter().map(|a| a.to_string()).chain(create_id.clone());
                    for p in auth.filter_map(|a| judged.get(&a)) {
                        if let Some(k) = &p.fields.state_key {
                            by_key.insert((p.fields.kind.to_string(), k.clone()), p.clone());
                        }
                    }
                    ruma::state_res::check_state_dependent_auth_rules(
                        &rules.authorization,
                        &pdu,
                        |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
                    )
                });
            if let Err(e) = checked {
                tracing::info!(event_id = %id, error = %e, "rejecting state or auth chain event: fails auth against its auth events");
                pdu.rejected = true;
            }
            // Outliers get negative positions so that they never appear in stream ranges.
            let stream = -Db::next_stream_position(&mut tx, "outliers").await?;
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow { pdu: &pdu, stream, unsigned: None, outlier: true, state_group: None },
                )
                .await?;
            judged.insert(id, pdu);
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The events of `batch` in topological order of their auth events (each after the ones it
/// cites), the create event first. A cycle (possible only with the free-form event ids of room versions 1 and 2) is
/// cut where it is found; the auth check then rejects its events for a missing auth event.
fn auth_order(batch: &HashMap<String, Pdu>) -> Vec<String> {
    let mut roots: Vec<&String> = batch.keys().collect();
    // The create event first: from room version 12 it is no event's auth event, yet every
    // event's check needs it.
    roots.sort_by_key(|id| {
        let p = &batch[*id];
        (p.fields.kind != TimelineEventType::RoomCreate, p.fields.depth, (*id).clone())
    });
    let mut entered = HashSet::new();
    let mut order = Vec::with_capacity(batch.len());
    for root in roots {
        let mut stack = vec![(root.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if !entered.insert(id.clone()) {
                continue;
            }
            stack.push((id.clone(), true));
            for a in &batch[&id].fields.auth_events {
                if batch.contains_key(a.as_str()) && !entered.contains(a.as_str()) {
                    stack.push((a.to_string(), false));
                }
            }
        }
    }
    order
}
