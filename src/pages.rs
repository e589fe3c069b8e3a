//! The built-in pages, served from `templates/pages/` with no build step.

use actix_web::{HttpResponse, get, web};

const INDEX: &str = include_str!("../templates/pages/index.html");
const DASHBOARD: &str = include_str!("../templates/pages/dashboard.html");
const BOARD: &str = include_str!("../templates/pages/board.html");

fn html(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(body)
}

#[utoipa::path(tag = "pages", responses((status = 200, description = "start page", content_type = "text/html")))]
#[get("/")]
pub async fn index() -> HttpResponse {
    html(INDEX)
}

/// The kitchen dashboard. The access token travels in the URL fragment (`#token=…`),
/// which browsers never send to the server.
#[utoipa::path(tag = "pages", responses((status = 200, description = "kitchen dashboard", content_type = "text/html")))]
#[get("/dashboard/{school_id}")]
pub async fn dashboard(_school_id: web::Path<uuid::Uuid>) -> HttpResponse {
    html(DASHBOARD)
}

/// The now-serving board for a school's pickup counters (`?counter=N` for one counter):
/// pickup codes and first names with an initial, nothing else.
#[utoipa::path(tag = "pages", responses((status = 200, description = "now-serving board", content_type = "text/html")))]
#[get("/board/{school_id}")]
pub async fn board(_school_id: web::Path<uuid::Uuid>) -> HttpResponse {
    html(BOARD)
}
