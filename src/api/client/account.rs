//! Registration and account management.

use axum::Json;
use axum::extract::State;
use ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_3pids, get_username_availability, register,
    request_openid_token, whoami,
};
use serde_json::{Value, json};

use ruma::api::client::uiaa::AuthData;

use crate::accounts::threepid::EMAIL_IDENTITY;
use crate::accounts::uia::{self, UiaRequest};
use crate::api::AppState;
use crate::api::extract::{Ruma, RumaResponse};
use crate::appservice::Kind;
use crate::config::RegistrationMode;
use crate::error::{Error, Result};
use crate::ids::random_alpha;

/// `POST /_matrix/client/v3/register`
pub async fn register(State(state): State<AppState>, req: Ruma<register::v3::Request>) -> Result<Json<Value>> {
    let body = &req.body;
    if body.kind == register::RegistrationKind::Guest {
        return Err(Error::new(http::StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled"));
    }
    if body.login_type == Some(register::LoginType::ApplicationService) {
        return register_for_appservice(&state, &req).await;
    }
    let flows = match state.config.registration.mode {
        RegistrationMode::Disabled => {
            return Err(Error::forbidden("Registration has been disabled"));
        }
        // With email on, an address may be verified at registration (it is then the account's).
        RegistrationMode::Open if state.accounts.email_enabled() => vec![vec![uia::DUMMY], vec![EMAIL_IDENTITY]],
        RegistrationMode::Open => vec![vec![uia::DUMMY]],
        RegistrationMode::Token => vec![vec![uia::REGISTRATION_TOKEN]],
    };
    // Check the name before UIA so that clients learn about a taken name at the first step.
    let localpart = match &body.username {
        Some(name) => name.to_lowercase(),
        None => random_alpha(12).to_lowercase(),
    };
    // Only completed registrations count, but a client past the limit learns it at every step.
    let address = req.ip.to_string();
    state.limits.registration.peek(&address)?;
    state.accounts.check_available(&localpart).await?;
    let user_id = state.accounts.user_id(&localpart)?;
    state.appservices.check_exclusive(Kind::Users, user_id.as_str(), None)?;
    state.accounts.check_uia(body.auth.as_ref(), UiaRequest { flows, user_id: None, operation: "register" }).await?;
    let user_id = state.accounts.register(&localpart, body.password.clone(), false).await?;
    state.limits.registration.record(&address);
    if let Some(AuthData::EmailIdentity(e)) = &body.auth {
        let creds = &e.thirdparty_id_creds;
        // The account exists now: a session used up meanwhile by a racing request is logged.
        let bound = state.accounts.bind_registration_email(&user_id, creds.sid.as_str(), creds.client_secret.as_str());
        if let Err(e) = bound.await {
            tracing::warn!(%user_id, error = %e, "registered without the verified email address");
        }
    }
    login_new_user(&state, &req, user_id).await
}

/// `POST /register` with `type: m.login.application_service`: an appservice creates one of
/// its users, without UIA or password, whatever `registration.mode` says.
async fn register_for_appservice(state: &AppState, req: &Ruma<register::v3::Request>) -> Result<Json<Value>> {
    let Some(reg) = req.session.as_ref().and_then(|s| s.appservice.clone()) else {
        return Err(Error::forbidden("m.login.application_service needs an application service's as_token"));
    };
    let Some(name) = &req.body.username else {
        return Err(Error::missing_param("m.login.application_service needs a username"));
    };
    let user_id = state.appservices.register_user(&reg, &name.to_lowercase()).await?;
    login_new_user(state, req, user_id).await
}

/// The answer to a completed registration: the user id alone with `inhibit_login`, else a
/// login on a new device too.
async fn login_new_user(
    state: &AppState,
    req: &Ruma<register::v3::Request>,
    user_id: ruma::OwnedUserId,
) -> Result<Json<Value>> {
    let body = &req.body;
    if body.inhibit_login {
        return Ok(Json(json!({ "user_id": user_id })));
    }
    let issued = state
        .accounts
        .issue_token(
            &user_id,
            body.device_id.clone(),
            body.initial_device_display_name.as_deref(),
            Some(&req.ip.to_string()),
            body.refresh_token,
        )
        .await?;
    let mut res = json!({
        "user_id": user_id,
        "access_token": issued.access_token,
        "device_id": issued.device_id,
        "home_server": user_id.server_name(),
    });
    if let (Some(refresh), Some(expires)) = (issued.refresh_token, issued.expires_in) {
        res["refresh_token"] = json!(refresh);
        res["expires_in_ms"] = json!(expires.as_millis() as u64);
    }
    Ok(Json(res))
}

/// `GET /_matrix/client/v3/register/available`
pub async fn available(
    State(state): State<AppState>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<RumaResponse<get_username_availability::v3::Response>> {
    let user_id = state.accounts.check_available(&req.body.username).await?;
    state.appservices.check_exclusive(Kind::Users, user_id.as_str(), None)?;
    Ok(get_username_availability::v3::Response::new(true).into())
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`: whether a token
/// would be accepted by the registration token stage (clients check before asking the rest).
pub async fn registration_token_validity(
    State(state): State<AppState>,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<RumaResponse<check_registration_token_validity::v1::Response>> {
    Ok(check_registration_token_validity::v1::Response::new(
        state.accounts.registration_token_valid(&req.body.token).await?,
    )
    .into())
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(
    State(_): State<AppState>,
    req: Ruma<whoami::v3::Request>,
) -> Result<RumaResponse<whoami::v3::Response>> {
    let s = req.session()?;
    let mut res = whoami::v3::Response::new(s.user_id.clone(), false);
    // An appservice acting without `?device_id=` has no device of the user's.
    let deviceless = s.appservice.is_some() && s.device_id.as_str() == crate::accounts::APPSERVICE_DEVICE;
    res.device_id = (!deviceless).then(|| s.device_id.clone());
    Ok(res.into())
}

/// `POST /_matrix/client/v3/account/password`
pub async fn change_password(
    State(state): State<AppState>,
    req: Ruma<change_password::v3::Request>,
) -> Result<RumaResponse<change_password::v3::Response>> {
    let Some(s) = req.session.as_ref() else { return reset_password(&state, &req).await };
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(req.body.auth.as_ref(), UiaRequest { flows, user_id: Some(&s.user_id), operation: "password" })
        .await?;
    state.accounts.change_password(s, req.body.new_password.clone(), req.body.logout_devices).await?;
    if req.body.logout_devices {
        state.e2ee.keys_changed(s.user_id.as_str()).await;
    }
    Ok(change_password::v3::Response::new().into())
}

/// `POST /account/password` without an access token: a password reset, authenticated by a
/// verified email address of the account (`m.login.email.identity`).
async fn reset_password(
    state: &AppState,
    req: &Ruma<change_password::v3::Request>,
) -> Result<RumaResponse<change_password::v3::Response>> {
    if !state.accounts.email_enabled() {
        return Err(Error::missing_token());
    }
    let flows = vec![vec![EMAIL_IDENTITY]];
    let auth = req.body.auth.as_ref();
    state.accounts.check_uia(auth, UiaRequest { flows, user_id: None, operation: "password_reset" }).await?;
    let Some(AuthData::EmailIdentity(e)) = auth else {
        return Err(Error::forbidden("A password reset needs a verified email address"));
    };
    let creds = &e.thirdparty_id_creds;
    let user_id = state.accounts.reset_target(creds.sid.as_str(), creds.client_secret.as_str()).await?;
    let logout = req.body.logout_devices;
    if state.accounts.admin_set_password(&user_id, req.body.new_password.clone(), logout).await? {
        state.e2ee.keys_changed(user_id.as_str()).await;
    }
    tracing::info!(%user_id, "password reset by email");
    Ok(change_password::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate(State(state): State<AppState>, req: Ruma<deactivate::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(req.body.auth.as_ref(), UiaRequest { flows, user_id: Some(&s.user_id), operation: "deactivate" })
        .await?;
    state.accounts.deactivate(&s.user_id).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    tracing::info!(user_id = %s.user_id, "deactivated");
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

/// `GET /_matrix/client/v3/account/3pid`: the account's email addresses.
pub async fn threepids(State(state): State<AppState>, req: Ruma<get_3pids::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let list: Vec<Value> = state
        .accounts
        .threepids(&s.user_id)
        .await?
        .into_iter()
        .map(|t| json!({ "medium": t.medium, "address": t.address, "validated_at": t.validated_ts, "added_at": t.added_ts }))
        .collect();
    Ok(Json(json!({ "threepids": list })))
}

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
pub async fn openid_token(
    State(state): State<AppState>,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    if req.body.user_id != s.user_id {
        return Err(Error::forbidden("Cannot request an OpenID token for another user"));
    }
    let token = state.accounts.request_openid_token(&s.user_id).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": state.config.server_name(),
        "expires_in": crate::accounts::OPENID_TOKEN_SECS,
    })))
}
