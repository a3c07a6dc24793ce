//! The deprecated pre-`/sync` endpoints that the spec still lists: `GET /initialSync`, `GET
//! /events` (also peeking with `room_id`), `GET /events/{eventId}` and `GET
//! /rooms/{roomId}/initialSync`. `crate::sync::legacy` does the work.
//!
//! ruma models only the last one and `/events` with a required `room_id`, so the other
//! request types are declared here (`legacy_request!`), to go through `Ruma<T>` like every
//! other endpoint.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::peeking::get_current_state;
use serde_json::Value;

use ruma::RoomId;

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// Messages per room of `/initialSync` without `limit` (Synapse's default).
const DEFAULT_INITIAL_SYNC_LIMIT: usize = 10;

/// Declares a request type that ruma does not have, with its paths, as ruma's `#[request]`
/// would (that macro cannot read this workspace's `Cargo.toml`): an access token is required,
/// query parameters are kept as text for the handler to check (400 `M_INVALID_PARAM`), path
/// parameters are parsed here (the extractor answers `M_INVALID_PARAM` for a bad one).
macro_rules! legacy_request {
    ($module:ident, $doc:literal, $r0:literal, $v3:literal, query: [$($q:ident),*], path: [$($p:ident: $pt:ty),*]) => {
        #[doc = $doc]
        pub mod $module {
            use ruma::api::auth_scheme::AccessToken;
            use ruma::api::error::DeserializationError;

            /// The request.
            #[derive(Debug)]
            pub struct Request {
                $(
                    /// A query parameter, as sent.
                    pub $q: Option<String>,
                )*
                $(
                    /// A path parameter.
                    pub $p: $pt,
                )*
            }

            ruma::metadata! {
                method: GET,
                rate_limited: false,
                authentication: AccessToken,
                history: {
                    1.0 => $r0,
                    1.1 => $v3,
                }
            }

            impl ruma::api::IncomingRequest for Request {
                type EndpointError = ruma::api::error::Error;
                // Never built: the handler answers JSON of its own.
                type OutgoingResponse = ruma::api::client::peeking::listen_to_new_events::v3::Response;

                #[allow(unused_variables, unused_mut)]
                fn try_from_http_request_inner(
                    request: http::Request<&[u8]>,
                    path_args: &[&str],
                ) -> Result<Self, DeserializationError> {
                    let query = request.uri().query().unwrap_or("");
                    let param = |name: &str| {
                        url::form_urlencoded::parse(query.as_bytes())
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.into_owned())
                    };
                    let mut args = path_args.iter();
                    Ok(Self {
                        $($q: param(stringify!($q)),)*
                        $($p: <$pt>::try_from(*args.next().unwrap_or(&""))?,)*
                    })
                }
            }
        }
    };
}

legacy_request!(initial_sync, "`GET /_matrix/client/v3/initialSync`", "/_matrix/client/r0/initialSync",
    "/_matrix/client/v3/initialSync", query: [limit, archived], path: []);
legacy_request!(events, "`GET /_matrix/client/v3/events` (with or without `room_id`)", "/_matrix/client/r0/events",
    "/_matrix/client/v3/events", query: [from, timeout, room_id], path: []);
legacy_request!(event, "`GET /_matrix/client/v3/events/{eventId}`", "/_matrix/client/r0/events/{event_id}",
    "/_matrix/client/v3/events/{event_id}", query: [], path: [event_id: ruma::OwnedEventId]);

/// A non-negative integer query parameter.
fn number(value: Option<&str>, name: &str) -> Result<Option<u64>> {
    value
        .map(|v| v.parse::<u64>().map_err(|_| Error::invalid_param(format!("{name} must be a non-negative integer"))))
        .transpose()
}

/// A boolean query parameter (`true`/`false`).
fn boolean(value: Option<&str>, name: &str) -> Result<bool> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Error::invalid_param(format!("{name} must be true or false"))),
    }
}

/// `GET /_matrix/client/v3/initialSync`
pub async fn initial_sync(State(state): State<AppState>, req: Ruma<initial_sync::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let limit = number(b.limit.as_deref(), "limit")?
        .map_or(DEFAULT_INITIAL_SYNC_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let archived = boolean(b.archived.as_deref(), "archived")?;
    Ok(Json(state.sync.legacy_initial_sync(&s.user_id, &s.device_id, limit, archived).await?))
}

/// `GET /_matrix/client/v3/events`
pub async fn events(State(state): State<AppState>, req: Ruma<events::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let timeout = Duration::from_millis(number(b.timeout.as_deref(), "timeout")?.unwrap_or(0));
    let from = b.from.as_deref();
    Ok(Json(match &b.room_id {
        Some(room_id) => {
            let room_id = RoomId::parse(room_id).map_err(|e| Error::invalid_param(format!("Invalid room_id: {e}")))?;
            state.sync.legacy_peek(&s.user_id, &s.device_id, &room_id, from, timeout).await?
        }
        None => state.sync.legacy_events(&s.user_id, &s.device_id, from, timeout).await?,
    }))
}

/// `GET /_matrix/client/v3/events/{eventId}`
pub async fn event(State(state): State<AppState>, req: Ruma<event::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.sync.legacy_event(&s.user_id, &s.device_id, req.body.event_id.as_str()).await?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/initialSync`
pub async fn room_initial_sync(
    State(state): State<AppState>,
    req: Ruma<get_current_state::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.sync.legacy_room_initial_sync(&s.user_id, &s.device_id, &req.body.room_id).await?))
}
