//! Policy servers (spec v1.18, server-server "Policy Servers"), as a room member: a room whose
//! state has a valid `m.room.policy` (`via`, `public_keys.ed25519`) whose `via` server has a
//! joined member uses that server to vet events.
//!
//! - **Local events.** Before an event of ours enters such a room, the policy server is asked
//!   to sign it (`POST /_matrix/policy/v1/sign`, X-Matrix signed, the whole PDU); its
//!   `ed25519:policy_server` signature is checked against the room's key and added to the
//!   event's signatures (the event id, a hash without signatures, does not change). A refusal
//!   (4xx) is 403 `M_FORBIDDEN` for the client; a policy server that cannot be reached or signs
//!   wrongly is 502, and nothing is stored. The `m.room.policy` state event with an empty state
//!   key itself is never sent to it (the spec's MUST NOT).
//!
//!   The event writer (`writer.rs`) builds and commits batches of every room in one
//!   transaction, so it must not wait for a remote server: a job for a room whose current state
//!   holds `m.room.policy` is handed back ([`POLICY_NEEDED`]), and [`Rooms::send_with_policy`]
//!   builds the event outside the writer, asks the policy server, and persists it like
//!   `invite_remote` does, only if the room's forward extremities did not move in between
//!   (otherwise it builds and asks again), so every local event still extends all extremities.
//!   Rooms without `m.room.policy` pay one map lookup in the writer.
//! - **Received events** (`inbound.rs`): an event without a valid signature of the room's
//!   policy server (ruma's `verify_policy_server_signature`) is soft-failed: kept, served to
//!   servers, never shown to clients, as Synapse treats events its policy server calls spam.
//!
//! Not done: acting as a policy server (`/.well-known/matrix/policy_server`,
//! `/_matrix/policy/v1/sign` answer 404 `M_UNRECOGNIZED`); a room whose `via` is this server
//! (events are sent unsigned then).

use std::collections::HashMap;

use ruma::events::room::policy::{POLICY_SERVER_ED25519_SIGNING_KEY_ID, RoomPolicyEventContent};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId};

use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::rooms::build::{NewEvent, RoomCtx};
use crate::rooms::{Origin, Rooms};
use crate::storage::Db;

/// The errcode of the writer's refusal that sends a job to [`Rooms::send_with_policy`]; never
/// shown to clients.
pub const POLICY_NEEDED: &str = "M_MYELIN_POLICY_SERVER_NEEDED";

/// How often an event is built and signed again when the room moved while the policy server
/// was asked.
const ATTEMPTS: usize = 5;

/// The writer's hand-back of a job for a room with a policy server.
pub fn policy_needed() -> Error {
    Error::new(http::StatusCode::CONFLICT, POLICY_NEEDED, "The room's policy server must sign this event")
}

/// Whether the writer must hand `ev` back: the room's state names a policy server and `ev` is
/// not the `m.room.policy` state event itself.
pub fn writer_defers(ctx: &RoomCtx, ev: &NewEvent) -> bool {
    !(ev.kind == "m.room.policy" && ev.state_key.as_deref() == Some(""))
        && ctx.state.contains_key(&("m.room.policy".to_owned(), String::new()))
}

/// The room's policy server if the state enables one: a valid `m.room.policy` whose `via` has a
/// joined member (`members`: the room's member events by state key).
pub fn enabled_policy<'a>(
    policy: Option<&Pdu>,
    members: impl Iterator<Item = (&'a str, &'a Pdu)>,
) -> Option<RoomPolicyEventContent> {
    let content: RoomPolicyEventContent = serde_json::from_value(policy?.content()).ok()?;
    if !content.public_keys.contains_key(&ruma::SigningKeyAlgorithm::Ed25519) {
        return None;
    }
    let suffix = format!(":{}", content.via);
    let joined = members.filter(|(k, _)| k.ends_with(&suffix)).any(|(_, p)| p.content()["membership"] == "join");
    joined.then_some(content)
}

/// Whether `pdu` carries a valid signature of the policy server `policy`.
pub fn policy_signed(policy: &RoomPolicyEventContent, pdu: &Pdu, rules: &RoomVersionRules) -> bool {
    ruma::signatures::verify_policy_server_signature(policy, pdu.json(), rules).is_ok()
}

/// The enabled policy server of a state given as PDUs by `(type, state_key)`.
pub fn enabled_policy_in(state: &HashMap<(String, String), Pdu>) -> Option<RoomPolicyEventContent> {
    let policy = state.get(&("m.room.policy".to_owned(), String::new()));
    policy?;
    let members = state.iter().filter(|((t, _), _)| t == "m.room.member").map(|((_, k), p)| (k.as_str(), p));
    enabled_policy(policy, members)
}

