//! Device keys, one-time keys and fallback keys: `/keys/upload`, `/keys/query`, `/keys/claim`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::device_lists::device_list_update_edu;
use super::{E2ee, cross_signing_public_key, parse_stored};
use crate::error::{Error, Result};
use crate::events::signed::add_signature;
use crate::ids::server_of;
use crate::storage::e2ee::SignatureRow;

/// The algorithm that clients count on seeing in `one_time_key_counts` even at zero (as
/// Synapse reports it; some clients only upload when they see the count drop).
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// Splits `algorithm:key_id`.
fn split_key_id(full: &str) -> Result<(&str, &str)> {
    match full.split_once(':') {
        Some((alg, id)) if !alg.is_empty() && !id.is_empty() => Ok((alg, id)),
        _ => Err(Error::invalid_param(format!("Invalid key id {full:?}: expected <algorithm>:<key id>"))),
    }
}

/// The spec's error for a one-time key id re-uploaded with different content.
fn otk_conflict(full: &str) -> Error {
    Error::invalid_param(format!("One time key {full} already exists with different content"))
}

/// How long a device's key counts are remembered (see [`E2ee::key_counts`]).
pub const COUNTS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Remembered key counts: `(user, device)` → (when read, (one-time key counts, fallback types)),
/// and a generation that every upload or claim moves.
#[derive(Default)]
pub struct CountsMemoInner {
    generation: u64,
    #[allow(clippy::type_complexity)]
    devices: std::collections::HashMap<(String, String), (std::time::Instant, (BTreeMap<String, i64>, Vec<String>))>,
}

/// [`CountsMemoInner`] behind a lock.
#[derive(Default)]
pub struct CountsMemo(std::sync::Mutex<CountsMemoInner>);

impl CountsMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, CountsMemoInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl E2ee {
    /// `POST /keys/upload` for `user_id`'s device `device_id`: stores device keys, one-time
    /// keys and fallback keys from the request body; returns the one-time key counts.
    pub async fn upload_keys(&self, user_id: &str, device_id: &str, body: &Value) -> Result<BTreeMap<String, i64>> {
        self.counts_changed();
        let device_keys = body.get("device_keys").filter(|v| !v.is_null());
        if let Some(keys) = device_keys {
            if !keys.is_object() {
                return Err(Error::bad_json("device_keys must be an object"));
            }
            if keys.get("user_id").and_then(Value::as_str) != Some(user_id) {
                return Err(Error::bad_json(
                    "Provided `user_id` in `device_keys` does not match that of the authenticated user",
                ));
            }
            if keys.get("device_id").and_then(Value::as_str) != Some(device_id) {
                return Err(Error::bad_json(
                    "Provided `device_id` in `device_keys` does not match that of the authenticated user",
                ));
            }
            if !keys.get("keys").is_some_and(Value::is_object) || !keys.get("algorithms").is_some_and(Value::is_array) {
                return Err(Error::bad_json("device_keys needs `keys` and `algorithms`"));
            }
        }
        let one_time = object_field(body, "one_time_keys")?;
        let fallback = object_field(body, "fallback_keys")?;

        let mut tx = self.db.begin_write().await?;
        let mut changed = false;
        if let Some(keys) = device_keys {
            let mut keys = keys.clone();
            if let Some(map) = keys.as_object_mut() {
                map.remove("unsigned");
            }
            let existing = self.db.e2e_device_keys(user_id, device_id).await?;
            if existing.as_deref().map(parse_stored).transpose()?.as_ref() != Some(&keys) {
                self.db.e2e_set_device_keys(&mut tx, user_id, device_id, &keys.to_string()).await?;
                changed = true;
            }
        }
        // Keys are claimed in upload order (spec v1.13): every key of this upload gets the
        // next upload number of the device.
        let upload =
            if one_time.is_empty() { 0 } else { self.db.e2e_next_otk_upload(&mut tx, user_id, device_id).await? };
        for (full, key) in one_time {
            let (alg, id) = split_key_id(full)?;
            match self.db.e2e_otk(&mut tx, user_id, device_id, alg, id).await? {
                Some(existing) if parse_stored(&existing)? == *key => {}
                Some(_) => return Err(otk_conflict(full)),
                None => self.db.e2e_insert_otk(&mut tx, user_id, device_id, alg, id, &key.to_string(), upload).await?,
            }
        }
        for (full, key) in fallback {
            let (alg, id) = split_key_id(full)?;
            let unchanged = match self.db.e2e_fallback_key(&mut tx, user_id, device_id, alg).await? {
                Some((existing_id, existing, _)) => existing_id == id && parse_stored(&existing)? == *key,
                None => false,
            };
            // Re-uploading the same fallback key keeps its `used` flag, as Synapse does.
            if !unchanged {
                self.db.e2e_set_fallback_key(&mut tx, user_id, device_id, alg, id, &key.to_string()).await?;
            }
        }
        if changed {
            self.db.e2e_record_device_change(&mut tx, user_id, Some(device_id), false, device_list_update_edu).await?;
        }
        tx.commit().await?;
        self.counts_changed();
        if changed {
            self.keys_changed(user_id).await;
        }
        self.one_time_key_counts(user_id, device_id).await
    }

