//! Third-party identifiers. Email addresses (`[email]`, `crate::accounts::threepid`): the
//! verification requests, the link's `submit_token` endpoint, adding, listing and removing
//! addresses. Identity servers are not supported: `bind` answers 400 `M_SERVER_NOT_TRUSTED`,
//! `unbind` the spec's `no-support`. Phone numbers (MSISDN): Myelin sends no SMS, so every
//! request for a verification code answers the spec's `M_THREEPID_MEDIUM_NOT_SUPPORTED` (as
//! Synapse does without an SMS-capable identity server), telling clients to offer no phone
//! number field.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use ruma::api::client::account::{
    add_3pid, bind_3pid, delete_3pid, request_3pid_management_token_via_email,
    request_3pid_management_token_via_msisdn, request_password_change_token_via_email,
    request_password_change_token_via_msisdn, request_registration_token_via_email,
    request_registration_token_via_msisdn, unbind_3pid,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::accounts::threepid::{Purpose, SUBMIT_TOKEN_PATH};
use crate::accounts::uia::{self, UiaRequest};
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

async fn request_token(
    state: &AppState,
    purpose: Purpose,
    email: &str,
    client_secret: &str,
    send_attempt: ruma::UInt,
) -> Result<Json<Value>> {
    let (sid, submit_url) =
        state.accounts.request_email_token(purpose, email, client_secret, u64::from(send_attempt)).await?;
    Ok(Json(json!({ "sid": sid, "submit_url": submit_url })))
}

/// `POST /_matrix/client/v3/register/email/requestToken`
pub async fn register_email_token(
    State(state): State<AppState>,
    req: Ruma<request_registration_token_via_email::v3::Request>,
) -> Result<Json<Value>> {
    let b = &req.body;
    request_token(&state, Purpose::Register, &b.email, b.client_secret.as_str(), b.send_attempt).await
}

/// `POST /_matrix/client/v3/account/password/email/requestToken`
pub async fn password_email_token(
    State(state): State<AppState>,
    req: Ruma<request_password_change_token_via_email::v3::Request>,
) -> Result<Json<Value>> {
    let b = &req.body;
    request_token(&state, Purpose::Reset, &b.email, b.client_secret.as_str(), b.send_attempt).await
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`
pub async fn add_email_token(
    State(state): State<AppState>,
    req: Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> Result<Json<Value>> {
    let b = &req.body;
    request_token(&state, Purpose::Add, &b.email, b.client_secret.as_str(), b.send_attempt).await
}

/// The parameters of a verification link (query) or of a `POST` to `submit_url` (JSON).
#[derive(Deserialize)]
pub struct SubmitToken {
    sid: String,
    client_secret: String,
    token: String,
}

/// `GET /_matrix/client/unstable/email/submit_token`: the link in the mail, opened in a browser.
pub async fn submit_token_link(
    State(state): State<AppState>,
    query: std::result::Result<Query<SubmitToken>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return (http::StatusCode::BAD_REQUEST, "This link is incomplete.\n").into_response();
    };
    match state.accounts.submit_email_token(&q.sid, &q.client_secret, &q.token).await {
        Ok(true) => "Your email address has been verified. You may now return to your Matrix client.\n".into_response(),
        Ok(false) => (http::StatusCode::BAD_REQUEST, "This link has expired or was already used.\n").into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /_matrix/client/unstable/email/submit_token` (the `submit_url` of `requestToken`):
/// `{"success": bool}`.
pub async fn submit_token_post(
    State(state): State<AppState>,
    body: std::result::Result<Json<SubmitToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>> {
    let Ok(Json(q)) = body else { return Err(Error::bad_json("Expected sid, client_secret and token")) };
    let success = state.accounts.submit_email_token(&q.sid, &q.client_secret, &q.token).await?;
    Ok(Json(json!({ "success": success })))
}

/// Adds the verification link's route.
pub fn extra_routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    router.route(SUBMIT_TOKEN_PATH, axum::routing::get(submit_token_link).post(submit_token_post))
}

/// `POST /_matrix/client/v3/account/3pid/add`
pub async fn add(State(state): State<AppState>, req: Ruma<add_3pid::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(req.body.auth.as_ref(), UiaRequest { flows, user_id: Some(&s.user_id), operation: "3pid_add" })
        .await?;
    state.accounts.add_email(&s.user_id, req.body.sid.as_str(), req.body.client_secret.as_str()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/account/3pid/delete`
pub async fn delete(State(state): State<AppState>, req: Ruma<delete_3pid::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.accounts.delete_threepid(&s.user_id, req.body.medium.as_str(), &req.body.address).await?;
    // No identity server knows the address from us.
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

fn untrusted_identity_server() -> Error {
    Error::new(http::StatusCode::BAD_REQUEST, "M_SERVER_NOT_TRUSTED", "This server does not work with identity servers")
}

/// `POST /_matrix/client/v3/account/3pid/bind`: no identity server is trusted.
pub async fn bind(_: State<AppState>, req: Ruma<bind_3pid::v3::Request>) -> Result<Json<Value>> {
    req.session()?;
    Err(untrusted_identity_server())
}

/// `POST /_matrix/client/v3/account/3pid/unbind`: nothing was bound through this server, so
/// there is nothing to unbind (`no-support`, as the spec says when the server knows no identity
/// server); a named identity server is not trusted.
pub async fn unbind(_: State<AppState>, req: Ruma<unbind_3pid::v3::Request>) -> Result<Json<Value>> {
    req.session()?;
    if req.body.id_server.is_some() {
        return Err(untrusted_identity_server());
    }
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

fn not_supported() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        "This server does not verify phone numbers",
    )
}

/// `POST /_matrix/client/v3/register/msisdn/requestToken`
pub async fn register_token(
    _: State<AppState>,
    _: Ruma<request_registration_token_via_msisdn::v3::Request>,
) -> Result<()> {
    Err(not_supported())
}

/// `POST /_matrix/client/v3/account/password/msisdn/requestToken`
pub async fn password_token(
    _: State<AppState>,
    _: Ruma<request_password_change_token_via_msisdn::v3::Request>,
) -> Result<()> {
    Err(not_supported())
}

/// `POST /_matrix/client/v3/account/3pid/msisdn/requestToken`
pub async fn add_token(
    _: State<AppState>,
    _: Ruma<request_3pid_management_token_via_msisdn::v3::Request>,
) -> Result<()> {
    Err(not_supported())
}
