//! Server signing keys over federation: our self-signed key document, remote keys fetched from
//! each server's key endpoint (or, when it does not answer, from the notaries of
//! `federation.trusted_key_servers`) and cached in memory and in the database, the validity rule
//! that says whether a key may verify a signature made at a given time, and the notary answers
//! built from the cached documents.
//!
//! Validity follows the spec and Synapse's keyring (`verify_json_for_server(server, json,
//! validity_time)`, `_FetchKeyRequest.minimum_valid_until_ts`): a signature must be made by a key
//! valid at the event's `origin_server_ts` when the room version enforces key validity (v5+),
//! by any known key otherwise, and by a key valid now for `X-Matrix` requests. A current key is
//! valid until the lesser of its document's `valid_until_ts` and 7 days after we fetched it (the
//! spec's cap for v5+ rooms; Synapse's `process_v2_response` does not apply it, we do); an old
//! key until its `expired_ts`. When the cached keys are not valid at the time needed we fetch
//! again, first from the server, then from each notary with `minimum_valid_until_ts` set to that
//! time (Synapse's `_FetchKeyRequest`). Synapse asks its notaries before the origin; we ask the
//! origin first, so that the notary (matrix.org by default) is not told of every server we talk
//! to and a notary's stale copy never stands in for an origin that answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, ServerName};
use serde_json::{Value, json};

use super::Federation;
use crate::config::TrustedKeyServer;
use crate::error::{Error, Result};
use crate::storage::federation::KeyDocument;
use crate::storage::now_ms;

/// How long others may cache our keys.
const OWN_KEY_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

/// Servers whose keys are kept in memory; beyond this the least used are read from the
/// database again when needed.
const KEY_CACHE_SERVERS: u64 = 10_000;
/// How long keys stay in memory without being read from the database again.
const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The in-memory cache of remote servers' keys (see [`Federation`]'s field).
pub(super) fn key_cache() -> moka::sync::Cache<String, HashMap<String, RemoteKey>> {
    moka::sync::Cache::builder().max_capacity(KEY_CACHE_SERVERS).time_to_live(KEY_CACHE_TTL).build()
}

/// The lock serialising work on `key`, from a map that keeps only locks someone holds: the
/// keys come from requests (any `X-Matrix` origin), so a map that kept every key would grow
/// with each made-up origin.
fn single_flight_lock(
    locks: &std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: &str,
) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = locks.lock().unwrap_or_else(|e| e.into_inner());
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks.entry(key.to_owned()).or_default().clone()
}

/// The spec's cap on a fetched key's validity: the lesser of its `valid_until_ts` and this long
/// after we fetched it.
pub const KEY_VALIDITY_CAP_MS: i64 = 7 * 24 * 3600 * 1000;

/// At most one refetch of a server's keys per this interval when we already hold keys of it.
/// Without it, events with far-future timestamps (no key is valid then) would make us fetch the
/// server's keys, and ask every notary, once per event. Synapse has no such bound (it batches
/// concurrent requests); the first fetch of a server we know nothing of is not limited.
const REFETCH_INTERVAL_MS: i64 = 60_000;

/// Most servers remembered by the refetch limiter; when it is full, entries older than
/// `REFETCH_INTERVAL_MS` are dropped, and if that frees nothing, refetches are refused until it
/// does (an attacker naming many servers cannot grow the map or make us fetch without bound).
const REFETCH_MAP_CAP: usize = 10_000;

/// A remote key: unpadded base64 public key and until when it may verify signatures.
#[derive(Debug, Clone)]
pub struct RemoteKey {
    /// Unpadded base64.
    pub key: String,
    /// Valid until (ms): for current keys the lesser of `valid_until_ts` and 7 days after the
    /// fetch, for old keys their `expired_ts`.
    pub valid_until_ts: i64,
}

impl RemoteKey {
    /// Whether this key may verify a signature needed valid at `at` (ms; `None`: no time check).
    pub fn valid_at(&self, at: Option<i64>) -> bool {
        at.is_none_or(|t| self.valid_until_ts >= t)
    }
}

