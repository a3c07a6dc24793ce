//! Server discovery and capabilities: `/versions`, `/capabilities`, `/.well-known/matrix/*`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use ruma::api::client::discovery::{discover_homeserver, get_capabilities, get_supported_versions};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::Result;
use crate::rooms::version::SUPPORTED_ROOM_VERSIONS;

/// Spec versions whose features this server implements. Add a version only when its
/// additions work: clients switch behaviour on this list (v1.11 tells them to fetch media
/// through the authenticated endpoints, which new media requires).
pub const SUPPORTED_VERSIONS: &[&str] =
    &["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"];

/// `GET /_matrix/client/versions`
pub async fn versions(_: State<AppState>, _: Ruma<get_supported_versions::Request>) -> Result<Json<Value>> {
    Ok(Json(json!({ "versions": SUPPORTED_VERSIONS, "unstable_features": {} })))
}

/// `GET /_matrix/client/v3/capabilities`
pub async fn capabilities(
    State(state): State<AppState>,
    _: Ruma<get_capabilities::v3::Request>,
) -> Result<Json<Value>> {
    let available: serde_json::Map<String, Value> =
        SUPPORTED_ROOM_VERSIONS.iter().map(|v| ((*v).to_owned(), json!("stable"))).collect();
    Ok(Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": { "default": state.config.rooms.default_version, "available": available },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": state.accounts.login_tokens_enabled() },
        }
    })))
}

/// `GET /.well-known/matrix/client`
pub async fn well_known_client(
    State(state): State<AppState>,
    _: Ruma<discover_homeserver::Request>,
) -> Result<Json<Value>> {
    Ok(Json(json!({ "m.homeserver": { "base_url": base_url(&state) } })))
}

fn base_url(state: &AppState) -> String {
    let name = &state.config.server_name;
    // A name with an explicit port is served as-is over plain HTTP (local set-ups);
    // a bare name is assumed to sit behind HTTPS on 443.
    if name.contains(':') { format!("http://{name}") } else { format!("https://{name}") }
}

/// `GET /.well-known/matrix/server` (ruma models it in the federation API, which this router
/// does not depend on yet, so it is routed directly).
pub fn well_known_server(router: Router<AppState>) -> Router<AppState> {
    router.route(
        "/.well-known/matrix/server",
        get(|State(state): State<AppState>| async move {
            let name = &state.config.server_name;
            let server = if name.contains(':') { name.clone() } else { format!("{name}:443") };
            Json(json!({ "m.server": server }))
        }),
    )
}
