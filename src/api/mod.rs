//! The HTTP layer: the router, the request extractor, middleware and the client API handlers.
//!
//! Handlers are thin: parse (via [`extract::Ruma`]), call the engine, map errors. They receive
//! [`AppState`], a bundle of narrow handles; no handler reaches into another's storage.

pub mod admin;
pub mod client;
pub mod extract;
pub mod federation;
pub mod federation_media;
pub mod suspension;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use ruma::api::IncomingRequest;
use ruma::api::path_builder::PathBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::accounts::Accounts;
use crate::config::Config;
use crate::e2ee::E2ee;
use crate::error::Error;
use crate::media::Media;
use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::sync::SyncEngine;
use extract::{AuthRequirement, Ruma};

/// The handles every handler may use.
#[derive(Clone)]
pub struct AppState {
    /// Loaded configuration.
    pub config: Arc<Config>,
    /// Accounts, devices and tokens.
    pub accounts: Accounts,
    /// Rate limits for requests, logins and registrations.
    pub limits: Arc<crate::ratelimit::Limits>,
    /// `listen.trusted_proxies`, parsed: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<[crate::ssrf::IpRange]>,
    /// The room engine.
    pub rooms: Arc<Rooms>,
    /// Wakes waiting `/sync` requests.
    pub notifier: Arc<Notifier>,
    /// The media repository.
    pub media: Arc<Media>,
    /// End-to-end encryption keys and device lists.
    pub e2ee: Arc<E2ee>,
    /// `/sync` and the streams it carries (typing, receipts, account data, presence, to-device).
    pub sync: Arc<SyncEngine>,
    /// Server-to-server transport (keys, signed requests).
    pub federation: Arc<crate::federation::Federation>,
    /// Registered application services.
    pub appservices: Arc<crate::appservice::Appservices>,
    /// Wakes the background senders (`crate::delivery`), e.g. when the admin API resets a
    /// destination's backoff.
    pub outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
}

/// A handler taking one ruma request; registered on every path ruma knows for the endpoint.
pub trait RumaHandler<Req>: Clone + Send + Sync + 'static {
    /// Adds the handler to `router` for all of the endpoint's paths.
    fn register(self, router: Router<AppState>) -> Router<AppState>;
}

impl<Req, F, Fut, R> RumaHandler<Req> for F
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: AuthRequirement,
    F: Fn(State<AppState>, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    R: IntoResponse + 'static,
{
    fn register(self, mut router: Router<AppState>) -> Router<AppState> {
        let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
        for path in Req::PATH_BUILDER.all_paths() {
            let handler = self.clone();
            router = router.route(path, on(filter, move |s: State<AppState>, r: Ruma<Req>| handler(s, r)));
            // An empty state key is sent as `/state/{type}` or `/state/{type}/`; a path
            // parameter never matches an empty segment, so register both forms.
            if let Some(prefix) = path.strip_suffix("/{state_key}") {
                for variant in [prefix.to_owned(), format!("{prefix}/")] {
                    let handler = self.clone();
                    router = router.route(&variant, on(filter, move |s: State<AppState>, r: Ruma<Req>| handler(s, r)));
                }
            }
        }
        router
    }
}

/// Router extension to register ruma handlers.
pub trait RouterExt {
    /// Registers `handler` on all paths of its ruma endpoint.
    fn ruma<Req, H: RumaHandler<Req>>(self, handler: H) -> Self;
}

impl RouterExt for Router<AppState> {
    fn ruma<Req, H: RumaHandler<Req>>(self, handler: H) -> Self {
        handler.register(self)
    }
}

/// The complete application router.
///
/// A panic in a handler becomes a 500 `M_UNKNOWN` ([`panic_response`]) on both listeners, since
/// both serve this router.
///
/// CORS is done without a middleware of its own: every response gets the headers from one layer
/// stack (applied once, since each `Router::layer` call boxes every route's future again, and a
/// waiting long-poll keeps those boxes), and any `OPTIONS` request, a browser's preflight, is
/// answered by the fallbacks, since no endpoint has an `OPTIONS` route. Matrix clients expect
/// every `OPTIONS` request to succeed, as on Synapse; tower-http's `CorsLayer` would pass
/// non-preflight ones through to routing and get 405.
pub fn router(state: AppState) -> Router {
    let mut routes = client::routes(Router::new());
    routes = admin::routes(routes);
    if state.config.federation.enabled {
        routes = federation::routes(routes);
        routes = federation_media::routes(routes);
    }
    let cors = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::overriding(http::HeaderName::from_static(name), http::HeaderValue::from_static(value))
    };
    // Per route, where the route pattern is known; only with metrics on, since each layer
    // boxes every route's future again (see below).
    if state.config.listen.metrics.is_some() {
        routes = routes.route_layer(axum::middleware::from_fn(crate::metrics::track_http));
    }
    routes
        .fallback(|method: http::Method| async move { unrouted(&method, http::StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|method: http::Method| async move {
            unrouted(&method, http::StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(
            tower::ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_http())
                .layer(cors("access-control-allow-origin", "*"))
                .layer(cors("access-control-allow-methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS"))
                .layer(cors("access-control-allow-headers", "X-Requested-With, Content-Type, Authorization, Date"))
                // Innermost, so that a panic's 500 also gets the CORS headers.
                .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response)),
        )
        .with_state(state)
}

/// A handler that panicked answers 500 `M_UNKNOWN` (the panic is logged) instead of dropping
/// the connection without a word; the panic stays confined to its own request's task.
fn panic_response(payload: Box<dyn std::any::Any + Send>) -> Response {
    Error::internal(format!("handler panicked: {}", extract::panic_message(&*payload))).into_response()
}

/// The answer to a request no route takes: `OPTIONS` (a CORS preflight) succeeds, anything else
/// is `M_UNRECOGNIZED` with `status`.
fn unrouted(method: &http::Method, status: http::StatusCode) -> Response {
    crate::metrics::record_http(method, "unrouted", status, std::time::Duration::ZERO);
    if method == http::Method::OPTIONS {
        http::StatusCode::OK.into_response()
    } else {
        Error::unrecognized(status).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_m_unknown() {
        let app: Router = Router::new()
            .route(
                "/",
                axum::routing::get(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
        let res = tower::ServiceExt::oneshot(app, http::Request::get("/").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errcode"], "M_UNKNOWN");
    }
}
