//! The one typed extractor: an HTTP request becomes ruma's request type plus the caller.
//!
//! `Ruma<T>` reads the body (bounded), authenticates according to the endpoint's ruma
//! `Authentication` scheme, applies rate limits to endpoints ruma marks as rate-limited, and
//! converts with ruma's `IncomingRequest`. Each failure has its Matrix errcode: 413
//! `M_TOO_LARGE`, 401 `M_MISSING_TOKEN`/`M_UNKNOWN_TOKEN`, 429 `M_LIMIT_EXCEEDED`,
//! 400 `M_NOT_JSON` (not JSON at all) and 400 `M_BAD_JSON` (JSON of the wrong shape).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use ruma::api::auth_scheme::{
    AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken, NoAuthentication,
};
use ruma::api::{IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt};

use super::AppState;
use crate::accounts::Session;
use crate::error::{Error, Result};
use crate::ssrf::IpRange;

/// Largest JSON request body accepted (media uploads have their own limit).
pub const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// How an endpoint authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No credentials.
    None,
    /// An access token if present.
    Optional,
    /// An access token is required.
    Required,
    /// A server's `X-Matrix` signature is required (federation endpoints).
    Server,
}

/// Maps ruma's authentication scheme types to how we authenticate.
pub trait AuthRequirement {
    /// The mode for this scheme.
    const MODE: AuthMode;
}
impl AuthRequirement for NoAuthentication {
    const MODE: AuthMode = AuthMode::None;
}
impl AuthRequirement for NoAccessToken {
    const MODE: AuthMode = AuthMode::None;
}
impl AuthRequirement for AccessTokenOptional {
    const MODE: AuthMode = AuthMode::Optional;
}
impl AuthRequirement for AccessToken {
    const MODE: AuthMode = AuthMode::Required;
}
impl AuthRequirement for AppserviceToken {
    const MODE: AuthMode = AuthMode::Required;
}
impl AuthRequirement for AppserviceTokenOptional {
    const MODE: AuthMode = AuthMode::Optional;
}
impl AuthRequirement for ruma::api::federation::authentication::ServerSignatures {
    const MODE: AuthMode = AuthMode::Server;
}

/// A parsed ruma request and who sent it.
pub struct Ruma<T> {
    /// The typed request.
    pub body: T,
    /// The authenticated session, when the endpoint takes a token and one was given.
    pub session: Option<Session>,
    /// The peer's address.
    pub ip: IpAddr,
    /// The raw JSON body, for endpoints that must see fields ruma does not model.
    pub json: Option<serde_json::Value>,
    /// The verified origin server of a federation request (`X-Matrix`).
    pub origin: Option<ruma::OwnedServerName>,
}

impl<T> Ruma<T> {
    /// The session of an endpoint whose auth scheme requires a token.
    pub fn session(&self) -> Result<&Session> {
        self.session.as_ref().ok_or_else(Error::missing_token)
    }

    /// The verified origin of a federation request.
    pub fn origin(&self) -> Result<&ruma::ServerName> {
        self.origin.as_deref().ok_or_else(|| Error::unauthorized("Missing X-Matrix authorization"))
    }
}

/// Reads the access token from `Authorization: Bearer` or the `access_token` query parameter.
pub fn access_token(parts: &http::request::Parts) -> Result<Option<String>> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Error::missing_token())?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Ok(Some(token.trim().to_owned()));
        }
        // `X-Matrix` belongs to federation; other schemes are not ours.
        return Ok(None);
    }
    let query = parts.uri.query().unwrap_or("");
    Ok(url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned()))
}

/// The client's address: the peer's, or, when the peer is one of `trusted_proxies`, the
/// address that proxy put in `X-Forwarded-For` (the rightmost entry not itself a trusted proxy,
/// as entries to its left are whatever the client sent).
pub fn client_ip(parts: &http::request::Parts, trusted_proxies: &[IpRange]) -> IpAddr {
    let peer =
        parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|range| range.contains(ip));
    if trusted_proxies.is_empty() || !trusted(peer) {
        return peer;
    }
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Ok(ip) = entry.parse::<IpAddr>() else { break };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    client
}

fn has_json_body(method: &http::Method) -> bool {
    matches!(*method, http::Method::POST | http::Method::PUT | http::Method::DELETE)
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRequirement,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        // Boxed: the handler's future holds its extractor's state for as long as it lives.
        Box::pin(Self::extract(req, state)).await
    }
}

