//! Registration tokens: `/_synapse/admin/v1/registration_tokens[/new|/{token}]`, stored in the
//! database and accepted by the `m.login.registration_token` stage of registration alongside
//! `registration.tokens` of the configuration.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminPath, AdminQuery};
use crate::accounts::admin::RegistrationToken;
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::storage::now_ms;

/// Longest token (Synapse's limit).
const MAX_TOKEN_LEN: usize = 64;
/// Characters a token may hold (Synapse's: the URL-safe unreserved ones).
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

fn token_json(t: &RegistrationToken) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Query of the list.
#[derive(Deserialize)]
pub struct ListQuery {
    valid: Option<bool>,
}

/// `GET /_synapse/admin/v1/registration_tokens[?valid=true|false]`
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    let tokens = state.accounts.registration_tokens(q.valid).await?;
    Ok(Json(json!({ "registration_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() })))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`
pub async fn get(State(state): State<AppState>, _: Admin, AdminPath(token): AdminPath<String>) -> Result<Json<Value>> {
    let t = state.accounts.registration_token(&token).await?;
    Ok(Json(token_json(&t.ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))?)))
}

/// A JSON field that may be absent, `null` or a value.
fn nullable_int(body: &serde_json::Map<String, Value>, key: &str) -> Result<Change> {
    match body.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Ok(Some(Some(n))),
            _ => Err(Error::invalid_param(format!("{key} must be a non-negative integer or null"))),
        },
    }
}

/// Checks `uses_allowed` and `expiry_time` (which must not be in the past).
/// A change of a nullable field: absent (`None`), `null` (`Some(None)`) or a value.
type Change = Option<Option<i64>>;

fn limits(body: &serde_json::Map<String, Value>) -> Result<(Change, Change)> {
    let uses_allowed = nullable_int(body, "uses_allowed")?;
    let expiry_time = nullable_int(body, "expiry_time")?;
    if let Some(Some(t)) = expiry_time
        && t < now_ms()
    {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok((uses_allowed, expiry_time))
}

/// `POST /_synapse/admin/v1/registration_tokens/new`: `token` (or a random one of `length`,
/// default 16), `uses_allowed`, `expiry_time`.
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    AdminJson(body): AdminJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>> {
    let (uses_allowed, expiry_time) = limits(&body)?;
    let accounts = &state.accounts;
    let token = match body.get("token") {
        Some(Value::String(t)) => {
            if t.is_empty() || t.len() > MAX_TOKEN_LEN || !t.bytes().all(|b| TOKEN_CHARS.contains(&b)) {
                return Err(Error::invalid_param(
                    "token must consist only of characters matched by the regex [A-Za-z0-9._~-] and be 1 to 64 characters",
                ));
            }
            if !accounts.insert_registration_token(t, uses_allowed.flatten(), expiry_time.flatten()).await? {
                return Err(Error::invalid_param(format!("Token already in use: {t}")));
            }
            t.clone()
        }
        Some(Value::Null) | None => {
            let length = match body.get("length") {
                None => 16,
                Some(v) => match v.as_u64() {
                    Some(n @ 1..=64) => n as usize,
                    _ => return Err(Error::invalid_param("length must be an integer > 0 and <= 64")),
                },
            };
            // A clash of random tokens is unlikely but possible with short lengths.
            let mut made = None;
            for _ in 0..5 {
                let t = random_token(length);
                if accounts.insert_registration_token(&t, uses_allowed.flatten(), expiry_time.flatten()).await? {
                    made = Some(t);
                    break;
                }
            }
            made.ok_or_else(|| Error::internal("could not make a unique registration token"))?
        }
        Some(_) => return Err(Error::invalid_param("token must be a string")),
    };
    let t = accounts.registration_token(&token).await?.ok_or_else(|| Error::internal("token vanished"))?;
    Ok(Json(token_json(&t)))
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    // Without `.` and `~`, like Synapse's random tokens.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`: changes `uses_allowed` / `expiry_time`.
pub async fn update(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(token): AdminPath<String>,
    AdminJson(body): AdminJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>> {
    let (uses_allowed, expiry_time) = limits(&body)?;
    if !state.accounts.update_registration_token(&token, uses_allowed, expiry_time).await? {
        return Err(Error::not_found(format!("No such registration token: {token}")));
    }
    let t = state.accounts.registration_token(&token).await?;
    Ok(Json(token_json(&t.ok_or_else(|| Error::not_found(format!("No such registration token: {token}")))?)))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(token): AdminPath<String>,
) -> Result<Json<Value>> {
    if !state.accounts.delete_registration_token(&token).await? {
        return Err(Error::not_found(format!("No such registration token: {token}")));
    }
    Ok(Json(json!({})))
}
