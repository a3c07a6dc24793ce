//! The federation side of end-to-end encryption, independent of transport: what this server
//! answers to `user/devices`, `user/keys/query` and `user/keys/claim`, and how received
//! `m.device_list_update` / `m.signing_key_update` EDUs and `user/devices` answers update the
//! cache of remote device lists (tables `e2e_remote_devices`, `e2e_remote_device_lists`).
//!
//! A remote user's device list is applied incrementally while its EDUs arrive in order: an EDU
//! whose `prev_id` names a `stream_id` we have not applied (or a user we do not track yet)
//! marks the list stale and asks the caller to resync with `user/devices`. Every applied change
//! also takes a position on our own device-list stream, so local clients sharing a room with the
//! remote user see them in `device_lists.changed`.

use serde_json::{Map, Value, json};

use std::sync::Arc;

use ruma::ServerName;

use super::{E2ee, RemoteKeys, parse_stored};
use crate::error::{Error, Result};
use crate::ids::server_of;

/// What applying an `m.device_list_update` EDU needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceListUpdate {
    /// Applied (or an old repeat, ignored).
    Applied,
    /// A gap: fetch `user/devices/{userId}` and pass it to [`E2ee::apply_user_devices`].
    Resync,
}

fn checked_user<'a>(origin: &str, content: &'a Value) -> Result<&'a str> {
    let user =
        content.get("user_id").and_then(Value::as_str).ok_or_else(|| Error::bad_json("EDU content without user_id"))?;
    if server_of(user) != origin {
        return Err(Error::forbidden(format!("{origin} cannot send device updates for {user}")));
    }
    Ok(user)
}

impl E2ee {
    /// `GET /_matrix/federation/v1/user/devices/{userId}` for a local user.
    pub async fn federation_user_devices(&self, user_id: &str) -> Result<Value> {
        if !self.is_local(user_id) {
            return Err(Error::not_found("Not a local user"));
        }
        let keys = self.local_keys(None, user_id, &[]).await?;
        let mut devices = Vec::new();
        for d in self.db.e2e_devices_of(user_id).await? {
            let mut entry = json!({ "device_id": d.device_id });
            if let Some(name) = &d.display_name {
                entry["device_display_name"] = json!(name);
            }
            if let Some(mut k) = keys.devices.get(&d.device_id).cloned() {
                if let Some(map) = k.as_object_mut() {
                    map.remove("unsigned");
                }
                entry["keys"] = k;
            }
            devices.push(entry);
        }
        let mut out = json!({
            "user_id": user_id,
            "stream_id": self.db.e2e_user_stream_id(user_id).await?,
            "devices": devices,
        });
        if let Some(k) = keys.master {
            out["master_key"] = k;
        }
        if let Some(k) = keys.self_signing {
            out["self_signing_key"] = k;
        }
        Ok(out)
    }

