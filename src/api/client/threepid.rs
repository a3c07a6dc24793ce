//! Phone numbers (MSISDN) as third-party identifiers: Myelin sends no SMS, so every request for
//! a verification code answers the spec's `M_THREEPID_MEDIUM_NOT_SUPPORTED` (as Synapse does
//! without an SMS-capable identity server), telling clients to offer no phone number field.

use axum::extract::State;
use ruma::api::client::account::{
    request_3pid_management_token_via_msisdn, request_password_change_token_via_msisdn,
    request_registration_token_via_msisdn,
};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

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
