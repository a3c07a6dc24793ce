//! Rooms brought over from another homeserver's database (`myelin import-synapse`, src/import):
//! every event stored as it was received (PDU unchanged: ids, hashes and signatures), with the
//! state after each event given by the source and written through Myelin's own state groups
//! ([`Rooms::write_state_group`], deltas on the group of the event's first prev event), so that
//! every reader finds the room as if Myelin had received it event by event. A room is one
//! transaction, its progress mark included: an interrupted import leaves no half room.
//!
//! The importer is a process of its own that runs while no server does, so the state groups it
//! writes go to the state cache before their commit (redactions read the state at the redaction
//! through the cache); a failure ends the process, cache and all.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::RoomVersionId;
use ruma::events::TimelineEventType;

use super::Rooms;
use super::build::RoomCtx;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::storage::rooms::{NewEventRow, StateIds};
use crate::storage::{Db, WriteTx};

/// One event of an imported room.
pub struct ImportEvent {
    /// The PDU as stored by the source.
    pub pdu: Pdu,
    /// Held outside the timeline (auth chains, invites over federation).
    pub outlier: bool,
    /// Accepted but soft-failed: kept out of the timeline and the current state.
    pub soft_failed: bool,
    /// The state after the event, as the source resolved it (None for outliers and rejected
    /// events).
    pub state_after: Option<Arc<StateIds>>,
}

/// A room to import.
pub struct ImportRoom {
    /// Room id.
    pub room_id: String,
    /// Room version.
    pub version: String,
    /// Its events, prev events before the events naming them (the source's topological order).
    pub events: Vec<ImportEvent>,
    /// The current state.
    pub current_state: StateIds,
    /// Forward extremities.
    pub extremities: Vec<String>,
    /// Published in the room directory.
    pub is_public: bool,
}

/// What importing a room wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportedRoom {
    /// Timeline events.
    pub events: u64,
    /// Outliers and rejected events.
    pub outliers: u64,
    /// State groups written.
    pub state_groups: u64,
    /// Redactions that took effect.
    pub redactions: u64,
}

impl Rooms {
    /// Writes `room` in one transaction that also records `progress_item` as done.
    pub async fn import_room(&self, room: ImportRoom, progress_item: &str) -> Result<ImportedRoom> {
        let version = RoomVersionId::try_from(room.version.as_str()).map_err(|e| Error::bad_json(e.to_string()))?;
        let rules = crate::events::version::rules(&version)?;
        Db::while_holding_write_lock(async {
            let mut tx = self.db.begin_write().await?;
            let counts = self.import_room_tx(&mut tx, &room, &version, &rules).await?;
            self.db.import_mark_done(&mut tx, progress_item).await?;
            tx.commit().await?;
            Ok(counts)
        })
        .await
    }

