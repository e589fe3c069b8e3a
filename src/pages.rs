//! The built-in pages, served from `templates/pages/` with no build step.

use crate::error::{ApiError, ErrorCode};
use actix_web::{HttpResponse, get, web};

const INDEX: &str = include_str!("../templates/pages/index.html");
const DASHBOARD: &str = include_str!("../templates/pages/dashboard.html");
const BOARD: &str = include_str!("../templates/pages/board.html");
const EXPO: &str = include_str!("../templates/pages/expo.html");
const STATION: &str = include_str!("../templates/pages/station.html");
const KEYS_JS: &str = include_str!("../templates/pages/keys.js");
const SOUND_JS: &str = include_str!("../templates/pages/sound.js");
const STATIONS_JS: &str = include_str!("../templates/pages/stations.js");
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

/// The expo screen: live orders with each station's progress; staff bump an order ready here.
#[utoipa::path(tag = "pages", responses((status = 200, description = "expo screen", content_type = "text/html")))]
#[get("/expo/{school_id}")]
pub async fn expo(_school_id: web::Path<uuid::Uuid>) -> HttpResponse {
    html(EXPO)
}

/// A station's screen: only its items of live orders, each marked done here.
#[utoipa::path(tag = "pages", responses((status = 200, description = "station screen", content_type = "text/html")))]
#[get("/station/{school_id}/{station_id}")]
pub async fn station(_ids: web::Path<(uuid::Uuid, uuid::Uuid)>) -> HttpResponse {
    html(STATION)
}

/// The pages' scripts, shared by the screens: screen (pairing, renewing its credential,
/// reconnecting, the header), keys (keyboard and bump bars), sound (chimes), stations (the
/// station and expo screens' feed and drawing).
#[utoipa::path(tag = "pages", responses((status = 200, description = "a page's script", content_type = "text/javascript")))]
#[get("/pages/{file}")]
pub async fn script(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let body = match file.as_str() {
        "keys.js" => KEYS_JS,
        "sound.js" => SOUND_JS,
        "stations.js" => STATIONS_JS,
        "screen.js" => SCREEN_JS,
        other => {
            return Err(ApiError::new(
                ErrorCode::RouteNotFound,
                format!("no page script {other:?}"),
            ));
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(body))
}

/// A new screen's start: it shows a pairing code, and once staff enter it, opens the page of
/// the screen's kind.
#[utoipa::path(tag = "pages", responses((status = 200, description = "screen pairing", content_type = "text/html")))]
#[get("/screens/pair")]
pub async fn pair() -> HttpResponse {
    html(PAIR)
}
