//! Login and logout.

use axum::Json;
use axum::extract::State;
use ruma::api::client::session::login::v3::LoginInfo;
use ruma::api::client::session::{get_login_types, login, logout, logout_all};
use ruma::api::client::uiaa::UserIdentifier;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::{Ruma, RumaResponse};
use crate::error::{Error, Result};

/// `GET /_matrix/client/v3/login`
pub async fn login_types(_: State<AppState>, _: Ruma<get_login_types::v3::Request>) -> Result<Json<Value>> {
    Ok(Json(json!({ "flows": [{ "type": "m.login.password" }] })))
}

/// `POST /_matrix/client/v3/login`
#[allow(deprecated)]
pub async fn login(
    State(state): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<RumaResponse<login::v3::Response>> {
    // Every attempt counts against the address, whatever its outcome (Synapse's rc_login).
    state.limits.login_address.check(&req.ip.to_string())?;
    let LoginInfo::Password(password) = &req.body.login_info else {
        return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown login type"));
    };
    let user = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
        (None, Some(user)) => user.clone(),
        (Some(_), _) => return Err(Error::forbidden("Only m.id.user identifiers are supported")),
        (None, None) => return Err(Error::missing_param("Missing identifier")),
    };
    let user_id = state.accounts.local_user_id(&user)?;
    state.limits.login_account.check(user_id.as_str())?;
    state.accounts.check_password(&user_id, &password.password).await?;
    let issued = state
        .accounts
        .issue_token(
            &user_id,
            req.body.device_id.clone(),
            req.body.initial_device_display_name.as_deref(),
            Some(&req.ip.to_string()),
        )
        .await?;
    state.e2ee.keys_changed(user_id.as_str()).await;
    tracing::info!(%user_id, device_id = %issued.device_id, "login");
    let mut res = login::v3::Response::new(user_id.clone(), issued.access_token, issued.device_id);
    res.home_server = Some(user_id.server_name().to_owned());
    Ok(res.into())
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(
    State(state): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> Result<RumaResponse<logout::v3::Response>> {
    let s = req.session()?;
    state.accounts.db().delete_devices(s.user_id.as_str(), &[s.device_id.to_string()]).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(logout::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    State(state): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<RumaResponse<logout_all::v3::Response>> {
    let s = req.session()?;
    let devices: Vec<String> =
        state.accounts.db().list_devices(s.user_id.as_str()).await?.into_iter().map(|d| d.device_id).collect();
    state.accounts.db().delete_devices(s.user_id.as_str(), &devices).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(logout_all::v3::Response::new().into())
}