/// How long a current key from a document fetched at `fetched_ms` counts as valid.
pub fn capped_valid_until(valid_until_ts: i64, fetched_ms: i64) -> i64 {
    valid_until_ts.min(fetched_ms.saturating_add(KEY_VALIDITY_CAP_MS))
}

/// The time at which the keys verifying `event` must be valid: its `origin_server_ts` when the
/// room version enforces key validity, else none.
pub fn event_key_validity_time(rules: &RoomVersionRules, event: &CanonicalJsonObject) -> Result<Option<i64>> {
    if !rules.enforce_key_validity {
        return Ok(None);
    }
    match event.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => Ok(Some(i64::from(*ts))),
        _ => Err(Error::bad_json("PDU has no integer origin_server_ts")),
    }
}

/// Whether `keys` suffice for a signature by `wanted` (all key ids if not empty, else any key),
/// valid at `at`; with no time, some key must still be valid now so that expired caches are
/// refreshed.
fn sufficient(keys: &HashMap<String, RemoteKey>, wanted: &[String], at: Option<i64>) -> bool {
    let at = at.or_else(|| Some(now_ms()));
    if wanted.is_empty() {
        keys.values().any(|k| k.valid_at(at))
    } else {
        wanted.iter().all(|w| keys.get(w).is_some_and(|k| k.valid_at(at)))
    }
}

/// Checks that `doc` carries a valid signature of `entity` by one of `keys`, ignoring the
/// signatures of others (ruma's `verify_json` wants keys for every signer; a notary's answer is
/// signed by the origin and by the notary).
fn verify_signed_by(doc: &Value, entity: &str, keys: PublicKeySet) -> std::result::Result<(), String> {
    let mut object: CanonicalJsonObject =
        serde_json::from_value(doc.clone()).map_err(|_| "not canonical JSON".to_owned())?;
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s.get(entity).cloned(),
        _ => None,
    }
    .ok_or_else(|| format!("not signed by {entity}"))?;
    object
        .insert("signatures".to_owned(), CanonicalJsonValue::Object(BTreeMap::from([(entity.to_owned(), signatures)])));
    let mut map = PublicKeyMap::new();
    map.insert(entity.to_owned(), keys);
    ruma::signatures::verify_json(&map, &object).map_err(|e| format!("bad signature of {entity}: {e}"))
}

/// `doc` with only `entity`'s signatures.
fn only_signatures_of(doc: &Value, entity: &str) -> Value {
    let mut doc = doc.clone();
    if let Some(sigs) = doc.get_mut("signatures").and_then(Value::as_object_mut) {
        sigs.retain(|k, _| k == entity);
    }
    doc
}

impl Federation {
    /// Our `GET /_matrix/key/v2/server` document, signed by the current key.
    pub fn own_keys_json(&self) -> Result<Value> {
        let mut old = serde_json::Map::new();
        for k in &self.keys.old {
            // The recorded retirement time, the same in every answer (see `signing`).
            old.insert(k.key_id.clone(), json!({ "key": k.public_key, "expired_ts": k.expired_ts }));
        }
        let doc = json!({
            "server_name": self.server_name.as_str(),
            "valid_until_ts": now_ms() + OWN_KEY_VALIDITY_MS,
            "verify_keys": { self.keys.key_id(): { "key": self.keys.public_key_base64() } },
            "old_verify_keys": old,
        });
        self.sign_value(doc)
    }

    /// Adds our signature to a JSON object.
    pub fn sign_value(&self, value: Value) -> Result<Value> {
        let mut object: CanonicalJsonObject = serde_json::from_value(value).map_err(Error::internal)?;
        ruma::signatures::sign_json(self.server_name.as_str(), &self.keys.current, &mut object)
            .map_err(Error::internal)?;
        Ok(serde_json::to_value(object)?)
    }

