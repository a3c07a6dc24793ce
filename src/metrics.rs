//! Prometheus metrics: what an operator's dashboard and alerts read.
//!
//! Code anywhere records through the `metrics` facade (`counter!`, `histogram!`, `gauge!`); this
//! module installs the Prometheus recorder when `listen.metrics` is set and serves `GET /metrics`
//! on that separate address, which should not be public. Without it no recorder is installed
//! and every recording is a no-op. What is cheaper to read than to keep up to date (process
//! figures, the database pool, outbox depths) is read at scrape time. `docs/metrics.md` lists
//! every metric; `docs/grafana-dashboard.json` draws them.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::storage::Db;

/// Latency buckets in seconds, from a cached read to a long-poll's timeout.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Batch-size buckets of the event writer.
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's recorder (one per process: the `metrics` facade has one global recorder).
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once; later calls reuse it) and answers its handle.
fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .context("histogram buckets")?
        .set_buckets_for_metric(Matcher::Full("myelin_event_writer_batch_size".into()), BATCH)
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// What the metrics listener reads at scrape time.
#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    process: std::sync::Arc<metrics_process::Collector>,
    db: Db,
}

/// Installs the recorder and serves `GET /metrics` on `addr` until the process ends. Binding
/// happens before this returns, so a taken address stops start-up.
pub async fn serve(addr: SocketAddr, db: Db) -> anyhow::Result<()> {
    let handle = install()?;
    let process = metrics_process::Collector::default();
    process.describe();
    let scrape = Scrape { handle, process: std::sync::Arc::new(process), db };
    let app = Router::new().route("/metrics", get(render)).with_state(scrape);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding listen.metrics {addr}"))?;
    tracing::info!(address = %addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// `GET /metrics`: the Prometheus text format.
async fn render(State(scrape): State<Scrape>) -> Response {
    scrape.process.collect();
    let pool = scrape.db.pool();
    let (size, idle) = (pool.size(), pool.num_idle() as u32);
    metrics::gauge!("myelin_db_pool_connections", "state" => "in_use").set(size.saturating_sub(idle) as f64);
    metrics::gauge!("myelin_db_pool_connections", "state" => "idle").set(idle as f64);
    match scrape.db.outbox_depths().await {
        Ok(depths) => {
            let now = crate::storage::now_ms();
            for (destination, rows, oldest_ts) in depths {
                let labels = [("destination", destination)];
                metrics::gauge!("myelin_federation_outbox_depth", &labels).set(rows as f64);
                let age = now.saturating_sub(oldest_ts).max(0) as f64 / 1000.0;
                metrics::gauge!("myelin_federation_outbox_oldest_age_seconds", &labels).set(age);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: reading the federation outbox failed"),
    }
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], scrape.handle.render()).into_response()
}

/// Help texts, so that a scrape explains itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("myelin_http_requests_total", "HTTP requests answered, by route pattern, method and status.");
    describe_histogram!(
        "myelin_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request (long-polls included), by route pattern and method."
    );
    describe_gauge!("myelin_db_pool_connections", "Database pool connections, in use and idle.");
    describe_histogram!(
        "myelin_db_commit_duration_seconds",
        metrics::Unit::Seconds,
        "Time to commit a write transaction (buffered rows included)."
    );
    describe_histogram!("myelin_event_writer_batch_size", "Events committed together by the event writer.");
    describe_histogram!(
        "myelin_event_writer_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to write and commit one event-writer batch."
    );
    describe_gauge!("myelin_sync_waiting", "/sync requests waiting for something to send.");
    describe_gauge!("myelin_federation_outbox_depth", "Queued PDUs and EDUs per destination.");
    describe_gauge!(
        "myelin_federation_outbox_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest queued row per destination."
    );
    describe_counter!(
        "myelin_federation_transactions_total",
        "Outbound federation transactions by result (sent, refused, failed attempt)."
    );
    describe_counter!(
        "myelin_federation_inbound_pdus_total",
        "Inbound PDUs by outcome (accepted, soft_failed, rejected)."
    );
    describe_counter!("myelin_push_notifications_total", "Push notifications sent to gateways, by result.");
}

/// Counts and times each request under its route pattern (`/_matrix/client/v3/rooms/{roomId}/send/...`),
/// never its raw path, so that the number of series stays bounded. Added with `route_layer`:
/// requests no route takes are counted by the fallback as `endpoint="unrouted"`.
pub async fn track_http(request: Request, next: Next) -> Response {
    if HANDLE.get().is_none() {
        return next.run(request).await;
    }
    let endpoint = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let start = Instant::now();
    let response = next.run(request).await;
    record_http(&method, endpoint.as_deref().unwrap_or("unrouted"), response.status(), start.elapsed());
    response
}

/// Records one answered request.
pub fn record_http(method: &http::Method, endpoint: &str, status: http::StatusCode, elapsed: Duration) {
    if HANDLE.get().is_none() {
        return;
    }
    let labels = [("method", method.as_str().to_owned()), ("endpoint", endpoint.to_owned())];
    metrics::histogram!("myelin_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    let labels = [
        ("method", method.as_str().to_owned()),
        ("endpoint", endpoint.to_owned()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("myelin_http_requests_total", &labels).increment(1);
}

/// Holds a gauge one higher while alive (a waiting long-poll).
pub struct Occupied(metrics::Gauge);

impl Occupied {
    /// Raises `gauge` by one until the returned guard is dropped.
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1);
        Self(gauge)
    }
}

impl Drop for Occupied {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}