impl<T> Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: AuthRequirement,
{
    async fn extract(req: Request, state: &AppState) -> Result<Self> {
        let (mut parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > MAX_JSON_BODY) {
            return Err(Error::too_large("Request body too large"));
        }
        let mut path_args: Vec<String> = match RawPathParams::from_request_parts(&mut parts, state).await {
            Ok(params) => params.iter().map(|(_, v)| v.to_owned()).collect(),
            Err(_) => return Err(Error::invalid_param("Path parameters are not valid UTF-8")),
        };
        // Routes registered without a trailing empty parameter (`/state/{type}` for an empty
        // state key, see `api::RumaHandler`) pass it as the empty string.
        path_args.resize(T::_path_parameters().len().max(path_args.len()), String::new());
        let ip = client_ip(&parts, &state.trusted_proxies);

        let mode = <T::Authentication as AuthRequirement>::MODE;
        let token = if mode == AuthMode::Server { None } else { access_token(&parts)? };
        let session = match (mode, token) {
            (AuthMode::None | AuthMode::Server, _) | (AuthMode::Optional, None) => None,
            (AuthMode::Required, None) => return Err(Error::missing_token()),
            // Boxed, like the other awaits below: a handler's future is as large as its largest
            // state, and a waiting long-poll keeps the whole of it (see `SyncEngine::sync`).
            (_, Some(token)) => match state.appservices.by_token(&token) {
                Some(reg) => {
                    // An appservice registering a user names it before it exists.
                    let registering = std::any::TypeId::of::<T>()
                        == std::any::TypeId::of::<ruma::api::client::account::register::v3::Request>();
                    Some(Box::pin(appservice_session(state, reg, &parts, !registering)).await?)
                }
                None => {
                    // A locked account may still log out (spec: account locking).
                    let allow_locked = super::suspension::allowed_while_locked::<T>();
                    Some(Box::pin(state.accounts.authenticate_as(&token, Some(&ip.to_string()), allow_locked)).await?)
                }
            },
        };

        // Reads are not limited: ruma marks media downloads and thumbnails rate-limited, and a
        // client opening a media-heavy room fetches dozens at once (Synapse limits only writes).
        let exempt = session
            .as_ref()
            .and_then(|s| s.appservice.as_ref().map(|reg| !reg.rate_limited || s.user_id == reg.sender))
            .unwrap_or(false);
        if T::RATE_LIMITED && parts.method != http::Method::GET && !exempt {
            match &session {
                Some(s) => Box::pin(state.accounts.check_request_rate(&state.limits, &s.user_id)).await?,
                None => state.limits.requests.check(&ip.to_string())?,
            }
        }

        let bytes = Box::pin(axum::body::to_bytes(body, MAX_JSON_BODY)).await.map_err(body_error)?;
        let origin = match mode {
            AuthMode::Server => Some(Box::pin(state.federation.verify_request(&parts, &bytes)).await?),
            _ => None,
        };
        let json = if has_json_body(&parts.method) && !bytes.iter().all(u8::is_ascii_whitespace) {
            Some(
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|e| Error::not_json(format!("Content not JSON: {e}")))?,
            )
        } else {
            None
        };
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        // Clients send POSTs like `/join` with no body at all; ruma wants a JSON object.
        let body_bytes: &[u8] = if json.is_none() && has_json_body(&parts.method) { b"{}" } else { &bytes[..] };
        let request = http::Request::from_parts(parts, body_bytes);
        // ruma's deserializers are not all panic-free (its `LoginInfo` indexes the JSON object
        // by "type" and panics when the field is absent); a request body is untrusted input, so
        // a panic while reading one is the client's malformed request, not a server failure.
        let converted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::try_from_http_request(request, &args)))
                .map_err(|panic| {
                    tracing::warn!(panic = panic_message(&*panic), "ruma panicked converting a request");
                    Error::bad_json("Request body does not have the expected shape")
                })?;
        let body = converted.map_err(|e| {
            use ruma::api::error::{DeserializationError, FromHttpRequestError};
            match e {
                FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => Error::bad_json(e.to_string()),
                // A required query parameter that is absent, e.g. `/register/available`
                // without `username`: the spec's errcode for that is M_MISSING_PARAM.
                FromHttpRequestError::Deserialization(DeserializationError::Query(e))
                    if e.to_string().starts_with("missing field") =>
                {
                    Error::missing_param(e.to_string())
                }
                FromHttpRequestError::Deserialization(e) => Error::invalid_param(e.to_string()),
                FromHttpRequestError::MethodMismatch { .. } => {
                    Error::unrecognized(http::StatusCode::METHOD_NOT_ALLOWED)
                }
                other => Error::bad_json(other.to_string()),
            }
        })?;
        if session.as_ref().is_some_and(|s| s.suspended) && !super::suspension::allowed_while_suspended(&body) {
            return Err(Error::user_suspended());
        }
        Ok(Ruma { body, session, ip, json, origin })
    }
}

/// The session of a request made with an appservice's `as_token`: its sender, or the user named
/// by `?user_id=` (which must be one of its users, 403 otherwise), on the device named by
/// `?device_id=` / `?org.matrix.msc3202.device_id=` (which must be the user's) or none.
async fn appservice_session(
    state: &AppState,
    reg: &std::sync::Arc<crate::appservice::Registration>,
    parts: &http::request::Parts,
    must_exist: bool,
) -> Result<Session> {
    state.appservices.kick(&reg.id);
    let query = parts.uri.query().unwrap_or("");
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    };
    let user_id = state.appservices.masquerade(reg, param("user_id").as_deref(), must_exist).await?;
    let device_id = match param("device_id").or_else(|| param("org.matrix.msc3202.device_id")) {
        Some(device) => {
            let known = state.accounts.has_device(&user_id, &device).await?;
            if !known {
                return Err(Error::forbidden(format!("Application service has not registered this device ({device})")));
            }
            device.into()
        }
        None => crate::accounts::APPSERVICE_DEVICE.into(),
    };
    // An appservice's users are the appservice's to moderate: never locked or suspended here.
    Ok(Session { user_id, device_id, is_admin: false, appservice: Some(reg.clone()), suspended: false })
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The error for a request body that could not be read whole: 413 past the limit, 400 when the
/// connection layer found its framing malformed (a client that went away never sees either).
pub fn body_error(e: axum::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return Error::too_large("Request body too large");
        }
        source = cause.source();
    }
    Error::new(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("Malformed request body: {e}"))
}

/// Wraps a ruma response so that handlers can return it directly.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(res) => res.map(|b| axum::body::Body::from(b.freeze())).into_response(),
            Err(e) => Error::internal(format!("serialising response: {e}")).into_response(),
        }
    }
}

impl<T: OutgoingResponse> From<T> for RumaResponse<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}
