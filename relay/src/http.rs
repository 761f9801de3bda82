//! The relay's HTTP endpoint, as a collector has one: `GET /metrics`
//! (OpenMetrics when asked for, Prometheus text otherwise), `GET /healthz`
//! (the process serves) and `GET /readyz` (the export configuration, if
//! any, is applied and at least one node is followed — or there are no
//! exporters).
//!
//! It must not compute metrics itself: it encodes the registry it is given.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

/// A readiness check.
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    ready: Ready,
}

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes.
pub fn router(registry: Arc<Registry>, ready: Ready) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, ready })
}

async fn scrape(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], to_prometheus_text(&text)).into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if (state.ready)() { (StatusCode::OK, "ok\n").into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response() }
}

/// OpenMetrics text → Prometheus text: counter families named after their
/// `_total` samples, no `_created` samples, no `# UNIT`/`# EOF`.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            let kind = &line[..7];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(kind);
            out.push_str(name);
            if counters.contains(name) {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(if kind == "# TYPE " && tail == "unknown" { "untyped" } else { tail });
            out.push('\n');
            continue;
        }
        let sample = line.split(['{', ' ']).next().unwrap_or("");
        if sample.strip_suffix("_created").is_some_and(|c| counters.contains(c)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Serves the routes on `addr` until `shutdown` completes.
///
/// # Errors
///
/// When the address cannot be bound or the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    ready: Ready,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, ready)).with_graceful_shutdown(shutdown).await
}

/// Binds the endpoint.
///
/// # Errors
///
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