    /// `POST /_matrix/federation/v1/user/keys/query`: keys of local users only, without
    /// user-signing keys or anyone's user-signing signatures.
    pub async fn federation_query(&self, device_keys: &Map<String, Value>) -> Result<Value> {
        let mut devices_out = Map::new();
        let mut master = Map::new();
        let mut self_signing = Map::new();
        for (user, wanted) in device_keys {
            if !self.is_local(user) {
                continue;
            }
            let wanted: Vec<String> = wanted
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            let keys = self.local_keys(None, user, &wanted).await?;
            devices_out.insert(user.clone(), Value::Object(keys.devices.into_iter().collect()));
            if let Some(k) = keys.master {
                master.insert(user.clone(), k);
            }
            if let Some(k) = keys.self_signing {
                self_signing.insert(user.clone(), k);
            }
        }
        Ok(json!({ "device_keys": devices_out, "master_keys": master, "self_signing_keys": self_signing }))
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`: claims for local users only.
    pub async fn federation_claim(&self, one_time_keys: &Map<String, Value>) -> Result<Value> {
        let mut wanted = Vec::new();
        for (user, devices) in one_time_keys {
            if !self.is_local(user) {
                continue;
            }
            for (device, alg) in devices.as_object().into_iter().flatten() {
                if let Some(alg) = alg.as_str() {
                    wanted.push((user.clone(), device.clone(), alg.to_owned()));
                }
            }
        }
        Ok(json!({ "one_time_keys": self.claim_local(&wanted).await? }))
    }

    /// Applies an `m.device_list_update` EDU from `origin`.
    pub async fn apply_device_list_update(&self, origin: &str, content: &Value) -> Result<DeviceListUpdate> {
        let user = checked_user(origin, content)?;
        let device = content
            .get("device_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("m.device_list_update without device_id"))?;
        let stream_id =
            content.get("stream_id").and_then(Value::as_i64).ok_or_else(|| Error::bad_json("missing stream_id"))?;
        let prev_ids: Vec<i64> =
            content.get("prev_id").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_i64).collect();
        let known = self.db.e2e_remote_list_state(user).await?;
        let gap = match known {
            None | Some((_, true)) => true,
            Some((applied, false)) => {
                if stream_id <= applied {
                    return Ok(DeviceListUpdate::Applied);
                }
                prev_ids.iter().any(|p| *p > applied)
            }
        };
        let mut tx = self.db.begin_write().await?;
        if gap {
            // Remember that the list is stale: queries go to the remote server until a resync.
            self.db.e2e_set_remote_list_state(&mut tx, user, known.map_or(0, |k| k.0), true).await?;
            self.db.e2e_insert_change(&mut tx, user, Some(device)).await?;
            tx.commit().await?;
            self.keys_changed(user).await;
            return Ok(DeviceListUpdate::Resync);
        }
        if content.get("deleted").and_then(Value::as_bool).unwrap_or(false) {
            self.db.e2e_delete_remote_device(&mut tx, user, device).await?;
        } else {
            let name = content.get("device_display_name").and_then(Value::as_str);
            let keys = content.get("keys").filter(|k| k.is_object()).map(Value::to_string);
            self.db.e2e_put_remote_device(&mut tx, user, device, name, keys.as_deref()).await?;
        }
        self.db.e2e_set_remote_list_state(&mut tx, user, stream_id, false).await?;
        self.db.e2e_insert_change(&mut tx, user, Some(device)).await?;
        tx.commit().await?;
        self.keys_changed(user).await;
        Ok(DeviceListUpdate::Applied)
    }

    /// Applies an `m.signing_key_update` EDU (or the keys of a `user/devices` answer) from `origin`.
    pub async fn apply_signing_key_update(&self, origin: &str, content: &Value) -> Result<()> {
        let user = checked_user(origin, content)?;
        let mut tx = self.db.begin_write().await?;
        let mut any = false;
        for (field, kind) in [("master_key", "master"), ("self_signing_key", "self_signing")] {
            if let Some(key) = content.get(field).filter(|k| k.is_object()) {
                if key.get("user_id").and_then(Value::as_str) != Some(user) {
                    continue;
                }
                self.db.e2e_set_cross_signing_key(&mut tx, user, kind, &key.to_string()).await?;
                any = true;
            }
        }
        if any {
            self.db.e2e_insert_change(&mut tx, user, None).await?;
        }
        tx.commit().await?;
        if any {
            self.keys_changed(user).await;
        }
        Ok(())
    }

    /// Replaces the cached device list of remote `user` with a `user/devices` answer.
    pub async fn apply_user_devices(&self, origin: &str, user: &str, answer: &Value) -> Result<()> {
        if server_of(user) != origin || answer.get("user_id").and_then(Value::as_str) != Some(user) {
            return Err(Error::forbidden(format!("{origin} answered for the wrong user")));
        }
        let stream_id = answer.get("stream_id").and_then(Value::as_i64).unwrap_or(0);
        let mut tx = self.db.begin_write().await?;
        self.db.e2e_clear_remote_devices(&mut tx, user).await?;
        for d in answer.get("devices").and_then(Value::as_array).into_iter().flatten() {
            let Some(device) = d.get("device_id").and_then(Value::as_str) else { continue };
            let keys = d.get("keys").filter(|k| k.is_object()).map(Value::to_string);
            let name = d.get("device_display_name").and_then(Value::as_str);
            self.db.e2e_put_remote_device(&mut tx, user, device, name, keys.as_deref()).await?;
        }
        for (field, kind) in [("master_key", "master"), ("self_signing_key", "self_signing")] {
            if let Some(key) = answer.get(field).filter(|k| k.get("user_id").and_then(Value::as_str) == Some(user)) {
                self.db.e2e_set_cross_signing_key(&mut tx, user, kind, &key.to_string()).await?;
            }
        }
        self.db.e2e_set_remote_list_state(&mut tx, user, stream_id, false).await?;
        self.db.e2e_insert_change(&mut tx, user, None).await?;
        tx.commit().await?;
        self.keys_changed(user).await;
        Ok(())
    }

    /// The cached keys of a remote user whose list is tracked and fresh, in `/keys/query`
    /// form: `(devices, master, self_signing)`; None when the cache cannot answer.
    pub async fn cached_remote_keys(
        &self,
        user: &str,
        wanted: &[String],
    ) -> Result<Option<(Map<String, Value>, Option<Value>, Option<Value>)>> {
        match self.db.e2e_remote_list_state(user).await? {
            Some((_, false)) => {}
            _ => return Ok(None),
        }
        let mut devices = Map::new();
        for d in self.db.e2e_remote_devices(user).await? {
            if !wanted.is_empty() && !wanted.contains(&d.device_id) {
                continue;
            }
            let Some(keys) = d.keys else { continue };
            let mut keys = parse_stored(&keys)?;
            if let Some(map) = keys.as_object_mut() {
                let unsigned = match &d.display_name {
                    Some(name) => json!({ "device_display_name": name }),
                    None => json!({}),
                };
                map.insert("unsigned".into(), unsigned);
            }
            devices.insert(d.device_id, keys);
        }
        let master = self.db.e2e_cross_signing_key(user, "master").await?.as_deref().map(parse_stored).transpose()?;
        let ssk =
            self.db.e2e_cross_signing_key(user, "self_signing").await?.as_deref().map(parse_stored).transpose()?;
        Ok(Some((devices, master, ssk)))
    }
}

impl E2ee {
    /// Fetches remote `user`'s whole device list with `user/devices` and replaces the cache
    /// (after a `prev_id` gap). Without federation this does nothing.
    pub async fn resync_remote(&self, user: &str) -> Result<()> {
        let Some(remote) = self.remote() else { return Ok(()) };
        let server = server_of(user).to_owned();
        let answer = remote.user_devices(&server, user).await?;
        self.apply_user_devices(&server, user, &answer).await
    }

    /// Applies an `m.device_list_update` EDU and, on a gap, resyncs the user's list in the
    /// background, so the sending server's transaction is not held up by a request back to it.
    pub async fn receive_device_list_update(self: &std::sync::Arc<Self>, origin: &str, content: &Value) -> Result<()> {
        if self.apply_device_list_update(origin, content).await? == DeviceListUpdate::Resync {
            let (engine, user) = (self.clone(), content["user_id"].as_str().unwrap_or_default().to_owned());
            tokio::spawn(async move {
                if let Err(e) = engine.resync_remote(&user).await {
                    tracing::info!(%user, error = %e, "device list resync failed; the list stays stale");
                }
            });
        }
        Ok(())
    }
}

/// The e2ee engine's view of other servers' key endpoints, over this transport.
pub struct FederationKeys(pub Arc<crate::federation::Federation>);

#[async_trait::async_trait]
impl RemoteKeys for FederationKeys {
    async fn query(&self, server: &str, body: &Value) -> Result<Value> {
        let server = ServerName::parse(server).map_err(|e| Error::invalid_param(e.to_string()))?;
        self.0.request(&server, http::Method::POST, "/_matrix/federation/v1/user/keys/query", Some(body)).await
    }
    async fn claim(&self, server: &str, body: &Value) -> Result<Value> {
        let server = ServerName::parse(server).map_err(|e| Error::invalid_param(e.to_string()))?;
        self.0.request(&server, http::Method::POST, "/_matrix/federation/v1/user/keys/claim", Some(body)).await
    }
    async fn user_devices(&self, server: &str, user_id: &str) -> Result<Value> {
        let server = ServerName::parse(server).map_err(|e| Error::invalid_param(e.to_string()))?;
        let path = format!(
            "/_matrix/federation/v1/user/devices/{}",
            url::form_urlencoded::byte_serialize(user_id.as_bytes()).collect::<String>()
        );
        self.0.request(&server, http::Method::GET, &path, None).await
    }
}
