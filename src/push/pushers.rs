//! Setting and listing pushers (`/pushers`, `/pushers/set`), with the spec's limits.

use ruma::UserId;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::storage::Db;
use crate::storage::push::PusherRow;
use crate::storage::sync::streams;

/// The path every HTTP pusher's gateway URL must have (push gateway API v1).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

fn text<'a>(body: &'a Value, key: &str, max: usize) -> Result<&'a str> {
    let v = match body.get(key) {
        None | Some(Value::Null) => return Err(Error::missing_param(format!("Missing {key}"))),
        Some(v) => v.as_str().ok_or_else(|| Error::invalid_param(format!("{key} must be a string")))?,
    };
    if v.len() > max {
        return Err(Error::invalid_param(format!("{key} is longer than {max} bytes")));
    }
    Ok(v)
}

/// Applies a `POST /pushers/set` body for `user`, whose access token belongs to `device`.
pub async fn set(db: &Db, user: &UserId, device: &str, body: &Value) -> Result<()> {
    let app_id = text(body, "app_id", 64)?;
    let pushkey = text(body, "pushkey", 512)?;
    let kind = match body.get("kind") {
        None => return Err(Error::missing_param("Missing kind")),
        // `kind: null` deletes the pusher.
        Some(Value::Null) => {
            db.delete_pusher(user.as_str(), app_id, pushkey).await?;
            return Ok(());
        }
        Some(k) => k.as_str().ok_or_else(|| Error::invalid_param("kind must be a string or null"))?,
    };
    match kind {
        "http" => {}
        "email" => {
            return Err(Error::invalid_param("Email pushers are not supported: this server binds no e-mail addresses"));
        }
        other => return Err(Error::invalid_param(format!("Unknown pusher kind {other}"))),
    }
    let data = body.get("data").filter(|d| d.is_object()).ok_or_else(|| Error::missing_param("Missing data"))?;
    let url =
        data.get("url").and_then(Value::as_str).ok_or_else(|| Error::missing_param("An http pusher needs data.url"))?;
    let parsed = url::Url::parse(url).map_err(|_| Error::invalid_param("data.url is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!("data.url must be an http(s) URL with the path {NOTIFY_PATH}")));
    }
    if let Some(format) = data.get("format")
        && format != "event_id_only"
    {
        return Err(Error::invalid_param("data.format must be event_id_only when given"));
    }
    let data_json = serde_json::to_string(data).map_err(Error::internal)?;
    if data_json.len() > 4096 {
        return Err(Error::invalid_param("data is larger than 4096 bytes"));
    }
    let profile_tag = match body.get("profile_tag") {
        None | Some(Value::Null) => None,
        Some(_) => Some(text(body, "profile_tag", 32)?.to_owned()),
    };
    let row = PusherRow {
        user_id: user.to_string(),
        app_id: app_id.to_owned(),
        pushkey: pushkey.to_owned(),
        kind: kind.to_owned(),
        app_display_name: text(body, "app_display_name", 256)?.to_owned(),
        device_display_name: text(body, "device_display_name", 256)?.to_owned(),
        profile_tag,
        lang: text(body, "lang", 8)?.to_owned(),
        data: data_json,
        device_id: Some(device.to_owned()),
        created_ts: 0,
        last_stream: 0,
    };
    let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
    // Only events after this moment are pushed.
    let now = db.current_stream_position(streams::EVENTS).await?;
    db.set_pusher(&row, append, now).await
}

/// The user's pushers as `GET /pushers` shows them.
pub async fn list(db: &Db, user: &UserId) -> Result<Value> {
    let pushers: Vec<Value> = db
        .pushers_of(user.as_str())
        .await?
        .into_iter()
        .map(|p| {
            let mut v = json!({
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "kind": p.kind,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name,
                "lang": p.lang,
                "data": serde_json::from_str::<Value>(&p.data).unwrap_or_else(|_| json!({})),
            });
            if let Some(tag) = p.profile_tag {
                v["profile_tag"] = json!(tag);
            }
            v
        })
        .collect();
    Ok(json!({ "pushers": pushers }))
}