    /// The keys of `server` we know, fetching them (from the server, then from the notaries) if
    /// they do not suffice for a signature by `wanted` valid at `at` (see `sufficient`). The
    /// answer may still hold keys not valid at `at`; `key_map` leaves those out.
    pub async fn server_keys(
        &self,
        server: &str,
        wanted: &[String],
        at: Option<i64>,
    ) -> Result<HashMap<String, RemoteKey>> {
        self.keys_of(server, wanted, at, true).await
    }

    /// Our own keys as a remote server would see them.
    fn own_remote_keys(&self) -> HashMap<String, RemoteKey> {
        let mut out = HashMap::new();
        out.insert(
            self.keys.key_id(),
            RemoteKey { key: self.keys.public_key_base64(), valid_until_ts: now_ms() + OWN_KEY_VALIDITY_MS },
        );
        for k in &self.keys.old {
            out.insert(k.key_id.clone(), RemoteKey { key: k.public_key.clone(), valid_until_ts: k.expired_ts });
        }
        out
    }

    /// `server_keys`; `use_notaries` is false when we answer as a notary ourselves (Synapse's
    /// notary asks only the origin too), so that notaries never ask each other in a chain.
    async fn keys_of(
        &self,
        server: &str,
        wanted: &[String],
        at: Option<i64>,
        use_notaries: bool,
    ) -> Result<HashMap<String, RemoteKey>> {
        if server == self.server_name.as_str() {
            return Ok(self.own_remote_keys());
        }
        if let Some(keys) = self.key_cache.get(server)
            && sufficient(&keys, wanted, at)
        {
            return Ok(keys);
        }
        // One fetch per server at a time.
        let lock = single_flight_lock(&self.key_fetch_locks, server);
        let _guard = lock.lock().await;
        let stored = self.stored_keys(server).await?;
        if sufficient(&stored, wanted, at) {
            self.key_cache.insert(server.to_owned(), stored.clone());
            return Ok(stored);
        }
        if !self.may_fetch(server, !stored.is_empty()) {
            tracing::debug!(server, "keys fetched less than a minute ago; not fetching again");
            return if stored.is_empty() { Err(no_keys(server, "fetched too recently")) } else { Ok(stored) };
        }
        let mut failure = match self.fetch_keys(server).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(server, error = %e.message, "fetching server keys failed");
                Some(e)
            }
        };
        let mut keys = self.stored_keys(server).await?;
        if use_notaries && !sufficient(&keys, wanted, at) {
            for notary in &self.config.federation.trusted_key_servers {
                if notary.server_name == self.server_name.as_str() || notary.server_name == server {
                    continue;
                }
                match self.fetch_keys_from_notary(notary, server, wanted, at).await {
                    Ok(()) => {
                        keys = self.stored_keys(server).await?;
                        if sufficient(&keys, wanted, at) {
                            failure = None;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(server, notary = %notary.server_name, error = %e.message, "notary key query failed");
                    }
                }
            }
        }
        if keys.is_empty() {
            return Err(failure.unwrap_or_else(|| no_keys(server, "no key found")));
        }
        self.key_cache.insert(server.to_owned(), keys.clone());
        Ok(keys)
    }

    /// Whether we may fetch `server`'s keys now (see `FetchLimiter`), recording the attempt.
    fn may_fetch(&self, server: &str, refetch: bool) -> bool {
        self.key_refetch_at.lock().unwrap_or_else(|e| e.into_inner()).allow(server, refetch, now_ms())
    }

    async fn stored_keys(&self, server: &str) -> Result<HashMap<String, RemoteKey>> {
        let rows = self.db.server_keys(server).await?;
        Ok(rows
            .into_iter()
            // A key the server lists as old is valid until its expired_ts, even if an earlier
            // document promised more: the server retired it, perhaps because it leaked.
            .map(|(id, key, valid, expired)| (id, RemoteKey { key, valid_until_ts: expired.unwrap_or(valid) }))
            .collect())
    }

    /// Fetches `server`'s key document directly, checks its self-signature and stores it.
    async fn fetch_keys(&self, server: &str) -> Result<()> {
        let (status, doc) = self.client.get_unsigned(server, "/_matrix/key/v2/server").await?;
        if !status.is_success() {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("{server} key server answered {status}"),
            ));
        }
        self.store_key_document(server, &doc).await
    }

    /// Asks `notary` for `server`'s keys (`POST /_matrix/key/v2/query`, `minimum_valid_until_ts`
    /// set to `at`); each document of the answer must be signed by the notary (by one of its
    /// configured keys, if any) and by `server` itself, and is then stored like a direct fetch.
    async fn fetch_keys_from_notary(
        &self,
        notary: &TrustedKeyServer,
        server: &str,
        wanted: &[String],
        at: Option<i64>,
    ) -> Result<()> {
        let notary_name = ServerName::parse(&notary.server_name).map_err(Error::internal)?;
        let criteria = match at {
            Some(t) => json!({ "minimum_valid_until_ts": t }),
            None => json!({}),
        };
        let keys: serde_json::Map<String, Value> = wanted.iter().map(|id| (id.clone(), criteria.clone())).collect();
        let body = json!({ "server_keys": { server: keys } });
        let answer = self.request(&notary_name, http::Method::POST, "/_matrix/key/v2/query", Some(&body)).await?;
        let bad =
            |m: String| Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("notary {notary_name}: {m}"));
        let docs = answer["server_keys"].as_array().ok_or_else(|| bad("no server_keys".into()))?;
        let mut notary_keys = PublicKeySet::new();
        for (id, key) in &notary.verify_keys {
            notary_keys.insert(id.clone(), Base64::parse(key).map_err(|_| bad(format!("configured key {id}")))?);
        }
        let mut stored = 0;
        for doc in docs.iter().filter(|d| d["server_name"].as_str() == Some(server)) {
            if !notary_keys.is_empty() {
                verify_signed_by(doc, notary_name.as_str(), notary_keys.clone()).map_err(bad)?;
            }
            self.store_key_document(server, doc).await?;
            stored += 1;
        }
        if stored == 0 {
            return Err(bad(format!("no key document of {server}")));
        }
        Ok(())
    }

    /// Verifies the self-signature of a key document of `server` and stores it: its keys (a
    /// current key valid until the lesser of `valid_until_ts` and 7 days from now, keeping the
    /// longer validity if we already saw the key; old keys until `expired_ts`) and the document
    /// itself, with only `server`'s signature, for our notary answers (unless we hold a newer one).
    pub async fn store_key_document(&self, server: &str, doc: &Value) -> Result<()> {
        let bad = |m: &str| Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("{server} keys: {m}"));
        if doc["server_name"].as_str() != Some(server) {
            return Err(bad("server_name does not match"));
        }
        let valid_until = doc["valid_until_ts"].as_i64().ok_or_else(|| bad("no valid_until_ts"))?;
        let verify = doc["verify_keys"].as_object().ok_or_else(|| bad("no verify_keys"))?;
        let mut set = PublicKeySet::new();
        for (id, v) in verify {
            let key = v["key"].as_str().ok_or_else(|| bad("key without key"))?;
            set.insert(id.clone(), Base64::parse(key).map_err(|_| bad("bad base64"))?);
        }
        verify_signed_by(doc, server, set).map_err(|e| bad(&format!("bad self-signature: {e}")))?;
        let doc = only_signatures_of(doc, server);
        let key_valid_until = capped_valid_until(valid_until, now_ms());

        let old_keys = doc["old_verify_keys"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(id, _)| !verify.contains_key(*id))
            .filter_map(|(id, v)| Some((id.as_str(), v["key"].as_str()?, v["expired_ts"].as_i64()?)))
            .collect();
        self.db
            .store_server_keys(&KeyDocument {
                server,
                verify_keys: verify
                    .iter()
                    .map(|(id, v)| (id.as_str(), v["key"].as_str().unwrap_or_default()))
                    .collect(),
                keys_valid_until: key_valid_until,
                old_keys,
                json: doc.to_string(),
                valid_until,
            })
            .await?;
        self.key_cache.invalidate(server);
        Ok(())
    }

    /// A ruma key map for the given servers `(server, key ids it signed with)`, holding only
    /// keys valid at `at` (ms; `None`: no time check), each server's keys fetched as needed.
    /// Fails when a server has none of the wanted keys valid at `at`.
    pub async fn key_map(&self, servers: &[(String, Vec<String>)], at: Option<i64>) -> Result<PublicKeyMap> {
        let mut map = PublicKeyMap::new();
        for (server, wanted) in servers {
            let keys = self.server_keys(server, wanted, at).await?;
            let mut set = BTreeMap::new();
            for (id, k) in keys {
                if !k.valid_at(at) {
                    continue;
                }
                if let Ok(b) = Base64::parse(&k.key) {
                    set.insert(id, b);
                }
            }
            if !wanted.is_empty() && !wanted.iter().any(|w| set.contains_key(w)) {
                let when = at.map_or_else(String::new, |t| format!(" at {t}"));
                return Err(no_keys(server, &format!("none of the keys {wanted:?} is known and valid{when}")));
            }
            map.insert(server.clone(), set);
        }
        Ok(map)
    }

    /// The notary answer for one server: its key document countersigned by us, refreshed from
    /// the server first if what we hold is not valid until `minimum_valid_until_ts` (ms).
    pub async fn notary_keys(&self, server: &str, minimum_valid_until_ts: i64) -> Result<Vec<Value>> {
        if server == self.server_name.as_str() {
            return Ok(vec![self.own_keys_json()?]);
        }
        let _ = self.keys_of(server, &[], Some(minimum_valid_until_ts), false).await;
        match self.db.server_key_document(server).await? {
            Some(json) => Ok(vec![self.sign_value(serde_json::from_str(&json)?)?]),
            None => Ok(Vec::new()),
        }
    }
}

