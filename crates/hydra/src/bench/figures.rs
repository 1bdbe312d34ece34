//! The figures of a measured route, as printed (a table) and as JSON.

use serde::Serialize;

use super::harness::Phase;
use crate::output::Table;

/// The figures of one route, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RouteFigures {
    pub(super) route: String,
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) seconds: f64,
    pub(super) requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    pub(super) max_ms: f64,
    /// CPU µs the bench itself spent per successful request (load generator overhead).
    pub(super) client_cpu_us_per_request: Option<f64>,
}

impl RouteFigures {
    pub(super) fn from_phase(route: &str, phase: &Phase) -> RouteFigures {
        let millis = |micros: u64| micros as f64 / 1_000.0;
        let requests = phase.histogram.len();
        RouteFigures {
            route: route.to_owned(),
            requests,
            errors: phase.errors,
            seconds: phase.seconds,
            requests_per_second: if phase.seconds > 0.0 {
                requests as f64 / phase.seconds
            } else {
                0.0
            },
            p50_ms: millis(phase.histogram.value_at_quantile(0.50)),
            p99_ms: millis(phase.histogram.value_at_quantile(0.99)),
            max_ms: millis(phase.histogram.max()),
            client_cpu_us_per_request: phase
                .client_cpu_seconds
                .filter(|_| requests > 0)
                .map(|seconds| seconds * 1e6 / requests as f64),
        }
    }
}

pub(super) fn figures_table(rows: &[&RouteFigures]) -> String {
    let mut table = Table::new(&[
        "ROUTE",
        "REQUESTS",
        "ERRORS",
        "REQ/S",
        "P50_MS",
        "P99_MS",
        "MAX_MS",
        "BENCH_CPU_US/REQ",
    ]);
    for figures in rows {
        table.row(vec![
            figures.route.clone(),
            figures.requests.to_string(),
            figures.errors.to_string(),
            format!("{:.0}", figures.requests_per_second),
            format!("{:.2}", figures.p50_ms),
            format!("{:.2}", figures.p99_ms),
            format!("{:.2}", figures.max_ms),
            figures
                .client_cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |micros| format!("{micros:.0}")),
        ]);
    }
    table.render()
}

pub(super) fn warn_errors(route: &str, phase: &Phase) {
    if let Some(first_error) = &phase.first_error {
        tracing::warn!(route, errors = phase.errors, %first_error, "[bench] requests failed");
    }
}