    async fn import_room_tx(
        &self,
        tx: &mut WriteTx,
        room: &ImportRoom,
        version: &RoomVersionId,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<ImportedRoom> {
        let room_id = room.room_id.as_str();
        let mut counts = ImportedRoom::default();
        self.db.insert_room(tx, room_id, version.as_str()).await?;
        // Event, edge and extremity rows go in multi-row statements, positions in one reservation
        // per counter: a room of 100,000 events costs hundreds of statements, not 300,000.
        tx.defer_rows();
        let in_timeline = |e: &&ImportEvent| !e.outlier && !e.pdu.rejected && !e.soft_failed && e.state_after.is_some();
        let timeline = room.events.iter().filter(in_timeline).count() as i64;
        Db::reserve_stream_positions(tx, "events", timeline).await?;
        Db::reserve_stream_positions(tx, "outliers", room.events.len() as i64 - timeline).await?;
        // Targets of redactions are kept at hand: the redactions are applied once every event
        // is written, and the transaction's rows are not visible to the pool's readers.
        let targets: HashSet<&str> = room
            .events
            .iter()
            .filter(|e| e.pdu.fields.kind == TimelineEventType::RoomRedaction)
            .filter_map(|e| e.pdu.redacts_target.as_ref().map(|t| t.as_str()))
            .collect();
        // Per written event: its state group, chain length and state after it.
        let mut groups: HashMap<String, (i64, i64, Arc<StateIds>)> = HashMap::new();
        let mut streams: HashMap<String, i64> = HashMap::new();
        let mut written: HashMap<String, Pdu> = HashMap::new();
        let mut redactions: Vec<(Pdu, Option<i64>)> = Vec::new();
        for ev in &room.events {
            let pdu = &ev.pdu;
            let id = pdu.event_id.to_string();
            let Some(state_after) = ev.state_after.as_ref().filter(|_| !ev.outlier && !pdu.rejected) else {
                let stream = -Db::next_stream_position(tx, "outliers").await?;
                self.db
                    .insert_event(tx, NewEventRow { pdu, stream, unsigned: None, outlier: true, state_group: None })
                    .await?;
                counts.outliers += 1;
                // The state a join over federation brought is outliers, and may be current state
                // (the memberships of users who joined before this server did).
                if pdu.is_state() && !pdu.rejected {
                    written.insert(id.clone(), pdu.clone());
                    streams.insert(id, stream);
                }
                continue;
            };
            let base = pdu.fields.prev_events.iter().find_map(|p| groups.get(p.as_str())).cloned();
            let (group, chain) =
                self.write_state_group(tx, room_id, base.as_ref().map(|(g, c, s)| (*g, *c, &**s)), state_after).await?;
            if base.as_ref().is_none_or(|(g, _, _)| *g != group) {
                counts.state_groups += 1;
                self.state_cache.insert(group, state_after.clone(), chain);
            }
            let before = base.as_ref().map(|(_, _, s)| s.clone()).unwrap_or_default();
            let unsigned = self.replaces_state(pdu, &before, &written).await?;
            let stream = if ev.soft_failed {
                -Db::next_stream_position(tx, "outliers").await?
            } else {
                Db::next_stream_position(tx, "events").await?
            };
            self.db
                .insert_event(
                    tx,
                    NewEventRow {
                        pdu,
                        stream,
                        unsigned: unsigned.as_ref(),
                        outlier: ev.soft_failed,
                        state_group: Some(group),
                    },
                )
                .await?;
            if ev.soft_failed {
                counts.outliers += 1;
                continue;
            }
            counts.events += 1;
            groups.insert(id.clone(), (group, chain, state_after.clone()));
            if pdu.is_state() || targets.contains(id.as_str()) {
                written.insert(id.clone(), pdu.clone());
                streams.insert(id, stream);
            }
            if pdu.fields.kind == TimelineEventType::RoomRedaction {
                redactions.push((pdu.clone(), Some(group)));
            }
        }

        // The current state: its entries, its group (on the group of an extremity), memberships.
        let current = &room.current_state;
        for ((t, k), id) in current {
            self.db.set_current_state(tx, room_id, t, k, id).await?;
            if t == "m.room.member"
                && let Some(pdu) = written.get(id)
            {
                let membership = pdu.content()["membership"].as_str().unwrap_or("leave").to_owned();
                let stream = streams.get(id).copied().unwrap_or(0);
                self.db.set_membership(tx, room_id, k, &membership, id, stream).await?;
            }
        }
        let base = room.extremities.iter().find_map(|e| groups.get(e)).cloned();
        let (group, chain) =
            self.write_state_group(tx, room_id, base.as_ref().map(|(g, c, s)| (*g, *c, &**s)), current).await?;
        if base.as_ref().is_none_or(|(g, _, _)| *g != group) {
            counts.state_groups += 1;
            self.state_cache.insert(group, Arc::new(current.clone()), chain);
        }
        self.db.set_room_state_group(tx, room_id, group).await?;
        for e in &room.extremities {
            self.db.update_extremities(tx, room_id, &[], e).await?;
        }
        if room.is_public {
            self.db.publish_room_in(tx, room_id).await?;
        }

        // Redactions rewrite their targets' rows: those must be written first.
        self.db.import_flush(tx).await?;
        for (redaction, group) in redactions {
            let Some(target) = redaction.redacts_target.clone() else { continue };
            let Some(target_pdu) = written.get(target.as_str()) else { continue };
            let mut ctx = RoomCtx {
                room_id: Some(redaction.room_id.clone()),
                version: version.clone(),
                rules: rules.clone(),
                state: Arc::new(StateIds::new()),
                state_group: group,
                chain_length: 0,
                extremities: Vec::new(),
                depth: redaction.fields.depth,
                written: HashMap::new(),
                is_new: false,
            };
            ctx.written.insert(target.to_string(), target_pdu.clone());
            // Applied (and counted) only where the redaction rules let it take effect.
            if self.redaction_takes_effect(&ctx, &redaction, target_pdu).await? {
                self.apply_redaction(tx, &ctx, &redaction, &target).await?;
                counts.redactions += 1;
            }
        }
        Ok(counts)
    }
}
