//! Server discovery and capabilities: `/versions`, `/capabilities`, `/.well-known/matrix/*`,
//! and `/health` for load balancers.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::version::SUPPORTED_ROOM_VERSIONS;

/// Spec versions whose features this server implements. Add a version only when its
/// additions work: clients switch behaviour on this list (v1.11 tells them to fetch media
/// through the authenticated endpoints, which new media requires). Why v1.18 and later are not
/// listed: docs/spec-coverage.md, "Advertised versions".
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
    "v1.13", "v1.14", "v1.15", "v1.16", "v1.17",
];

/// `GET /_matrix/client/versions`
pub async fn versions(_: State<AppState>, _: Ruma<get_supported_versions::Request>) -> Result<Json<Value>> {
    Ok(Json(json!({ "versions": SUPPORTED_VERSIONS, "unstable_features": { "org.matrix.simplified_msc3575": true } })))
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn capabilities(
    State(state): State<AppState>,
    req: Ruma<get_capabilities::v3::Request>,
) -> Result<Json<Value>> {
    let available: serde_json::Map<String, Value> =
        SUPPORTED_ROOM_VERSIONS.iter().map(|v| ((*v).to_owned(), json!("stable"))).collect();
    let mut body = json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": state.config.rooms.default_version, "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": state.accounts.email_enabled() },
            "m.get_login_token": { "enabled": state.accounts.login_tokens_enabled() },
        }
    });
    // Omitted when both would be false (spec v1.18): only server admins may lock and suspend.
    if req.session.as_ref().is_some_and(|s| s.is_admin) {
        body["capabilities"]["m.account_moderation"] = json!({ "suspend": true, "lock": true });
    }
    Ok(Json(body))
}

/// `GET /.well-known/matrix/client`
pub async fn well_known_client(
    State(state): State<AppState>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<Json<Value>> {
    let mut answer = json!({ "m.homeserver": { "base_url": base_url(&state.config) } });
    if !state.config.matrix_rtc.transports.is_empty() {
        answer["org.matrix.msc4143.rtc_foci"] = json!(state.config.matrix_rtc.transports);
    }
    Ok(Json(answer))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`: the MatrixRTC back-ends
/// (`[matrix_rtc] transports`) for logged-in clients (Element Call asks here first).
pub async fn rtc_transports(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::rtc::transports::v1::Request>,
) -> Result<Json<Value>> {
    req.session()?;
    Ok(Json(json!({ "rtc_transports": state.config.matrix_rtc.transports })))
}

/// Where clients reach the client API: `public_baseurl`, else derived from the server name.
fn base_url(config: &Config) -> String {
    if let Some(url) = &config.public_baseurl {
        return url.trim_end_matches('/').to_owned();
    }
    let name = config.server_name();
    match name.port() {
        // The name's port is the HTTPS federation listener: clients are served by the client
        // listener, on the same host.
        Some(port) if config.listen.federation.is_some_and(|f| f.port() == port) => {
            format!("http://{}:{}", name.host(), config.listen.client.port())
        }
        // A name with an explicit port is served as-is over plain HTTP (local set-ups); a bare
        // name is assumed to sit behind HTTPS on 443.
        Some(_) => format!("http://{name}"),
        None => format!("https://{name}"),
    }
}

/// `GET /.well-known/matrix/server`, `/.well-known/matrix/support` and `GET /health` (ruma
/// models the first in the federation API, which this router does not depend on, and the
/// others not at all, so they are routed directly).
pub fn extra_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(
            "/.well-known/matrix/server",
            get(|State(state): State<AppState>| async move {
                let server = match &state.config.well_known.server {
                    Some(server) => server.clone(),
                    None => {
                        let name = &state.config.server_name;
                        if state.config.server_name().port().is_some() { name.clone() } else { format!("{name}:443") }
                    }
                };
                Json(json!({ "m.server": server }))
            }),
        )
        .route("/.well-known/matrix/support", get(support))
        .route("/health", get(health))
}

/// `GET /.well-known/matrix/support` (spec v1.10): 404 while nothing is configured.
async fn support(State(state): State<AppState>) -> Result<Json<Value>> {
    let wk = &state.config.well_known;
    if wk.support_contacts.is_empty() && wk.support_page.is_none() {
        return Err(Error::not_found("No support information is configured"));
    }
    let mut body = json!({});
    if !wk.support_contacts.is_empty() {
        let contacts: Vec<Value> = wk
            .support_contacts
            .iter()
            .map(|c| {
                let mut contact = json!({ "role": c.role });
                if let Some(id) = &c.matrix_id {
                    contact["matrix_id"] = json!(id);
                }
                if let Some(mail) = &c.email_address {
                    contact["email_address"] = json!(mail);
                }
                contact
            })
            .collect();
        body["contacts"] = json!(contacts);
    }
    if let Some(page) = &wk.support_page {
        body["support_page"] = json!(page);
    }
    Ok(Json(body))
}

/// How long `/health` waits for the database before it calls it down: a load balancer polls
/// with its own short timeout, and a pool waiting for a connection must not outlast it.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /health`: 200 `OK` while the database answers a trivial query, 503 otherwise.
async fn health(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(HEALTH_TIMEOUT, state.accounts.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "OK").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: the database does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
        Err(_) => {
            tracing::warn!("health check: the database did not answer in time");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}
