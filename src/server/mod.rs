//! Start-up and shutdown: builds the handles from the configuration, binds the listeners (the
//! federation listener with the limits of `federation_listener`) and stops gracefully on SIGTERM
//! or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::accounts::Accounts;
use crate::api::AppState;
use crate::config::Config;
use crate::e2ee::E2ee;
use crate::federation::Federation;
use crate::media::Media;
use crate::notifier::{Notifier, OutboxWakeup};
use crate::ratelimit::Limits;
use crate::rooms::Rooms;
use crate::signing::SigningKeys;
use crate::ssrf::IpRange;
use crate::storage::Db;
use crate::sync::SyncEngine;

mod federation_listener;
mod http1;
mod listener;

/// Everything a running server holds.
pub struct Server {
    /// Handles given to the HTTP layer.
    pub state: AppState,
    /// Database handle.
    pub db: Db,
    /// Signing keys.
    pub keys: Arc<SigningKeys>,
    /// Signalled after commits that queued work for the senders (`crate::delivery`).
    pub outbox_wakeup: Arc<OutboxWakeup>,
}

impl Server {
    /// Opens the database (running migrations), loads the signing key, builds the handles.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
        let keys = Arc::new(SigningKeys::load_or_create(&config.data_dir.join("signing.key"))?);
        let db =
            Db::connect(&config.database.url, config.database.max_connections, &config.database.sqlite_synchronous)
                .await?;
        // Built bottom-up, each from the handles below it (docs/ARCHITECTURE.md): the signals
        // and the transport first, then the engines, then sync.
        let notifier = Arc::new(Notifier::new(db.bus().clone()));
        let outbox_wakeup = Arc::new(OutboxWakeup::new(db.bus().clone()));
        let federation = Arc::new(Federation::new(db.clone(), config.clone(), keys.clone())?);
        let appservices = crate::appservice::Appservices::load(db.clone(), config.clone()).await?;
        let rooms = Rooms::new(
            db.clone(),
            config.clone(),
            keys.clone(),
            notifier.clone(),
            outbox_wakeup.clone(),
            federation.clone(),
            appservices.clone(),
        );
        let media = Arc::new(Media::new(db.clone(), config.clone(), federation.clone())?);
        let remote_keys = config.federation.enabled.then(|| {
            Arc::new(crate::e2ee::federation::FederationKeys(federation.clone())) as Arc<dyn crate::e2ee::RemoteKeys>
        });
        let e2ee =
            Arc::new(E2ee::new(db.clone(), config.server_name(), notifier.clone(), outbox_wakeup.clone(), remote_keys));
        let sync =
            Arc::new(SyncEngine::new(db.clone(), rooms.clone(), notifier.clone(), e2ee.clone(), outbox_wakeup.clone()));
        sync.spawn_tasks();
        let state = AppState {
            accounts: Accounts::new(db.clone(), config.clone()),
            limits: Arc::new(Limits::new(&config.rate_limits)),
            trusted_proxies: config.listen.trusted_proxies.iter().filter_map(|r| IpRange::parse(r)).collect(),
            rooms,
            notifier,
            media,
            e2ee,
            sync,
            federation,
            appservices,
            outbox_wakeup: outbox_wakeup.clone(),
            config,
        };
        Ok(Self { state, db, keys, outbox_wakeup })
    }

    /// Serves until SIGTERM/SIGINT, then finishes in-flight requests and closes the database.
    pub async fn run(self) -> anyhow::Result<()> {
        let config = self.state.config.clone();
        // SQLite serves one process; a second one on the same file stops here.
        let _single = self.db.claim_sqlite_file()?;
        let state = &self.state;
        crate::cluster::Cluster::new(
            self.db.clone(),
            state.rooms.clone(),
            state.sync.clone(),
            state.e2ee.clone(),
            self.outbox_wakeup.clone(),
        )
        .start()
        .await?;
        if let Some(addr) = config.listen.metrics {
            crate::metrics::serve(addr, self.db.clone()).await?;
        }
        let app = crate::api::router(self.state.clone());
        // Background work that must run once however many processes share the database.
        let leases = crate::lease::Leases::new(self.db.clone());
        if config.federation.enabled {
            let (fed, wakeup) = (state.federation.clone(), self.outbox_wakeup.clone());
            leases.run_exclusive("federation-sender", move || {
                crate::delivery::federation::run(fed.clone(), wakeup.clone())
            });
        }
        let (appservices, wakeup) = (state.appservices.clone(), self.outbox_wakeup.clone());
        leases.run_exclusive("appservice-sender", move || {
            crate::delivery::appservice::run(appservices.clone(), wakeup.clone())
        });
        let gateways = config.push.gateway_ip_allowlist.iter().filter_map(|r| IpRange::parse(r));
        let push = Arc::new(crate::delivery::push::PushSender::new(
            self.db.clone(),
            state.rooms.clone(),
            crate::media::preview::Fetcher::new(gateways.collect()),
            self.outbox_wakeup.clone(),
        ));
        leases.run_exclusive("push-sender", move || {
            let push = push.clone();
            async move { push.run().await }
        });
        let sync = state.sync.clone();
        leases.run_exclusive("presence-sweep", move || {
            let sync = sync.clone();
            async move { sync.run_presence_sweeper().await }
        });
        let listener = tokio::net::TcpListener::bind(config.listen.client)
            .await
            .with_context(|| format!("binding listen.client {}", config.listen.client))?;
        tracing::info!(address = %config.listen.client, server_name = %config.server_name, "client API listening");

        let handle = axum_server::Handle::<SocketAddr>::new();
        let mut federation_task = None;
        if let (Some(addr), Some(cert), Some(key)) = (config.listen.federation, &config.tls.cert, &config.tls.key) {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .context("loading tls.cert / tls.key")?;
            let app = app.clone().into_make_service_with_connect_info::<SocketAddr>();
            let listen = &config.listen;
            let limits = federation_listener::LimitedAcceptor::new(
                listen.federation_max_connections,
                Duration::from_secs(listen.federation_idle_timeout_secs),
            );
            let mut server = axum_server::bind_rustls(addr, tls).map(|tls| tls.acceptor(limits)).handle(handle.clone());
            // axum-server turns hyper's head timeout off; without it a half-sent request after
            // the TLS handshake holds its connection for ever.
            server
                .http_builder()
                .http1()
                .header_read_timeout(Duration::from_secs(listen.federation_header_timeout_secs));
            tracing::info!(
                address = %addr,
                header_timeout_secs = listen.federation_header_timeout_secs,
                idle_timeout_secs = listen.federation_idle_timeout_secs,
                max_connections = listen.federation_max_connections,
                "federation listener (HTTPS)"
            );
            federation_task = Some(tokio::spawn(async move { server.serve(app).await }));
        }

        // In-flight requests get a bounded grace period: long-polls may otherwise hold the
        // shutdown for their whole timeout.
        let stopping = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let stopping = stopping.clone();
            let sync = self.state.sync.clone();
            async move {
                shutdown_signal().await;
                stopping.notify_waiters();
                sync.begin_shutdown();
            }
        };
        let serve = listener::serve(listener, app, signal, config.listen.client_max_connections);
        let grace = async {
            stopping.notified().await;
            tokio::time::sleep(std::time::Duration::from_secs(SHUTDOWN_GRACE_SECS)).await;
        };
        tokio::select! {
            () = serve => {}
            _ = grace => tracing::warn!("requests still running after {SHUTDOWN_GRACE_SECS} s; stopping anyway"),
        }
        handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        if let Some(task) = federation_task {
            let _ = task.await;
        }
        leases.release_all().await;
        self.db.close().await;
        tracing::info!("shut down");
        Ok(())
    }
}

/// Longest wait for in-flight requests after SIGTERM/SIGINT.
const SHUTDOWN_GRACE_SECS: u64 = 10;

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
