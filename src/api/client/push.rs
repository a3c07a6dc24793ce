//! Push rules (`/pushrules`) and pushers (`/pushers`).

use axum::Json;
use axum::extract::State;
use ruma::UserId;
use ruma::api::client::push::PushRule;
use ruma::api::client::push::{
    delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
    get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule, set_pushrule_actions,
    set_pushrule_enabled,
};
use ruma::push::Ruleset;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::push;
use crate::sync::SyncEngine;

fn not_found() -> Error {
    Error::not_found("Unknown push rule")
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn all(State(state): State<AppState>, req: Ruma<get_pushrules_all::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(json!({ "global": ruleset(&state.sync, &s.user_id).await? })))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn global(
    State(state): State<AppState>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(serde_json::to_value(ruleset(&state.sync, &s.user_id).await?)?))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get(State(state): State<AppState>, req: Ruma<get_pushrule::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let rules = ruleset(&state.sync, &s.user_id).await?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(Json(serde_json::to_value(PushRule::from(rule.to_owned()))?))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set(State(state): State<AppState>, req: Ruma<set_pushrule::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let mut rules = ruleset(&state.sync, &s.user_id).await?;
    rules
        .insert(req.body.rule.clone(), req.body.after.as_deref(), req.body.before.as_deref())
        .map_err(|e| Error::invalid_param(e.to_string()))?;
    save(&state.sync, &s.user_id, &rules).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete(State(state): State<AppState>, req: Ruma<delete_pushrule::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let mut rules = ruleset(&state.sync, &s.user_id).await?;
    rules.remove(req.body.kind.clone(), &req.body.rule_id).map_err(|e| match e {
        ruma::push::RemovePushRuleError::NotFound => not_found(),
        other => Error::invalid_param(other.to_string()),
    })?;
    save(&state.sync, &s.user_id, &rules).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_enabled(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let rules = ruleset(&state.sync, &s.user_id).await?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(Json(json!({ "enabled": rule.enabled() })))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_enabled(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let mut rules = ruleset(&state.sync, &s.user_id).await?;
    rules.set_enabled(req.body.kind.clone(), &req.body.rule_id, req.body.enabled).map_err(|_| not_found())?;
    save(&state.sync, &s.user_id, &rules).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_actions(
    State(state): State<AppState>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let rules = ruleset(&state.sync, &s.user_id).await?;
    let rule = rules.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(Json(json!({ "actions": rule.actions() })))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_actions(
    State(state): State<AppState>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let mut rules = ruleset(&state.sync, &s.user_id).await?;
    rules.set_actions(req.body.kind.clone(), &req.body.rule_id, req.body.actions.clone()).map_err(|_| not_found())?;
    save(&state.sync, &s.user_id, &rules).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/pushers`
pub async fn pushers(State(state): State<AppState>, req: Ruma<get_pushers::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.accounts.pushers(&s.user_id).await?))
}

/// `POST /_matrix/client/v3/pushers/set`
pub async fn set_pusher(State(state): State<AppState>, req: Ruma<set_pusher::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    state.accounts.set_pusher(&s.user_id, s.device_id.as_str(), &body).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/notifications`
pub async fn notifications(
    State(state): State<AppState>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let limit = req.body.limit.map(|l| i64::try_from(u64::from(l)).unwrap_or(i64::MAX));
    let page = state.rooms.notifications(&s.user_id, req.body.from.as_deref(), limit, req.body.only.as_deref()).await?;
    let mut body = json!({ "notifications": page.notifications });
    if let Some(next) = page.next_token {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

/// The user's ruleset; the server default is stored on first use so that `/sync` carries it.
/// A stored ruleset lacking predefined rules (stored before they existed here) gets them.
async fn ruleset(sync: &SyncEngine, user: &UserId) -> Result<Ruleset> {
    if let Some(stored) = sync.account_data(user, None, push::PUSH_RULES).await?
        && let Ok(rules) = serde_json::from_value::<Ruleset>(stored["global"].clone())
    {
        return Ok(push::rules::complete(rules, user));
    }
    let rules = push::rules::server_default(user);
    save(sync, user, &rules).await?;
    Ok(rules)
}

/// Stores the user's ruleset (and wakes their `/sync`).
async fn save(sync: &SyncEngine, user: &UserId, rules: &Ruleset) -> Result<()> {
    sync.set_account_data(user, None, push::PUSH_RULES, &json!({ "global": rules })).await
}