    /// Unclaimed one-time keys of a device per algorithm (`signed_curve25519` always present).
    pub async fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<BTreeMap<String, i64>> {
        let mut counts = self.db.e2e_otk_counts(user_id, device_id).await?;
        counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
        Ok(counts)
    }

    /// The one-time key counts (as above) and the algorithms of fallback keys not claimed yet,
    /// in one query: every `/sync` answer carries both. A thousand woken
    /// long-polls would ask a thousand times per message, so answers are remembered for
    /// [`COUNTS_TTL`]; every process forgets them whenever one of them uploads or claims keys
    /// (through `storage::bus`).
    pub async fn key_counts(&self, user_id: &str, device_id: &str) -> Result<(BTreeMap<String, i64>, Vec<String>)> {
        let key = (user_id.to_owned(), device_id.to_owned());
        let now = std::time::Instant::now();
        let generation = {
            let memo = self.counts.lock();
            if let Some((at, counts)) = memo.devices.get(&key)
                && now.duration_since(*at) < COUNTS_TTL
            {
                return Ok(counts.clone());
            }
            memo.generation
        };
        let (mut counts, fallback) = self.db.e2e_key_counts(user_id, device_id).await?;
        counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
        let mut memo = self.counts.lock();
        // An upload or claim while this read ran may have changed the counts: do not keep them.
        if memo.generation == generation {
            if memo.devices.len() >= 1024 && memo.devices.len().is_power_of_two() {
                memo.devices.retain(|_, (at, _)| now.duration_since(*at) < COUNTS_TTL);
            }
            memo.devices.insert(key, (now, (counts.clone(), fallback.clone())));
        }
        Ok((counts, fallback))
    }

    /// Forgets remembered key counts (keys were uploaded or claimed), here and in the other
    /// processes sharing the database.
    fn counts_changed(&self) {
        self.forget_key_counts();
        self.db.bus().publish(crate::storage::bus::Signal::KeyCounts);
    }

    /// Forgets remembered key counts in this process (another process changed keys).
    pub fn forget_key_counts(&self) {
        let mut memo = self.counts.lock();
        memo.generation += 1;
        memo.devices.clear();
    }

    /// The keys of local `user_id` as `requester` sees them: `(device_keys, master,
    /// self_signing, user_signing)`; `devices` empty means all devices. Devices that never
    /// uploaded keys are left out. Signatures uploaded later are merged in: the user's own
    /// (device ↔ master, self-signing → device) for everyone, user-signing signatures by
    /// `requester` only for `requester`.
    pub async fn local_keys(&self, requester: Option<&str>, user_id: &str, devices: &[String]) -> Result<LocalKeys> {
        let sigs = self.db.e2e_signatures_on(user_id).await?;
        let visible = |s: &&SignatureRow| s.signer_user_id == user_id || Some(s.signer_user_id.as_str()) == requester;
        let merge = |obj: &mut Value, target: &str| {
            for s in sigs.iter().filter(visible).filter(|s| s.target_key_id == target) {
                add_signature(obj, &s.signer_user_id, &s.signer_key_id, &s.signature);
            }
        };
        let mut out = LocalKeys::default();
        for d in self.db.e2e_devices_of(user_id).await? {
            if !devices.is_empty() && !devices.contains(&d.device_id) {
                continue;
            }
            let Some(keys) = d.keys else { continue };
            let mut keys = parse_stored(&keys)?;
            // Device signatures other users upload are never stored (only the owner's
            // self-signing key signs devices), so the owner's signatures are all there are.
            merge(&mut keys, &d.device_id);
            if let Some(map) = keys.as_object_mut() {
                let unsigned = match &d.display_name {
                    Some(name) => json!({ "device_display_name": name }),
                    None => json!({}),
                };
                map.insert("unsigned".into(), unsigned);
            }
            out.devices.insert(d.device_id, keys);
        }
        for (kind, slot) in [("master", &mut out.master), ("self_signing", &mut out.self_signing)] {
            if let Some(key) = self.db.e2e_cross_signing_key(user_id, kind).await? {
                let mut key = parse_stored(&key)?;
                if let Some((_, public)) = cross_signing_public_key(&key) {
                    merge(&mut key, &public);
                }
                *slot = Some(key);
            }
        }
        if requester == Some(user_id)
            && let Some(key) = self.db.e2e_cross_signing_key(user_id, "user_signing").await?
        {
            out.user_signing = Some(parse_stored(&key)?);
        }
        Ok(out)
    }

