//! Prometheus metrics: request counts and latency by route, plus gauges read at scrape time.

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// A turn at a database connection: most take well under a millisecond.
const DB_TURN_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the process-wide recorder; call once.
pub fn install() -> Result<PrometheusHandle, String> {
    let latency = |name: &str| (Matcher::Full(name.into()), LATENCY_BUCKETS);
    [
        latency("http_request_duration_seconds"),
        latency("notify_claim_lag_seconds"),
        latency("notify_send_seconds"),
        latency("outbox_claim_seconds"),
        latency("outbox_fan_out_seconds"),
        (Matcher::Prefix("db_connection_".into()), DB_TURN_BUCKETS),
    ]
    .into_iter()
    .try_fold(PrometheusBuilder::new(), |builder, (metric, buckets)| {
        builder.set_buckets_for_metric(metric, buckets)
    })
    .map_err(|e| e.to_string())?
    .install_recorder()
    .map_err(|e| e.to_string())
}

/// Counts every request and times it, labelled by route pattern (never the raw path, so
/// ids do not explode the label space): `route` is the rest of the request's path (the
/// per-address limit, the router, the handler), called within the one middleware layer.
pub async fn track<B, Routed>(
    req: ServiceRequest,
    route: impl FnOnce(ServiceRequest) -> Routed,
) -> Result<ServiceResponse<B>, actix_web::Error>
where
    Routed: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
{
    let started = Instant::now();
    let method = req.method().clone();
    let response = route(req).await?;
    // Asked after routing, the pattern comes from the matched resource; asked before, actix
    // matches the path against the resource map again (BENCHMARKS.md).
    let route = response.request().match_pattern();
    let status = response.status().as_u16();
    record_request((method, route, status), started.elapsed().as_secs_f64());
    Ok(response)
}

type RequestKey = (Method, Option<String>, u16);

/// More keys than any map of routes, methods and statuses makes: past it, handles are not kept.
const MAX_KEPT: usize = 4096;

thread_local! {
    /// The request metrics' handles by method, route and status, kept per worker thread: the
    /// labels are made once, not three strings and two registry look-ups per request.
    static HANDLES: RefCell<HashMap<RequestKey, (Counter, Histogram)>> =
        RefCell::new(HashMap::new());
}

fn record_request(key: RequestKey, seconds: f64) {
    HANDLES.with_borrow_mut(|kept| {
        if let Some((requests, duration)) = kept.get(&key) {
            requests.increment(1);
            duration.record(seconds);
            return;
        }
        let (method, route, status) = &key;
        let route = route.clone().unwrap_or_else(|| "unmatched".into());
        let labels = [
            ("method", method.to_string()),
            ("route", route),
            ("status", status.to_string()),
        ];
        let requests = metrics::counter!("http_requests_total", &labels);
        let duration = metrics::histogram!("http_request_duration_seconds", &labels[..2]);
        requests.increment(1);
        duration.record(seconds);
        if kept.len() < MAX_KEPT {
            kept.insert(key, (requests, duration));
        }
    })
}
