//! Backfill: history older than what this server holds, fetched from other servers when a
//! local client pages backwards with `/messages`.
//!
//! A *gap* is a prev event of a timeline event that is not itself in the timeline: the events
//! before our join (whose state we got as outliers), or a hole that `get_missing_events` could
//! not close. A backward page reports the gaps behind the events it scanned; the engine asks a
//! resident server for `GET /backfill` from them, checks every returned PDU like an incoming
//! one (format, signatures, content hash, auth against its auth events and against the state
//! before it) and stores the accepted ones as *historical* events:
//!
//! - in the timeline (`outlier = 0`) with a state group, so history visibility applies;
//! - with negative stream positions, so that no `/sync` range (always `> since >= 0`) contains
//!   them: they are history, not news. Within one batch positions grow with the topological
//!   order, and older batches get lower positions;
//! - without touching forward extremities, the current state or memberships.
//!
//! Their depth puts them before the events that reference them in the room's one order
//! `(depth, stream)` that `/messages` reads. Events we held as outliers are promoted in place,
//! events already in the timeline are skipped, so a page never shows an event twice.
//! Gaps that a server could not fill are retried with a growing delay (in memory).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{OwnedServerName, RoomId, RoomVersionId, ServerName};

use super::Rooms;
use super::build::RoomCtx;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::storage::Db;
use crate::storage::rooms::StateIds;

/// Events asked for per `/backfill` request (Synapse asks for 100 too).
const BACKFILL_LIMIT: usize = 100;
/// Gap events named in one request.
const MAX_GAPS_PER_REQUEST: usize = 20;
/// Servers tried for one backfill.
const MAX_SERVERS: usize = 5;

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Retry delays of gaps that could not be filled: gap event id → (failed attempts, retry after).
#[derive(Default)]
pub struct BackfillBackoff(std::sync::Mutex<HashMap<String, (u32, Instant)>>);

