//! Endpoints for application services: the ping, the third-party lookups answered by the
//! registered appservices, and the appservices' room directory lists.

use axum::Json;
use axum::extract::State;
use ruma::api::client::appservice::{request_ping, set_room_visibility};
use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
    get_user_for_user_id,
};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::{Ruma, RumaResponse};
use crate::error::{Error, Result};

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
pub async fn ping(
    State(state): State<AppState>,
    req: Ruma<request_ping::v1::Request>,
) -> Result<RumaResponse<request_ping::v1::Response>> {
    let s = req.session()?;
    let reg = match &s.appservice {
        Some(reg) if reg.id == req.body.appservice_id => reg.clone(),
        _ => return Err(Error::forbidden("Provided access token is not the appservice's as_token")),
    };
    let took = state.appservices.ping(&reg, req.body.transaction_id.as_deref().map(|t| t.as_str())).await?;
    Ok(request_ping::v1::Response::new(took).into())
}

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn protocols(State(state): State<AppState>, req: Ruma<get_protocols::v3::Request>) -> Result<Json<Value>> {
    req.session()?;
    Ok(Json(Value::Object(state.appservices.protocols().await)))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn protocol(State(state): State<AppState>, req: Ruma<get_protocol::v3::Request>) -> Result<Json<Value>> {
    req.session()?;
    Ok(Json(state.appservices.protocol(&req.body.protocol).await?))
}

/// The lookup fields of a third-party query: everything but our own parameters.
fn fields(all: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    all.iter().filter(|(k, _)| k.as_str() != "access_token").map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn location_for_protocol(
    State(state): State<AppState>,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let found = state.appservices.thirdparty_lookup("location", &req.body.protocol, &fields(&req.body.fields)).await?;
    Ok(Json(json!(found)))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn user_for_protocol(
    State(state): State<AppState>,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let found = state.appservices.thirdparty_lookup("user", &req.body.protocol, &fields(&req.body.fields)).await?;
    Ok(Json(json!(found)))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`
pub async fn location_for_alias(
    State(state): State<AppState>,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let found = state.appservices.thirdparty_reverse("location", "alias", req.body.alias.as_str()).await;
    if found.is_empty() {
        return Err(Error::not_found("No third-party location found for this alias"));
    }
    Ok(Json(json!(found)))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`
pub async fn user_for_user_id(
    State(state): State<AppState>,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    let found = state.appservices.thirdparty_reverse("user", "userid", req.body.userid.as_str()).await;
    if found.is_empty() {
        return Err(Error::not_found("No third-party user found for this user id"));
    }
    Ok(Json(json!(found)))
}

/// `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`: an appservice
/// publishes (or withdraws) a room in its network's directory, found with `publicRooms` and
/// `third_party_instance_id = "<appservice id>|<network id>"`.
pub async fn set_network_visibility(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<RumaResponse<set_room_visibility::v3::Response>> {
    let s = req.session()?;
    let Some(reg) = &s.appservice else {
        return Err(Error::forbidden("Only application services may list rooms in a network's directory"));
    };
    if !state.rooms.exists(&req.body.room_id).await? {
        return Err(Error::not_found("Unknown room"));
    }
    let listed = req.body.visibility == ruma::api::client::room::Visibility::Public;
    state.rooms.set_appservice_room_listed(&reg.id, &req.body.network_id, &req.body.room_id, listed).await?;
    Ok(set_room_visibility::v3::Response::new().into())
}
