//! Login and logout.

use axum::Json;
use axum::extract::State;
use ruma::api::client::session::login::v3::LoginInfo;
use ruma::api::client::session::{get_login_token, get_login_types, login, logout, logout_all, refresh_token};
use ruma::api::client::uiaa::UserIdentifier;
use serde_json::{Value, json};

use crate::accounts::uia::{self, UiaRequest};
use crate::api::AppState;
use crate::api::extract::{Ruma, RumaResponse};
use crate::error::{Error, Result};

/// `GET /_matrix/client/v3/login`
pub async fn login_types(State(state): State<AppState>, _: Ruma<get_login_types::v3::Request>) -> Result<Json<Value>> {
    Ok(Json(json!({ "flows": [
        { "type": "m.login.password" },
        { "type": "m.login.token", "get_login_token": state.accounts.login_tokens_enabled() },
        { "type": "m.login.application_service" },
    ]})))
}

/// `POST /_matrix/client/v3/login`
#[allow(deprecated)]
pub async fn login(
    State(state): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<RumaResponse<login::v3::Response>> {
    // Every attempt counts against the address, whatever its outcome (Synapse's rc_login).
    state.limits.login_address.check(&req.ip.to_string())?;
    let user_id = match &req.body.login_info {
        LoginInfo::Password(password) => {
            let user = match (&password.identifier, &password.user) {
                (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
                (None, Some(user)) => user.clone(),
                (Some(_), _) => return Err(Error::forbidden("Only m.id.user identifiers are supported")),
                (None, None) => return Err(Error::missing_param("Missing identifier")),
            };
            let user_id = state.accounts.local_user_id(&user)?;
            state.limits.login_account.check(user_id.as_str())?;
            state.accounts.check_password(&user_id, &password.password).await?;
            user_id
        }
        LoginInfo::Token(token) => state.accounts.take_login_token(&token.token).await?,
        LoginInfo::ApplicationService(login) => {
            let Some(reg) = req.session.as_ref().and_then(|s| s.appservice.clone()) else {
                return Err(Error::forbidden("m.login.application_service needs an application service's as_token"));
            };
            let user = match (&login.identifier, &login.user) {
                (Some(UserIdentifier::Matrix(m)), _) => m.user.clone(),
                (None, Some(user)) => user.clone(),
                (Some(_), _) => return Err(Error::forbidden("Only m.id.user identifiers are supported")),
                (None, None) => return Err(Error::missing_param("Missing identifier")),
            };
            let user_id = state.accounts.local_user_id(&user)?;
            state.appservices.masquerade(&reg, Some(user_id.as_str()), true).await?
        }
        _ => return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown login type")),
    };
    // The password check refuses a locked account itself; a login token does not.
    state.accounts.refuse_locked(&user_id).await?;
    let issued = state
        .accounts
        .issue_token(
            &user_id,
            req.body.device_id.clone(),
            req.body.initial_device_display_name.as_deref(),
            Some(&req.ip.to_string()),
            req.body.refresh_token,
        )
        .await?;
    state.e2ee.keys_changed(user_id.as_str()).await;
    tracing::info!(%user_id, device_id = %issued.device_id, "login");
    let mut res = login::v3::Response::new(user_id.clone(), issued.access_token, issued.device_id);
    res.home_server = Some(user_id.server_name().to_owned());
    res.refresh_token = issued.refresh_token;
    res.expires_in = issued.expires_in;
    Ok(res.into())
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh(
    State(state): State<AppState>,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<RumaResponse<refresh_token::v3::Response>> {
    let issued = state.accounts.refresh(&req.body.refresh_token).await?;
    let mut res = refresh_token::v3::Response::new(issued.access_token);
    res.refresh_token = issued.refresh_token;
    res.expires_in_ms = issued.expires_in;
    Ok(res.into())
}

/// `POST /_matrix/client/v1/login/get_token`: a single-use token to sign in another device,
/// after the user re-enters their password.
pub async fn get_login_token(
    State(state): State<AppState>,
    req: Ruma<get_login_token::v1::Request>,
) -> Result<RumaResponse<get_login_token::v1::Response>> {
    let s = req.session()?;
    if !state.accounts.login_tokens_enabled() {
        return Err(Error::unrecognized(http::StatusCode::NOT_FOUND));
    }
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(
            req.body.auth.as_ref(),
            UiaRequest { flows, user_id: Some(&s.user_id), operation: "get_login_token" },
        )
        .await?;
    let (token, lifetime) = state.accounts.issue_login_token(&s.user_id).await?;
    Ok(get_login_token::v1::Response::new(lifetime, token).into())
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(
    State(state): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> Result<RumaResponse<logout::v3::Response>> {
    let s = req.session()?;
    state.accounts.delete_devices(&s.user_id, &[s.device_id.to_string()]).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(logout::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    State(state): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<RumaResponse<logout_all::v3::Response>> {
    let s = req.session()?;
    state.accounts.delete_all_devices(&s.user_id).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(logout_all::v3::Response::new().into())
}
