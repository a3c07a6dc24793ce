//! Cross-signing: `/keys/device_signing/upload` (master, self-signing, user-signing keys) and
//! `/keys/signatures/upload` (signatures on devices and on master keys).

use serde_json::{Map, Value, json};

use super::device_lists::device_list_update_edu;
use super::{E2ee, cross_signing_public_key, parse_stored, signed_part, verify_signature};
use crate::error::{Error, Result};
use crate::storage::e2ee::SignatureRow;
use crate::storage::outbox::Outbox;

/// The three key types and the JSON field each is uploaded in.
pub const KEY_TYPES: [(&str, &str); 3] =
    [("master", "master_key"), ("self_signing", "self_signing_key"), ("user_signing", "user_signing_key")];

/// 400 `M_INVALID_SIGNATURE`.
fn invalid_signature(msg: impl Into<String>) -> Error {
    Error::new(http::StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", msg)
}

impl E2ee {
    /// Whether `/keys/device_signing/upload` with `body` may skip User-Interactive Auth: when
    /// the user has no master key yet (first set-up, as Synapse allows), or when every key in
    /// the body equals the stored one (a client retrying an upload that already happened).
    pub async fn signing_upload_needs_uia(&self, user_id: &str, body: &Value) -> Result<bool> {
        let Some(_) = self.db.e2e_cross_signing_key(user_id, "master").await? else {
            return Ok(false);
        };
        for (kind, field) in KEY_TYPES {
            let Some(new) = body.get(field).filter(|v| !v.is_null()) else { continue };
            let stored = self.db.e2e_cross_signing_key(user_id, kind).await?;
            if stored.as_deref().map(parse_stored).transpose()?.as_ref() != Some(new) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `POST /keys/device_signing/upload` after UIA: validates and stores the keys.
    ///
    /// Each key must belong to the caller, carry its usage and exactly one ed25519 key; the
    /// self-signing and user-signing keys must be signed by the master key (the one in the
    /// request, else the stored one).
    pub async fn upload_signing_keys(&self, user_id: &str, body: &Value) -> Result<()> {
        let mut new_keys = Vec::new();
        for (kind, field) in KEY_TYPES {
            let Some(key) = body.get(field).filter(|v| !v.is_null()) else { continue };
            if key.get("user_id").and_then(Value::as_str) != Some(user_id) {
                return Err(Error::invalid_param(format!("{field}: user_id does not match the authenticated user")));
            }
            let usage_ok =
                key.get("usage").and_then(Value::as_array).is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
            if !usage_ok {
                return Err(Error::invalid_param(format!("{field}: usage must contain {kind:?}")));
            }
            if cross_signing_public_key(key).is_none() {
                return Err(Error::invalid_param(format!("{field}: must hold exactly one key, ed25519:<public key>")));
            }
            new_keys.push((kind, key.clone()));
        }
        if new_keys.is_empty() {
            return Ok(());
        }
        let master = match new_keys.iter().find(|(k, _)| *k == "master") {
            Some((_, key)) => Some(key.clone()),
            None => self.db.e2e_cross_signing_key(user_id, "master").await?.as_deref().map(parse_stored).transpose()?,
        };
        for (kind, key) in &new_keys {
            if *kind == "master" {
                continue;
            }
            let Some((master_id, master_public)) = master.as_ref().and_then(cross_signing_public_key) else {
                return Err(invalid_signature("No master key to verify the signature with"));
            };
            verify_signature(key, user_id, &master_id, &master_public)
                .map_err(|e| invalid_signature(format!("{kind} key: {e}")))?;
        }

        let mut tx = self.db.begin_write().await?;
        for (kind, key) in &new_keys {
            self.db.e2e_set_cross_signing_key(&mut tx, user_id, kind, &key.to_string()).await?;
        }
        self.db.e2e_record_device_change(&mut tx, user_id, None, false, device_list_update_edu).await?;
        // Remote servers learn master and self-signing keys (the user-signing key is private
        // to the user's own devices).
        let mut content = json!({ "user_id": user_id });
        let mut public_change = false;
        for (kind, key) in &new_keys {
            if *kind != "user_signing" {
                content[if *kind == "master" { "master_key" } else { "self_signing_key" }] = key.clone();
                public_change = true;
            }
        }
        if public_change {
            let edu = json!({ "edu_type": "m.signing_key_update", "content": content }).to_string();
            for server in self.db.e2e_remote_servers_sharing(&mut tx, user_id).await? {
                self.db.queue_outbox(&mut tx, &server, Outbox::Edu(&edu)).await?;
            }
        }
        tx.commit().await?;
        self.keys_changed(user_id).await;
        Ok(())
    }

    /// `POST /keys/signatures/upload`: `body` is `{user_id: {key_id: signed object}}`. Returns
    /// the `failures` map (`{user_id: {key_id: {errcode, error}}}`); every signature that
    /// verifies is stored even when others fail.
    pub async fn upload_signatures(&self, user_id: &str, body: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut failures: Map<String, Value> = Map::new();
        let mut stored: Vec<(String, Option<String>, SignatureRow)> = Vec::new();
        for (target_user, objects) in body {
            let Some(objects) = objects.as_object() else { continue };
            for (key_id, object) in objects {
                match self.check_signature_upload(user_id, target_user, key_id, object).await {
                    Ok(rows) => stored.extend(rows.into_iter().map(|(dev, row)| (target_user.clone(), dev, row))),
                    Err(e) => {
                        let entry = failures.entry(target_user.clone()).or_insert_with(|| json!({}));
                        entry[key_id.as_str()] = json!({ "errcode": e.errcode, "error": e.message });
                    }
                }
            }
        }
        if stored.is_empty() {
            return Ok(failures);
        }
        let mut tx = self.db.begin_write().await?;
        let mut changed_users = Vec::new();
        for (target_user, device, row) in &stored {
            self.db.e2e_add_signature(&mut tx, target_user, row).await?;
            // A signature changes what /keys/query answers: for the signer's own keys everyone
            // must re-query; a user-signing signature on someone else is seen by the signer only.
            let changed = if target_user == user_id { target_user } else { user_id };
            let device = if target_user == user_id { device.as_deref() } else { None };
            self.db.e2e_record_device_change(&mut tx, changed, device, false, device_list_update_edu).await?;
            changed_users.push(changed.to_owned());
        }
        tx.commit().await?;
        changed_users.sort();
        changed_users.dedup();
        for user in changed_users {
            self.keys_changed(&user).await;
        }
        Ok(failures)
    }

    /// Validates one uploaded signed object; returns the signature rows to store (with the
    /// device id when a device was signed).
    async fn check_signature_upload(
        &self,
        me: &str,
        target_user: &str,
        key_id: &str,
        object: &Value,
    ) -> Result<Vec<(Option<String>, SignatureRow)>> {
        if object.get("user_id").and_then(Value::as_str) != Some(target_user) {
            return Err(invalid_signature("user_id of the signed object does not match"));
        }
        let my_master = self.cross_key(me, "master").await?;
        if target_user == me {
            // Our own master key, signed by one of our devices.
            if let Some((_, master_public)) = my_master.as_ref().and_then(cross_signing_public_key)
                && key_id == master_public
            {
                let master = my_master.expect("checked");
                if signed_part(object) != signed_part(&master) {
                    return Err(invalid_signature("The signed master key does not match the stored one"));
                }
                let mut rows = Vec::new();
                for (signer_key, _) in signatures_by(object, me) {
                    let Some(device) = signer_key.strip_prefix("ed25519:") else { continue };
                    if device == master_public {
                        continue;
                    }
                    let Some(keys) = self.db.e2e_device_keys(me, device).await? else { continue };
                    let keys = parse_stored(&keys)?;
                    let Some(device_public) = keys["keys"][signer_key.as_str()].as_str() else { continue };
                    verify_signature(object, me, &signer_key, device_public).map_err(invalid_signature)?;
                    rows.push((None, row(key_id, me, &signer_key, object)));
                }
                if rows.is_empty() {
                    return Err(invalid_signature("No signature by a known device of the user"));
                }
                return Ok(rows);
            }
            // One of our devices, signed by our self-signing key.
            let Some(device_keys) = self.db.e2e_device_keys(me, key_id).await? else {
                return Err(Error::not_found(format!("Unknown device {key_id}")));
            };
            if signed_part(object) != signed_part(&parse_stored(&device_keys)?) {
                return Err(invalid_signature("The signed device keys do not match the stored ones"));
            }
            let Some((ssk_id, ssk_public)) =
                self.cross_key(me, "self_signing").await?.as_ref().and_then(cross_signing_public_key)
            else {
                return Err(invalid_signature("No self-signing key to sign devices with"));
            };
            verify_signature(object, me, &ssk_id, &ssk_public).map_err(invalid_signature)?;
            return Ok(vec![(Some(key_id.to_owned()), row(key_id, me, &ssk_id, object))]);
        }
        // Another user's master key, signed by our user-signing key.
        let Some(their_master) = self.cross_key(target_user, "master").await? else {
            return Err(Error::not_found(format!("No master key known for {target_user}")));
        };
        if cross_signing_public_key(&their_master).map(|(_, p)| p).as_deref() != Some(key_id) {
            return Err(invalid_signature(format!(
                "{key_id} is not the master key of {target_user} (only master keys of other users can be signed)"
            )));
        }
        if signed_part(object) != signed_part(&their_master) {
            return Err(invalid_signature("The signed master key does not match the stored one"));
        }
        let Some((usk_id, usk_public)) =
            self.cross_key(me, "user_signing").await?.as_ref().and_then(cross_signing_public_key)
        else {
            return Err(invalid_signature("No user-signing key to sign other users with"));
        };
        verify_signature(object, me, &usk_id, &usk_public).map_err(invalid_signature)?;
        Ok(vec![(None, row(key_id, me, &usk_id, object))])
    }

    async fn cross_key(&self, user_id: &str, kind: &str) -> Result<Option<Value>> {
        self.db.e2e_cross_signing_key(user_id, kind).await?.as_deref().map(parse_stored).transpose()
    }
}

/// The signatures by `signer` in an object: `(key id, signature)`.
fn signatures_by(object: &Value, signer: &str) -> Vec<(String, String)> {
    object["signatures"][signer]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect())
        .unwrap_or_default()
}

fn row(target_key_id: &str, signer: &str, signer_key_id: &str, object: &Value) -> SignatureRow {
    SignatureRow {
        target_key_id: target_key_id.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id: signer_key_id.to_owned(),
        signature: object["signatures"][signer][signer_key_id].as_str().unwrap_or_default().to_owned(),
    }
}
