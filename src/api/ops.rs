//! Operations: liveness, readiness, metrics and the OpenAPI document.

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store;
use actix_web::{HttpRequest, HttpResponse, get, web};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Digest;

type Data = web::Data<AppState>;

#[utoipa::path(tag = "ops", responses((status = 200, description = "the process is alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers; `degraded` (still 200: the node serves its own sockets)
/// when it runs with other nodes and Redis is away.
#[utoipa::path(tag = "ops", responses((status = 200, description = "ready, or degraded: Redis unreachable"), (status = 503, description = "database unreachable")))]
#[get("/readyz")]
pub async fn readyz(state: Data) -> HttpResponse {
    let redis = crate::cluster::redis_status(state.cluster.as_deref());
    match state.db.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({
            "status": if redis == Some("unreachable") { "degraded" } else { "ready" },
            "database": state.db.backend(),
            "redis": redis,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unavailable");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "2"))
                .json(json!({"status": "unavailable", "database": "unreachable", "redis": redis}))
        }
    }
}

#[utoipa::path(tag = "ops", responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
    (status = 401, description = "`metrics_token` is set and the request does not carry it", body = crate::error::ErrorBody)))]
#[get("/metrics")]
pub async fn metrics(state: Data, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = &state.config.metrics_token {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Digests compared, so the time taken says nothing about the token.
        let digest = |s: &str| sha2::Sha256::digest(s.as_bytes());
        if digest(given) != digest(expected.expose_secret()) {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "metrics need the metrics token: Authorization: Bearer <metrics_token>",
            ));
        }
    }
    state.metrics.run_upkeep();
    if let Ok(counts) = store::orders::live_orders_by_state(&state.db).await {
        for state_name in tiffin_actors::domain::OrderState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
        {
            let n = counts
                .iter()
                .find(|(s, _)| s == state_name.as_str())
                .map_or(0, |(_, n)| *n);
            ::metrics::gauge!("tiffin_orders", "state" => state_name.as_str()).set(n as f64);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

#[utoipa::path(tag = "ops", responses((status = 200, description = "this document")))]
#[get("/openapi.json")]
pub async fn openapi(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}
