//! The metrics endpoint: `GET /metrics` (OpenMetrics text), `GET /healthz`
//! and `GET /readyz` (200 or 503, from checks the agent supplies).
//!
//! It serves whatever listener it is given; the lab binds it to loopback.
//! It must not compute metrics or decide health itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Metrics, MetricsError, names};

/// A health check: `true` when healthy.
pub type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// The checks behind `/healthz` (the process works) and `/readyz` (it is
/// ready for traffic, e.g. probes loaded and the first state applied).
#[derive(Clone)]
pub struct Health {
    pub live: Check,
    pub ready: Check,
}

impl Health {
    /// Checks from two closures.
    pub fn new(
        live: impl Fn() -> bool + Send + Sync + 'static,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            live: Arc::new(live),
            ready: Arc::new(ready),
        }
    }

    /// Always live and ready.
    #[must_use]
    pub fn always() -> Self {
        Self::new(|| true, || true)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Health,
}

/// The HTTP routes, for embedding in another server or for tests.
pub fn router(metrics: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

/// OpenMetrics when the client asks for it (Prometheus does), otherwise the
/// classic Prometheus text format (what `curl | promtool check metrics`
/// and older scrapers read).
async fn scrape(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = state.metrics.encode();
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, names::OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], to_prometheus_text(&text)).into_response()
    }
}

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns OpenMetrics text into the Prometheus text format: counter families
/// are named after their `_total` samples in `# HELP`/`# TYPE`, `_created`
/// samples and `# UNIT`/`# EOF` lines go, `unknown` becomes `untyped`.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_owned());
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let kind = &line[..7];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) { format!("{name}_total") } else { name.to_owned() };
            let tail = if kind == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
            out.push_str(kind);
            out.push_str(&name);
            out.push(' ');
            out.push_str(tail);
            out.push('\n');
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or("");
        if sample.ends_with("_created") && counters.contains(sample.trim_end_matches("_created")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn check(ok: bool) -> Response {
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n").into_response()
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    check((state.health.live)())
}

async fn readyz(State(state): State<AppState>) -> Response {
    check((state.health.ready)())
}

/// Binds the endpoint's listener.
///
/// # Errors
///
/// [`MetricsError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves the routes on `listener` until `shutdown` completes.
///
/// # Errors
///
/// [`MetricsError::Serve`] when the server fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { source })
}