impl BackfillBackoff {
    fn ready(&self, id: &str, now: Instant) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).is_none_or(|(_, until)| *until <= now)
    }

    fn failed(&self, id: &str, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, until)| *until > now);
        }
        let entry = map.entry(id.to_owned()).or_insert((0, now));
        entry.0 += 1;
        let delay = Duration::from_secs(2u64.saturating_mul(1 << entry.0.min(9))).min(Duration::from_secs(600));
        entry.1 = now + delay;
    }

    fn filled(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

impl Rooms {
    /// The gaps behind scanned timeline events that are worth a backfill now: `(gap, child)`.
    /// `scanned` holds the `(prev event, event)` edges of the events a page scanned; a prev
    /// event that was itself scanned is held, so only the edges leaving the scanned run (most
    /// often one: behind the oldest event) are looked up.
    pub(super) async fn backfill_gaps(&self, scanned: &[(String, String)]) -> Result<Vec<(String, String)>> {
        if self.federation().is_none() || scanned.is_empty() {
            return Ok(Vec::new());
        }
        let seen: HashSet<&str> = scanned.iter().map(|(_, child)| child.as_str()).collect();
        let leaving: Vec<(String, String)> =
            scanned.iter().filter(|(prev, _)| !seen.contains(prev.as_str())).cloned().collect();
        if leaving.is_empty() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut gaps = self.db.missing_prevs(&leaving).await?;
        gaps.retain(|(gap, _)| self.backfill_backoff.ready(gap, now));
        Ok(gaps)
    }

    /// Fills gaps of a room from other servers; returns whether any event was added.
    /// Failures are logged, not returned: a page is answered with what we hold.
    pub(super) async fn backfill(&self, room_id: &RoomId, gaps: &[(String, String)]) -> bool {
        match self.backfill_inner(room_id, gaps).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::info!(%room_id, error = %e.message, "backfill failed");
                false
            }
        }
    }

    async fn backfill_inner(&self, room_id: &RoomId, gaps: &[(String, String)]) -> Result<usize> {
        let fed = self.fed_handle()?;
        let started = Instant::now();
        let mut ids: Vec<String> = Vec::new();
        for (gap, _) in gaps {
            if !ids.contains(gap) && ids.len() < MAX_GAPS_PER_REQUEST {
                ids.push(gap.clone());
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let (version, rules) = self.room_rules(room_id).await?;
        // Servers that sent the events behind the gaps held their prev events; then the room's
        // creator server and the other servers in the room.
        let children: Vec<String> = gaps.iter().map(|g| g.1.clone()).collect();
        let mut candidates: Vec<OwnedServerName> = self
            .db
            .get_events(&children)
            .await?
            .into_iter()
            .map(|e| e.pdu.fields.sender.server_name().to_owned())
            .collect();
        if let Some(s) = room_id.server_name() {
            candidates.push(s.to_owned());
        }
        for s in self.remote_destinations(room_id.as_str()).await? {
            if let Ok(s) = ServerName::parse(&s) {
                candidates.push(s);
            }
        }
        let mut seen = HashSet::new();
        candidates.retain(|s| *s != self.server_name && seen.insert(s.clone()));
        let mut added = 0;
        for server in candidates.into_iter().take(MAX_SERVERS) {
            if !self.server_allowed(room_id, &server).await? {
                continue;
            }
            match self.backfill_from(&fed, &server, &version, &rules, room_id, &ids).await {
                Ok(0) => {}
                Ok(n) => {
                    added = n;
                    tracing::info!(%room_id, %server, events = n, ms = started.elapsed().as_millis() as u64, "backfilled");
                    break;
                }
                Err(e) => tracing::info!(%room_id, %server, error = %e.message, "backfill from server failed"),
            }
        }
        let now = Instant::now();
        let held: HashSet<String> = self
            .db
            .get_events(&ids)
            .await?
            .into_iter()
            .filter(|e| !e.outlier || e.pdu.rejected || e.is_soft_failed())
            .map(|e| e.pdu.event_id.to_string())
            .collect();
        for id in &ids {
            if held.contains(id) {
                self.backfill_backoff.filled(id);
            } else {
                self.backfill_backoff.failed(id, now);
            }
        }
        Ok(added)
    }

    fn fed_handle(&self) -> Result<Arc<crate::federation::Federation>> {
        self.federation().cloned().ok_or_else(|| Error::forbidden("Federation is disabled on this server"))
    }

    /// One `/backfill` request to `server`, then the checks and storage of what it returned;
    /// returns how many events entered the timeline.
    async fn backfill_from(
        &self,
        fed: &crate::federation::Federation,
        server: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        ids: &[String],
    ) -> Result<usize> {
        let vs: Vec<String> = ids.iter().map(|id| format!("v={}", enc(id))).collect();
        let path = format!(
            "/_matrix/federation/v1/backfill/{}?{}&limit={BACKFILL_LIMIT}",
            enc(room_id.as_str()),
            vs.join("&")
        );
        let answer = fed.request(server, http::Method::GET, &path, None).await?;
        let mut pdus = Vec::new();
        for v in answer["pdus"].as_array().cloned().unwrap_or_default().into_iter().take(BACKFILL_LIMIT * 2) {
            match self.verify_pdu(rules, v, Some(room_id)).await {
                Ok(p) => pdus.push(p),
                Err(e) => tracing::info!(%server, error = %e.message, "backfilled event failed verification"),
            }
        }
        // Oldest first: an event's prev events (depth - 1 or less) are stored before it.
        pdus.sort_by(|a, b| (a.fields.depth, &a.event_id).cmp(&(b.fields.depth, &b.event_id)));
        pdus.dedup_by(|a, b| a.event_id == b.event_id);

        let _guard = self.room_lock(room_id.as_str()).await;
        let ids: Vec<String> = pdus.iter().map(|p| p.event_id.to_string()).collect();
        let known: HashMap<String, bool> = self
            .db
            .get_events(&ids)
            .await?
            .into_iter()
            .map(|e| (e.pdu.event_id.to_string(), e.outlier && !e.pdu.rejected && !e.is_soft_failed()))
            .collect();
        // New events, and outliers to promote (`true`); soft-failed events stay out of the
        // timeline.
        let todo: Vec<(Pdu, bool)> = pdus
            .into_iter()
            .filter_map(|p| match known.get(p.event_id.as_str()) {
                None => Some((p, false)),
                Some(true) => Some((p, true)),
                Some(false) => None,
            })
            .collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let positions = {
            let mut tx = self.db.begin_write().await?;
            Db::reserve_stream_positions(&mut tx, "outliers", todo.len() as i64).await?;
            let mut positions = Vec::with_capacity(todo.len());
            for _ in 0..todo.len() {
                positions.push(Db::next_stream_position(&mut tx, "outliers").await?);
            }
            tx.commit().await?;
            positions
        };
        let mut added = Vec::new();
        // The newest event of the batch gets the highest (least negative) position.
        for ((pdu, promote), pos) in todo.into_iter().zip(positions.into_iter().rev()) {
            let id = pdu.event_id.clone();
            match self.accept_backfilled(server, version, rules, &pdu, -pos, promote).await {
                Ok(()) => added.push(pdu),
                Err(e) => tracing::info!(event_id = %id, error = %e.message, "backfilled event not accepted"),
            }
        }
        Ok(added.len())
    }

    /// The checks of one backfilled PDU, then its storage as a historical event.
    async fn accept_backfilled(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        stream: i64,
        promote: bool,
    ) -> Result<()> {
        self.check_auth_events(origin, rules, pdu).await?;
        // The oldest events of a batch have no known prev events: their state is fetched.
        let prev_groups = self.prev_groups(pdu).await?;
        let (state_before, before_group) = self.state_before(origin, rules, pdu, prev_groups).await?;
        let by_key = self.state_pdus(&state_before).await?;
        if let Err(e) = ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            pdu,
            |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
        ) {
            tracing::info!(event_id = %pdu.event_id, error = %e, "rejecting backfilled event: fails auth against the state before it");
            self.persist_rejected(pdu).await?;
            return Err(Error::forbidden(format!("Event fails auth: {e}")));
        }
        let state_after = super::state::state_after(&state_before, pdu);
        let unsigned = self.replaces_state(pdu, &state_before, &HashMap::new()).await?;
        let (group_after, chain_after) = Db::while_holding_write_lock(async {
            let mut tx = self.db.begin_write().await?;
            let (group, chain) = self.write_state_after(&mut tx, pdu, before_group, &state_after).await?;
            self.db.put_timeline_event(&mut tx, pdu, stream, group, unsigned.as_ref(), promote).await?;
            let mut ctx = self.redaction_ctx(version, rules, pdu);
            if pdu.fields.kind == TimelineEventType::RoomRedaction
                && let Some(target) = &pdu.redacts_target
            {
                self.apply_redaction(&mut tx, &ctx, pdu, target).await?;
            }
            // Redactions received before this (older) event apply now, if the rules allow.
            ctx.written.insert(pdu.event_id.to_string(), pdu.clone());
            self.apply_held_redactions(&mut tx, &ctx, pdu).await?;
            tx.commit().await?;
            Ok::<_, Error>((group, chain))
        })
        .await?;
        self.state_cache.insert(group_after, Arc::new(state_after), chain_after);
        Ok(())
    }

    fn redaction_ctx(&self, version: &RoomVersionId, rules: &RoomVersionRules, pdu: &Pdu) -> RoomCtx {
        RoomCtx {
            room_id: Some(pdu.room_id.clone()),
            version: version.clone(),
            rules: rules.clone(),
            state: Arc::new(StateIds::new()),
            state_group: None,
            chain_length: 0,
            extremities: Vec::new(),
            depth: pdu.fields.depth,
            written: HashMap::new(),
            is_new: false,
        }
    }
}