    /// `POST /keys/query`: keys of the users in `device_keys` (`{user: [device, ...]}`).
    /// Remote users are asked from their server (one request per server, with `timeout`); when
    /// that fails the cache of their device list answers if it is fresh, else the server is
    /// reported in `failures`.
    pub async fn query_keys(
        &self,
        requester: &str,
        device_keys: &Map<String, Value>,
        timeout: std::time::Duration,
    ) -> Result<Value> {
        let mut out = QueryOut::default();
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (user, wanted_json) in device_keys {
            let wanted = device_list(wanted_json);
            if !self.is_local(user) {
                remote.entry(server_of(user).to_owned()).or_default().insert(user.clone(), wanted_json.clone());
                continue;
            }
            let keys = self.local_keys(Some(requester), user, &wanted).await?;
            out.devices.insert(user.clone(), Value::Object(keys.devices.into_iter().collect()));
            out.put_cross(user, keys.master, keys.self_signing);
            if let Some(k) = keys.user_signing {
                out.user_signing.insert(user.clone(), k);
            }
        }
        for (server, users, answer) in self.ask_remote(remote, RemoteOp::Query, timeout).await {
            match answer {
                Ok(v) => {
                    for (user, wanted) in &users {
                        // Only what the server may speak for: its own users.
                        let mut devices = v["device_keys"][user].as_object().cloned().unwrap_or_default();
                        let wanted = device_list(wanted);
                        devices.retain(|d, k| {
                            (wanted.is_empty() || wanted.contains(d))
                                && k["user_id"] == json!(user)
                                && k["device_id"] == json!(d)
                        });
                        out.devices.insert(user.clone(), Value::Object(devices));
                        let own = |k: &Value| k.is_object() && k["user_id"] == json!(user);
                        let master = Some(v["master_keys"][user].clone()).filter(own);
                        let ssk = Some(v["self_signing_keys"][user].clone()).filter(own);
                        out.put_cross(user, master, ssk);
                    }
                }
                Err(message) => {
                    let mut all_cached = true;
                    for (user, wanted) in &users {
                        match self.cached_remote_keys(user, &device_list(wanted)).await? {
                            Some((devices, master, ssk)) => {
                                out.devices.insert(user.clone(), Value::Object(devices));
                                out.put_cross(user, master, ssk);
                            }
                            None => all_cached = false,
                        }
                    }
                    if !all_cached {
                        out.failures.insert(server, json!({ "status": 503, "message": message }));
                    }
                }
            }
        }
        // The requester's own user-signing signatures on remote master keys.
        for (user, master) in out.master.iter_mut() {
            if self.is_local(user) {
                continue;
            }
            let Some((_, public)) = cross_signing_public_key(master) else { continue };
            for s in self.db.e2e_signatures_on(user).await? {
                if s.signer_user_id == requester && s.target_key_id == public {
                    add_signature(master, &s.signer_user_id, &s.signer_key_id, &s.signature);
                }
            }
        }
        Ok(json!({
            "device_keys": out.devices,
            "master_keys": out.master,
            "self_signing_keys": out.self_signing,
            "user_signing_keys": out.user_signing,
            "failures": out.failures,
        }))
    }

    /// Claims one key per requested local `(user, device, algorithm)`, in one transaction:
    /// a one-time key if one is left (and deleted with the claim), else the fallback key, which
    /// stays but is marked used. Returns `{user: {device: {"alg:id": key}}}`.
    pub async fn claim_local(&self, wanted: &[(String, String, String)]) -> Result<Map<String, Value>> {
        let mut out: Map<String, Value> = Map::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        self.counts_changed();
        let mut tx = self.db.begin_write().await?;
        for (user, device, alg) in wanted {
            let claimed = match self.db.e2e_claim_otk(&mut tx, user, device, alg).await? {
                Some((id, json)) => Some((id, json)),
                None => match self.db.e2e_fallback_key(&mut tx, user, device, alg).await? {
                    Some((id, json, used)) => {
                        if !used {
                            self.db.e2e_mark_fallback_used(&mut tx, user, device, alg).await?;
                        }
                        Some((id, json))
                    }
                    None => None,
                },
            };
            if let Some((id, json)) = claimed {
                let per_user = out.entry(user.clone()).or_insert_with(|| json!({}));
                per_user[device.as_str()] = json!({ format!("{alg}:{id}"): parse_stored(&json)? });
            }
        }
        tx.commit().await?;
        self.counts_changed();
        Ok(out)
    }