impl Rooms {
    /// The enabled policy server of the room as `ctx` holds it.
    async fn enabled_policy_of(&self, ctx: &RoomCtx) -> Result<Option<RoomPolicyEventContent>> {
        let Some(id) = ctx.state.get(&("m.room.policy".to_owned(), String::new())) else { return Ok(None) };
        let Some(via) = self.pdus_for(ctx, std::slice::from_ref(id)).await?.remove(id).and_then(|p| {
            serde_json::from_value::<RoomPolicyEventContent>(p.content()).ok().map(|c| (c.via.clone(), p))
        }) else {
            return Ok(None);
        };
        let suffix = format!(":{}", via.0);
        let ids: Vec<String> = ctx
            .state
            .iter()
            .filter(|((t, k), _)| t == "m.room.member" && k.ends_with(&suffix))
            .map(|(_, id)| id.clone())
            .collect();
        let members = self.pdus_for(ctx, &ids).await?;
        let keyed: Vec<(String, Pdu)> =
            members.into_values().filter_map(|p| p.fields.state_key.clone().map(|k| (k, p))).collect();
        Ok(enabled_policy(Some(&via.1), keyed.iter().map(|(k, p)| (k.as_str(), p))))
    }

    /// Asks the policy server to sign `pdu`; the PDU with its signature added.
    async fn policy_sign(&self, policy: &RoomPolicyEventContent, pdu: Pdu, rules: &RoomVersionRules) -> Result<Pdu> {
        let via: &OwnedServerName = &policy.via;
        let fed = self.fed()?;
        let answer = fed
            .request(via, http::Method::POST, "/_matrix/policy/v1/sign", Some(&pdu.federation_json()))
            .await
            .map_err(|e| {
                if e.status.is_client_error() {
                    Error::forbidden(format!("The room's policy server {via} refused this event: {}", e.message))
                } else {
                    Error::new(
                        http::StatusCode::BAD_GATEWAY,
                        "M_UNKNOWN",
                        format!("The room's policy server {via} could not be reached: {}", e.message),
                    )
                }
            })?;
        let bad = || {
            Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The room's policy server {via} answered without a valid signature"),
            )
        };
        let signature = answer[via.as_str()][POLICY_SERVER_ED25519_SIGNING_KEY_ID].as_str().ok_or_else(bad)?;
        let mut object = pdu.json().clone();
        let signatures =
            object.entry("signatures".to_owned()).or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
        let CanonicalJsonValue::Object(signatures) = signatures else { return Err(bad()) };
        let by_server =
            signatures.entry(via.to_string()).or_insert_with(|| CanonicalJsonValue::Object(Default::default()));
        let CanonicalJsonValue::Object(by_server) = by_server else { return Err(bad()) };
        by_server.insert(POLICY_SERVER_ED25519_SIGNING_KEY_ID.to_owned(), CanonicalJsonValue::String(signature.into()));
        let signed = Pdu::from_json(pdu.event_id.clone(), Some(pdu.room_id.clone()), object)?;
        if !policy_signed(policy, &signed, rules) {
            return Err(bad());
        }
        Ok(signed)
    }

    /// Sends a local event into a room with a policy server (see the module doc): built outside
    /// the event writer, signed by the policy server, persisted if the room did not move.
    pub(crate) async fn send_with_policy(
        &self,
        room_id: &RoomId,
        origin: Origin<'_>,
        ev: NewEvent,
    ) -> Result<OwnedEventId> {
        let _guard = self.room_lock(room_id.as_str()).await;
        let user = origin.user_id.as_str();
        let txn_key = origin.txn.map(|(d, t)| (user, d, t));
        for _ in 0..ATTEMPTS {
            let (pdu, extremities, policy, rules) = {
                let mut tx = self.db.begin_write().await?;
                if let Some(key) = txn_key
                    && let Some(id) = self.db.get_txns_tx(&mut tx, &[key]).await?.into_values().next()
                {
                    return OwnedEventId::try_from(id).map_err(Error::internal);
                }
                let ctx = self.load_ctx(&mut tx, room_id).await?;
                if let Some(target) = &ev.redacts {
                    self.check_redaction_allowed(&ctx, origin.user_id, target).await?;
                }
                let pdu = self.build_event(&ctx, origin.user_id, ev.clone()).await?;
                let policy = self.enabled_policy_of(&ctx).await?;
                (pdu, ctx.extremities.clone(), policy, ctx.rules.clone())
            };
            let is_policy_event = ev.kind == "m.room.policy" && ev.state_key.as_deref() == Some("");
            let pdu = match policy {
                Some(p) if !is_policy_event && p.via != self.server_name => self.policy_sign(&p, pdu, &rules).await?,
                _ => pdu,
            };
            let mut tx = self.db.begin_event_write().await?;
            Db::reserve_stream_positions(&mut tx, "events", 1).await?;
            let mut ctx = self.load_ctx(&mut tx, room_id).await?;
            if ctx.extremities != extremities {
                continue;
            }
            let event_id = pdu.event_id.clone();
            let appended = self.persist_local(&mut tx, &mut ctx, pdu, txn_key).await?;
            tx.commit().await?;
            self.after_commit(&ctx, &[appended]).await;
            if let Some((d, t)) = origin.txn {
                self.caches.put_txns([(event_id.to_string(), (user.to_owned(), d.to_owned(), t.to_owned()))]);
            }
            return Ok(event_id);
        }
        Err(Error::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "The room kept changing while its policy server was asked; try again",
        ))
    }
}
