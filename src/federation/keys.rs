//! Server signing keys over federation: our self-signed key document, remote keys fetched from
//! each server's key endpoint and cached (memory and database) until their `valid_until_ts`,
//! and the notary answers built from the cached documents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::CanonicalJsonObject;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use serde_json::{Value, json};

use super::Federation;
use crate::error::{Error, Result};
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

/// A remote key: unpadded base64 public key and how long it is valid.
#[derive(Debug, Clone)]
pub struct RemoteKey {
    /// Unpadded base64.
    pub key: String,
    /// Valid until (ms); for old keys, the expiry time.
    pub valid_until_ts: i64,
}

impl Federation {
    /// Our `GET /_matrix/key/v2/server` document, signed by the current key.
    pub fn own_keys_json(&self) -> Result<Value> {
        let mut old = serde_json::Map::new();
        for (id, key) in &self.keys.old {
            // We do not record when a key was retired; "now" tells peers to trust it for
            // signatures made up to this moment.
            old.insert(id.clone(), json!({ "key": key, "expired_ts": now_ms() }));
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

    /// The keys of `server` we know, fetching them if `wanted` names a key we lack or if all we
    /// have expired.
    pub async fn server_keys(&self, server: &str, wanted: &[String]) -> Result<HashMap<String, RemoteKey>> {
        if server == self.server_name.as_str() {
            let mut out = HashMap::new();
            out.insert(
                self.keys.key_id(),
                RemoteKey { key: self.keys.public_key_base64(), valid_until_ts: now_ms() + OWN_KEY_VALIDITY_MS },
            );
            for (id, key) in &self.keys.old {
                out.insert(id.clone(), RemoteKey { key: key.clone(), valid_until_ts: 0 });
            }
            return Ok(out);
        }
        let have = |keys: &HashMap<String, RemoteKey>| {
            let now = now_ms();
            !keys.is_empty()
                && wanted.iter().all(|w| keys.contains_key(w))
                && keys.values().any(|k| k.valid_until_ts > now)
        };
        if let Some(keys) = self.key_cache.get(server)
            && have(&keys)
        {
            return Ok(keys);
        }
        // One fetch per server at a time.
        let lock = single_flight_lock(&self.key_fetch_locks, server);
        let _guard = lock.lock().await;
        let stored = self.stored_keys(server).await?;
        if have(&stored) {
            self.key_cache.insert(server.to_owned(), stored.clone());
            return Ok(stored);
        }
        match self.fetch_keys(server).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(server, error = %e.message, "fetching server keys failed");
                // Use what we have, even if expired, rather than nothing.
                if !stored.is_empty() {
                    return Ok(stored);
                }
                return Err(e);
            }
        }
        let keys = self.stored_keys(server).await?;
        self.key_cache.insert(server.to_owned(), keys.clone());
        Ok(keys)
    }

    async fn stored_keys(&self, server: &str) -> Result<HashMap<String, RemoteKey>> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_keys WHERE server_name = $1",
        )
        .bind(server)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
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

    /// Verifies and stores a key document of `server`.
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
        let mut map = PublicKeyMap::new();
        map.insert(server.to_owned(), set);
        let object: CanonicalJsonObject = serde_json::from_value(doc.clone()).map_err(|_| bad("not canonical JSON"))?;
        ruma::signatures::verify_json(&map, &object).map_err(|e| bad(&format!("bad self-signature: {e}")))?;

        let mut tx = self.db.begin_write().await?;
        for (id, v) in verify {
            sqlx::query(
                "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
                 VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 public_key = excluded.public_key, valid_until_ts = excluded.valid_until_ts, expired_ts = NULL",
            )
            .bind(server)
            .bind(id)
            .bind(v["key"].as_str().unwrap_or_default())
            .bind(valid_until)
            .execute(&mut *tx.tx)
            .await?;
        }
        if let Some(old) = doc["old_verify_keys"].as_object() {
            for (id, v) in old {
                let (Some(key), Some(expired)) = (v["key"].as_str(), v["expired_ts"].as_i64()) else { continue };
                sqlx::query(
                    "INSERT INTO server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                     expired_ts = excluded.expired_ts",
                )
                .bind(server)
                .bind(id)
                .bind(key)
                .bind(expired)
                .bind(expired)
                .execute(&mut *tx.tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO server_key_responses (server_name, json, valid_until_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (server_name) DO UPDATE SET json = excluded.json, valid_until_ts = excluded.valid_until_ts",
        )
        .bind(server)
        .bind(doc.to_string())
        .bind(valid_until)
        .execute(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        self.key_cache.invalidate(server);
        Ok(())
    }

    /// A ruma key map for the given servers (each fetched as needed).
    pub async fn key_map(&self, servers: &[(String, Vec<String>)]) -> Result<PublicKeyMap> {
        let mut map = PublicKeyMap::new();
        for (server, wanted) in servers {
            let keys = self.server_keys(server, wanted).await?;
            let mut set = BTreeMap::new();
            for (id, k) in keys {
                if let Ok(b) = Base64::parse(&k.key) {
                    set.insert(id, b);
                }
            }
            map.insert(server.clone(), set);
        }
        Ok(map)
    }

    /// The notary answer for one server: its key document countersigned by us.
    pub async fn notary_keys(&self, server: &str) -> Result<Vec<Value>> {
        if server == self.server_name.as_str() {
            return Ok(vec![self.own_keys_json()?]);
        }
        let _ = self.server_keys(server, &[]).await;
        let row: Option<(String,)> = sqlx::query_as("SELECT json FROM server_key_responses WHERE server_name = $1")
            .bind(server)
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            Some((json,)) => Ok(vec![self.sign_value(serde_json::from_str(&json)?)?]),
            None => Ok(Vec::new()),
        }
    }
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
}