    /// `POST /keys/claim`: `one_time_keys` is `{user: {device: algorithm}}`. Remote users'
    /// keys are claimed from their servers (one request per server, with `timeout`).
    pub async fn claim_keys(&self, one_time_keys: &Map<String, Value>, timeout: std::time::Duration) -> Result<Value> {
        let mut wanted = Vec::new();
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in one_time_keys {
            if !self.is_local(user) {
                remote.entry(server_of(user).to_owned()).or_default().insert(user.clone(), devices.clone());
                continue;
            }
            for (device, alg) in devices.as_object().into_iter().flatten() {
                if let Some(alg) = alg.as_str() {
                    wanted.push((user.clone(), device.clone(), alg.to_owned()));
                }
            }
        }
        let mut claimed = self.claim_local(&wanted).await?;
        let mut failures = Map::new();
        for (server, users, answer) in self.ask_remote(remote, RemoteOp::Claim, timeout).await {
            match answer {
                Ok(v) => {
                    for user in users.keys() {
                        if let Some(keys) = v["one_time_keys"].get(user).filter(|k| k.is_object()) {
                            claimed.insert(user.clone(), keys.clone());
                        }
                    }
                }
                Err(message) => {
                    failures.insert(server, json!({ "status": 503, "message": message }));
                }
            }
        }
        Ok(json!({ "one_time_keys": claimed, "failures": failures }))
    }
}

/// Which key endpoint of other servers [`E2ee::ask_remote`] calls.
#[derive(Debug, Clone, Copy)]
enum RemoteOp {
    /// `user/keys/query`, body field `device_keys`.
    Query,
    /// `user/keys/claim`, body field `one_time_keys`.
    Claim,
}

/// Per server asked: its users as asked, and its answer or why there is none.
type RemoteAnswers = Vec<(String, Map<String, Value>, std::result::Result<Value, String>)>;

impl E2ee {
    /// Asks every server in `by_server` at once, each for its users and within `timeout`.
    async fn ask_remote(
        &self,
        by_server: BTreeMap<String, Map<String, Value>>,
        op: RemoteOp,
        timeout: std::time::Duration,
    ) -> RemoteAnswers {
        let asked = by_server.into_iter().map(|(server, users)| async move {
            let answer = match self.remote() {
                Some(r) => {
                    let ms = timeout.as_millis() as u64;
                    let call = async {
                        match op {
                            RemoteOp::Query => r.query(&server, &json!({ "device_keys": users, "timeout": ms })).await,
                            RemoteOp::Claim => {
                                r.claim(&server, &json!({ "one_time_keys": users, "timeout": ms })).await
                            }
                        }
                    };
                    match tokio::time::timeout(timeout, call).await {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => Err(e.message),
                        Err(_) => Err("timed out".to_owned()),
                    }
                }
                None => Err("Federation is not available".to_owned()),
            };
            (server, users, answer)
        });
        futures::future::join_all(asked).await
    }
}

/// Accumulates a `/keys/query` answer.
#[derive(Default)]
struct QueryOut {
    devices: Map<String, Value>,
    master: Map<String, Value>,
    self_signing: Map<String, Value>,
    user_signing: Map<String, Value>,
    failures: Map<String, Value>,
}

impl QueryOut {
    fn put_cross(&mut self, user: &str, master: Option<Value>, self_signing: Option<Value>) {
        if let Some(k) = master {
            self.master.insert(user.to_owned(), k);
        }
        if let Some(k) = self_signing {
            self.self_signing.insert(user.to_owned(), k);
        }
    }
}

/// The device ids of a `/keys/query` entry (empty: all devices).
fn device_list(wanted: &Value) -> Vec<String> {
    wanted.as_array().map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// What [`E2ee::local_keys`] returns.
#[derive(Debug, Default)]
pub struct LocalKeys {
    /// Device id → DeviceKeys (with merged signatures and `unsigned.device_display_name`).
    pub devices: BTreeMap<String, Value>,
    /// Master key.
    pub master: Option<Value>,
    /// Self-signing key.
    pub self_signing: Option<Value>,
    /// User-signing key (only for the user themself).
    pub user_signing: Option<Value>,
}

fn object_field<'a>(body: &'a Value, name: &str) -> Result<Vec<(&'a String, &'a Value)>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map.iter().collect()),
        Some(_) => Err(Error::bad_json(format!("{name} must be an object"))),
    }
}
