//! To-device messages: `PUT /sendToDevice/{type}/{txnId}` and their delivery in `/sync`.
//!
//! A send is idempotent per (sender, device, txnId), also across restarts (`to_device_txns`,
//! checked and written in the transaction that queues the messages). Each message waits in
//! `to_device_messages` under its own `to_device` stream position until a later `/sync` of the
//! recipient device passes a `since` at or after it: only then is it deleted, so a response
//! lost on the way to the client is delivered again when the client retries with its old token.
//! Messages for users of other servers are queued as `m.direct_to_device` EDUs, one per server;
//! inbound EDUs come in through [`SyncEngine::receive_remote_to_device`].

use std::collections::BTreeMap;

use ruma::UserId;
use serde_json::{Map, Value, json};

use super::SyncEngine;
use crate::error::{Error, Result};
use crate::storage::Db;
use crate::storage::outbox::Outbox;
use crate::storage::sync::{ToDeviceRow, streams};

/// Most messages delivered in one sync response; the rest follow in the next.
pub const BATCH: i64 = 100;

/// One message for one device of a local user.
struct Delivery {
    user: String,
    device: String,
    content: String,
}

impl SyncEngine {
    /// Sends to-device messages (`messages`: user id → device id or `*` → content) from a local
    /// device; a repeated `(sender, device, txn_id)` does nothing.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &str,
        event_type: &str,
        txn_id: &str,
        messages: &Value,
    ) -> Result<()> {
        let messages = messages.as_object().ok_or_else(|| Error::bad_json("messages must be an object"))?;
        let (local, remote) = self.split_recipients(messages).await?;
        let message_id = crate::ids::random_alpha(16);
        let mut edus = Vec::new();
        for (server, msgs) in remote {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": { "sender": sender, "type": event_type, "message_id": message_id, "messages": msgs },
            });
            edus.push((server, edu.to_string()));
        }
        let mut tx = self.db.begin_write().await?;
        if !self.db.insert_to_device_txn(&mut tx, sender.as_str(), sender_device, txn_id).await? {
            return Ok(());
        }
        let woken = self.queue_deliveries(&mut tx, sender.as_str(), event_type, &local).await?;
        for (server, edu) in &edus {
            self.db.queue_outbox(&mut tx, server, Outbox::Edu(edu)).await?;
        }
        let for_appservices = self.to_device_for_appservices(&mut tx, sender.as_str(), event_type, &local).await?;
        tx.commit().await?;
        self.notifier.wake(woken.iter().map(String::as_str));
        if !edus.is_empty() || for_appservices {
            self.outbox_wakeup.notify_waiters();
        }
        Ok(())
    }

    /// An `m.direct_to_device` EDU from another server (the caller checked that `sender`
    /// belongs to `origin`); a repeated `(sender, message_id)` does nothing. Recipients on other
    /// servers are ignored.
    pub async fn receive_remote_to_device(
        &self,
        origin: &str,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        messages: &Value,
    ) -> Result<()> {
        let messages = messages.as_object().ok_or_else(|| Error::bad_json("messages must be an object"))?;
        let (local, _) = self.split_recipients(messages).await?;
        let mut tx = self.db.begin_write().await?;
        if !self.db.insert_to_device_txn(&mut tx, sender.as_str(), origin, message_id).await? {
            return Ok(());
        }
        let woken = self.queue_deliveries(&mut tx, sender.as_str(), event_type, &local).await?;
        tx.commit().await?;
        self.notifier.wake(woken.iter().map(String::as_str));
        Ok(())
    }

    /// Local deliveries (with `*` expanded to every device of the user, unknown devices
    /// dropped) and per-server message maps for remote users.
    async fn split_recipients(
        &self,
        messages: &Map<String, Value>,
    ) -> Result<(Vec<Delivery>, BTreeMap<String, Map<String, Value>>)> {
        let mut local = Vec::new();
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (user, by_device) in messages {
            let user_id = UserId::parse(user).map_err(|_| Error::invalid_param(format!("Invalid user id {user}")))?;
            let by_device =
                by_device.as_object().ok_or_else(|| Error::bad_json("messages must map user ids to objects"))?;
            if !self.is_local(user) {
                remote.entry(user_id.server_name().to_string()).or_default().insert(user.clone(), json!(by_device));
                continue;
            }
            let devices = self.db.device_ids(user).await?;
            for (device, content) in by_device {
                if !content.is_object() {
                    return Err(Error::bad_json("Message content must be an object"));
                }
                let targets: Vec<&String> = if device == "*" {
                    devices.iter().collect()
                } else {
                    devices.iter().filter(|d| *d == device).collect()
                };
                for d in targets {
                    local.push(Delivery { user: user.clone(), device: d.clone(), content: content.to_string() });
                }
            }
        }
        Ok((local, remote))
    }

    /// MSC4203: to-device messages for devices of appservice users go into the appservice's
    /// transactions too (`de.sorunome.msc2409.to_device`, with `to_user_id`/`to_device_id`), as
    /// Synapse does for appservices with `receive_ephemeral`.
    async fn to_device_for_appservices(
        &self,
        tx: &mut crate::storage::WriteTx,
        sender: &str,
        event_type: &str,
        deliveries: &[Delivery],
    ) -> Result<bool> {
        let appservices = self.rooms.appservices();
        if !appservices.any_ephemeral_receivers() {
            return Ok(false);
        }
        let mut any = false;
        for m in deliveries {
            let message = json!({
                "type": event_type,
                "sender": sender,
                "to_user_id": m.user,
                "to_device_id": m.device,
                "content": serde_json::from_str::<Value>(&m.content)?,
            });
            any |= appservices.queue_ephemeral(tx, "to_device", &message, |reg| reg.is_user(&m.user)).await?;
        }
        Ok(any)
    }

    async fn queue_deliveries(
        &self,
        tx: &mut crate::storage::WriteTx,
        sender: &str,
        event_type: &str,
        deliveries: &[Delivery],
    ) -> Result<Vec<String>> {
        let mut woken = Vec::new();
        for m in deliveries {
            let pos = Db::next_stream_position(tx, streams::TO_DEVICE).await?;
            self.db.insert_to_device(tx, pos, &m.user, &m.device, sender, event_type, &m.content).await?;
            woken.push(m.user.clone());
        }
        woken.sort_unstable();
        woken.dedup();
        Ok(woken)
    }
}

/// The to-device events of a sync response.
pub fn to_device_events(rows: &[ToDeviceRow]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            json!({
                "sender": r.sender,
                "type": r.event_type,
                "content": serde_json::from_str::<Value>(&r.content).unwrap_or_else(|_| json!({})),
            })
        })
        .collect()
}
