//! Client-server API handlers, one file per area of the spec.

mod account;
mod device;
mod discovery;
mod session;

use axum::Router;

use super::{AppState, RouterExt};

/// Adds every client API route.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = router
        .ruma(discovery::versions)
        .ruma(discovery::capabilities)
        .ruma(discovery::well_known_client)
        .ruma(session::login_types)
        .ruma(session::login)
        .ruma(session::logout)
        .ruma(session::logout_all)
        .ruma(account::register)
        .ruma(account::available)
        .ruma(account::whoami)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        .ruma(device::list)
        .ruma(device::get)
        .ruma(device::update)
        .ruma(device::delete)
        .ruma(device::delete_many);
    discovery::well_known_server(router)
}