/// When we last fetched each server's keys: at most one refetch per `REFETCH_INTERVAL_MS` per
/// server we already hold keys of, in a map of at most `REFETCH_MAP_CAP` servers.
#[derive(Debug, Default)]
pub struct FetchLimiter(HashMap<String, i64>);

impl FetchLimiter {
    /// Whether a fetch of `server`'s keys may start at `now` (ms), recording it if so. A first
    /// fetch (`refetch` false: we hold no key of the server) is always allowed, as before.
    pub fn allow(&mut self, server: &str, refetch: bool, now: i64) -> bool {
        if refetch && self.0.get(server).is_some_and(|t| now - t < REFETCH_INTERVAL_MS) {
            return false;
        }
        if self.0.len() >= REFETCH_MAP_CAP && !self.0.contains_key(server) {
            self.0.retain(|_, t| now - *t < REFETCH_INTERVAL_MS);
            if self.0.len() >= REFETCH_MAP_CAP {
                return !refetch;
            }
        }
        self.0.insert(server.to_owned(), now);
        true
    }
}

fn no_keys(server: &str, why: &str) -> Error {
    Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("keys of {server}: {why}"))
}

/// Unpadded base64 (as in key documents).
pub fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Locks for 100k made-up origins, each taken and released, leave the map with at most the
    /// one still held; the in-memory key cache stays at its bound.
    #[test]
    fn per_origin_state_stays_bounded() {
        let locks = std::sync::Mutex::new(HashMap::new());
        let held = single_flight_lock(&locks, "held.example");
        for i in 0..100_000 {
            let lock = single_flight_lock(&locks, &format!("origin-{i}.example"));
            drop(lock);
        }
        let _ = single_flight_lock(&locks, "last.example");
        let len = locks.lock().unwrap().len();
        assert!(len <= 2, "{len} locks kept");
        assert!(Arc::ptr_eq(&held, &single_flight_lock(&locks, "held.example")), "a held lock is shared");

        let cache = key_cache();
        for i in 0..100_000 {
            cache.insert(format!("origin-{i}.example"), HashMap::new());
        }
        cache.run_pending_tasks();
        assert!(cache.entry_count() <= KEY_CACHE_SERVERS, "{} servers cached", cache.entry_count());
    }

    fn key(valid_until_ts: i64) -> RemoteKey {
        RemoteKey { key: String::new(), valid_until_ts }
    }

    #[test]
    fn a_key_is_valid_up_to_and_including_its_end() {
        assert!(key(1000).valid_at(Some(1000)));
        assert!(key(1000).valid_at(Some(0)));
        assert!(!key(1000).valid_at(Some(1001)));
        assert!(key(0).valid_at(None), "room versions without key validity check no time");
    }

    #[test]
    fn validity_is_capped_at_seven_days_after_the_fetch() {
        let fetched = 1_000_000;
        assert_eq!(capped_valid_until(fetched + 3_600_000, fetched), fetched + 3_600_000);
        assert_eq!(capped_valid_until(i64::MAX, fetched), fetched + KEY_VALIDITY_CAP_MS);
        assert_eq!(capped_valid_until(i64::MAX, i64::MAX), i64::MAX);
    }

    #[test]
    fn keys_suffice_only_when_every_wanted_key_is_valid_at_the_time() {
        let keys = HashMap::from([("ed25519:a".to_owned(), key(2000)), ("ed25519:old".to_owned(), key(500))]);
        let a = ["ed25519:a".to_owned()];
        let old = ["ed25519:old".to_owned()];
        assert!(sufficient(&keys, &a, Some(2000)));
        assert!(!sufficient(&keys, &a, Some(2001)), "an event after the key's validity needs a refetch");
        assert!(sufficient(&keys, &old, Some(400)));
        assert!(!sufficient(&keys, &old, Some(600)), "an old key is not valid after its expired_ts");
        assert!(!sufficient(&keys, &["ed25519:b".to_owned()], Some(0)), "an unknown key needs a fetch");
        assert!(sufficient(&keys, &[], Some(1500)));
    }

    #[test]
    fn refetches_are_limited_per_server_and_the_map_is_bounded() {
        let mut limiter = FetchLimiter::default();
        assert!(limiter.allow("a", true, 0));
        assert!(!limiter.allow("a", true, REFETCH_INTERVAL_MS - 1), "a second refetch within the interval");
        assert!(limiter.allow("b", true, 1), "other servers are not held back");
        assert!(limiter.allow("a", false, 2), "a first fetch is not limited");
        assert!(limiter.allow("a", true, 2 + REFETCH_INTERVAL_MS));
        let mut full = FetchLimiter::default();
        for n in 0..REFETCH_MAP_CAP {
            assert!(full.allow(&format!("s{n}"), true, 0));
        }
        assert!(!full.allow("new", true, 1), "a full map of recent fetches refuses refetches");
        assert!(full.allow("new", false, 1), "but not first fetches");
        assert_eq!(full.0.len(), REFETCH_MAP_CAP, "and does not grow");
        assert!(full.allow("later", true, REFETCH_INTERVAL_MS + 1), "old entries are dropped when it is full");
        assert!(full.0.len() < REFETCH_MAP_CAP);
    }

    #[test]
    fn event_validity_time_depends_on_the_room_version() {
        let event: CanonicalJsonObject =
            serde_json::from_value(json!({ "origin_server_ts": 12345, "type": "m.room.message" })).unwrap();
        assert_eq!(event_key_validity_time(&RoomVersionRules::V4, &event).unwrap(), None);
        assert_eq!(event_key_validity_time(&RoomVersionRules::V5, &event).unwrap(), Some(12345));
        assert_eq!(event_key_validity_time(&RoomVersionRules::V11, &event).unwrap(), Some(12345));
        let no_ts: CanonicalJsonObject = serde_json::from_value(json!({ "type": "m.room.message" })).unwrap();
        assert!(event_key_validity_time(&RoomVersionRules::V11, &no_ts).is_err());
    }
}
