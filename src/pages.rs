//! The built-in pages, served from `templates/pages/` with no build step.

use actix_web::{HttpResponse, get, web};

const INDEX: &str = include_str!("../templates/pages/index.html");
const DASHBOARD: &str = include_str!("../templates/pages/dashboard.html");
const BOARD: &str = include_str!("../templates/pages/board.html");
const PAIR: &str = include_str!("../templates/pages/pair.html");
const SCREEN_JS: &str = include_str!("../templates/pages/screen.js");

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

/// The kitchen dashboard. A paired screen signs in with its own credential (kept in the
/// browser's storage); without one it shows a pairing code. A person's access token may
/// still come in the URL fragment (`#token=…`, never sent to the server; removed at once).
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

/// A new screen's start: it shows a pairing code, and once staff enter it, opens the page of
/// the screen's kind.
#[utoipa::path(tag = "pages", responses((status = 200, description = "screen pairing", content_type = "text/html")))]
#[get("/screens/pair")]
pub async fn pair() -> HttpResponse {
    html(PAIR)
}

/// What every screen page shares: pairing, renewing its credential, reconnecting, the header.
#[utoipa::path(tag = "pages", responses((status = 200, description = "the screens' shared script", content_type = "text/javascript")))]
#[get("/screens/screen.js")]
pub async fn screen_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(SCREEN_JS)
}
