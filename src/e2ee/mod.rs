//! End-to-end encryption support: device keys, one-time and fallback keys, cross-signing keys
//! and signatures, key backup, and device-list change tracking.
//!
//! The server never decrypts anything; it stores, serves and routes keys exactly. Key objects
//! are kept as the JSON the client uploaded, because clients verify signatures over them: a
//! re-serialised object with a field dropped would no longer verify. Signatures uploaded later
//! (`/keys/signatures/upload`) live in their own table and are merged into the objects when
//! they are served, with the visibility rules of the spec (a user-signing signature is seen
//! only by its signer).
//!
//! Device lists are a stream of their own (`device_lists` counter, table
//! `device_list_changes`): every change of a user's devices or keys takes one position, written
//! in the transaction that makes the change (also when accounts storage creates or deletes a
//! device, see `storage::e2ee`). "Which users changed between two sync tokens" is then a range
//! scan restricted to users who share a room, plus the users who began or stopped sharing a
//! room in the event range of the two tokens. The same transaction queues the
//! `m.device_list_update` / `m.signing_key_update` EDUs for remote servers in the federation
//! outbox; after the commit [`E2ee::keys_changed`] wakes the `/sync` requests of local users
//! who share a room with the changed user.
//!
//! One-time keys are consumed exactly once: a claim deletes the row it returns in a single
//! statement (see `Db::e2e_claim_otk`).

pub mod backup;
pub mod cross_signing;
pub mod device_lists;
pub mod federation;
pub mod keys;

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use ruma::OwnedServerName;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::server_of;
use crate::notifier::Notifier;
use crate::storage::Db;

/// How the engine reaches other servers' key endpoints (implemented by the federation client;
/// absent when federation is off, and then remote users are answered from the cache or reported
/// in `failures`).
#[async_trait::async_trait]
pub trait RemoteKeys: Send + Sync {
    /// `POST /_matrix/federation/v1/user/keys/query` on `server`.
    async fn query(&self, server: &str, body: &Value) -> Result<Value>;
    /// `POST /_matrix/federation/v1/user/keys/claim` on `server`.
    async fn claim(&self, server: &str, body: &Value) -> Result<Value>;
    /// `GET /_matrix/federation/v1/user/devices/{userId}` on `server`.
    async fn user_devices(&self, server: &str, user_id: &str) -> Result<Value>;
}

/// The end-to-end encryption engine; cheap to share behind an `Arc`.
pub struct E2ee {
    db: Db,
    server_name: OwnedServerName,
    notifier: Arc<Notifier>,
    outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
    remote: Option<Arc<dyn RemoteKeys>>,
    /// Key counts of devices as read recently (see `E2ee::key_counts`).
    pub(crate) counts: keys::CountsMemo,
}

impl E2ee {
    /// Creates the engine. `outbox_wakeup` is the federation outbox's signal (the EDUs this
    /// engine queues go through the same outbox as room events); `remote` reaches other
    /// servers' key endpoints (`None` when federation is off).
    pub fn new(
        db: Db,
        server_name: OwnedServerName,
        notifier: Arc<Notifier>,
        outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
        remote: Option<Arc<dyn RemoteKeys>>,
    ) -> Self {
        Self { db, server_name, notifier, outbox_wakeup, remote, counts: Default::default() }
    }

    /// The transport to other servers, if any.
    pub fn remote(&self) -> Option<&Arc<dyn RemoteKeys>> {
        self.remote.as_ref()
    }

    /// Whether `user_id` belongs to this server.
    pub fn is_local(&self, user_id: &str) -> bool {
        server_of(user_id) == self.server_name.as_str()
    }

    /// After a committed change of `user_id`'s devices or keys: wakes the `/sync` requests of
    /// the user and of every local user sharing a room with them, and the federation sender
    /// (EDUs were queued in the same transaction as the change).
    pub async fn keys_changed(&self, user_id: &str) {
        let mut users: BTreeSet<String> = match self.db.e2e_users_sharing(user_id).await {
            Ok(users) => users.into_iter().filter(|u| self.is_local(u)).collect(),
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "listing users to wake after a key change");
                BTreeSet::new()
            }
        };
        users.insert(user_id.to_owned());
        self.notifier.wake(users.iter().map(String::as_str));
        self.outbox_wakeup.notify_waiters();
    }
}

/// Decodes Matrix base64 (unpadded standard alphabet; padding tolerated).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(s).ok()
}

/// Checks `object`'s signature by `signer`'s key `key_id` (`ed25519:<name>`) against the
/// ed25519 public key `public_key` (unpadded base64), with ruma's canonical JSON rules
/// (`signatures` and `unsigned` are not signed).
pub fn verify_signature(object: &Value, signer: &str, key_id: &str, public_key: &str) -> Result<(), String> {
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing signature by {signer} {key_id}"))?;
    let signature = decode_base64(signature).ok_or("signature is not base64")?;
    let public_key = decode_base64(public_key).ok_or("public key is not base64")?;
    let canonical: ruma::CanonicalJsonValue =
        object.clone().try_into().map_err(|e| format!("not canonical JSON: {e}"))?;
    let ruma::CanonicalJsonValue::Object(canonical) = canonical else {
        return Err("not a JSON object".into());
    };
    let signed = ruma::signatures::to_canonical_json_string_for_signing(&canonical).map_err(|e| e.to_string())?;
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        signed.as_bytes(),
    )
    .map_err(|e| format!("invalid signature: {e}"))
}

/// `object` without `signatures` and `unsigned`: what a signature covers, for comparing an
/// uploaded object with the stored one.
pub fn signed_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    v
}

/// The single `ed25519:<pub>` key of a cross-signing key object: `(key_id, public key)`.
pub fn cross_signing_public_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, public) = keys.iter().next()?;
    let name = id.strip_prefix("ed25519:")?;
    let public = public.as_str()?;
    (name == public).then(|| (id.clone(), public.to_owned()))
}

/// Parses stored JSON.
pub(crate) fn parse_stored(json: &str) -> Result<Value> {
    serde_json::from_str(json).map_err(|e| Error::internal(format!("stored key JSON: {e}")))
}
