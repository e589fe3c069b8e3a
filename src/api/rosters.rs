//! Roster import over HTTP: a district's OneRoster bundle, zipped, as the request body.

use super::schools::existing_school;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::roster::{Options, Problem, Refusal, Report, Source};
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, post, web};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::Write;
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

/// A bundle's zip at most (a district of a million students zips to about 100 MiB).
const MAX_BUNDLE_BYTES: usize = 1 << 30;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RosterQuery {
    /// Only this school's people (a school admin's import; the school was imported before).
    pub school: Option<Uuid>,
    /// Count what would change; write nothing.
    pub dry_run: Option<bool>,
    /// IANA time zone of schools the bundle creates (default `UTC`).
    pub time_zone: Option<String>,
    /// ISO 3166-1 country for phone numbers of new schools written without `+` (default `US`).
    pub phone_region: Option<String>,
}

/// A zipped OneRoster bundle.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Bundle(Vec<u8>);

/// A refused bundle: nothing of it was applied.
#[derive(Serialize, ToSchema)]
pub struct RosterRefused {
    pub error: crate::error::ErrorDetail,
    /// Every bad line (at most 1000), with its file, line and reason.
    pub problems: Vec<Problem>,
    /// More bad lines than listed.
    pub more: bool,
}

const ZIP_TYPES: [&str; 3] = [
    "application/zip",
    "application/x-zip-compressed",
    "application/octet-stream",
];

#[utoipa::path(tag = "rosters", params(RosterQuery),
    request_body(description = "A OneRoster 1.1 or 1.2 CSV bundle, zipped",
        content((Bundle = "application/zip"), (Bundle = "application/octet-stream"))),
    responses((status = 200, body = Report), (status = 422, body = RosterRefused)))]
#[post("/admin/rosters")]
pub async fn import_roster(
    state: Data,
    who: Principal,
    query: web::Query<RosterQuery>,
    req: HttpRequest,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let school = query.school.map(|s| s.to_string());
    match &school {
        Some(id) => {
            who.require_school_admin(id)?;
            existing_school(&state, id).await?;
        }
        None => who.require_admin()?,
    }
    let media = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if !media.is_some_and(|m| ZIP_TYPES.contains(&m.as_str())) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the bundle zipped with Content-Type: application/zip",
        ));
    }
    // To a file, not memory: the zip is read from there, one file at a time.
    let mut file = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let mut size = 0;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                return Ok(refused(
                    ErrorCode::RosterUnreadable,
                    format!("body: {e}"),
                    Vec::new(),
                    false,
                ));
            }
        };
        size += chunk.len();
        if size > MAX_BUNDLE_BYTES {
            return Err(ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("a bundle has at most {MAX_BUNDLE_BYTES} bytes"),
            ));
        }
        file.write_all(&chunk).map_err(ApiError::internal)?;
    }
    file.flush().map_err(ApiError::internal)?;
    let options = Options {
        dry_run: query.dry_run.unwrap_or(false),
        school,
        time_zone: query.time_zone.clone().unwrap_or_else(|| "UTC".into()),
        phone_region: query.phone_region.clone().unwrap_or_else(|| "US".into()),
    };
    let db = state.db.clone();
    let path = file.path().to_owned();
    // Run to the end even if the client goes: the transaction commits or rolls back whole.
    let outcome = actix_web::rt::spawn(async move {
        let outcome = crate::roster::import(&db, Source::Zip(path), &options, &|_| {}).await;
        drop(file);
        outcome
    })
    .await
    .map_err(ApiError::internal)?;
    match outcome {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(Refusal::Invalid { problems, more }) => Ok(refused(
            ErrorCode::RosterInvalid,
            format!("{} bad lines; nothing was imported", problems.len()),
            problems,
            more,
        )),
        Err(Refusal::Unreadable(why)) => {
            Ok(refused(ErrorCode::RosterUnreadable, why, Vec::new(), false))
        }
        Err(Refusal::Db(e)) => Err(e.into()),
    }
}

/// Every `422` of this operation has one shape: the error and the bad lines, if any.
fn refused(code: ErrorCode, message: String, problems: Vec<Problem>, more: bool) -> HttpResponse {
    HttpResponse::build(code.status()).json(RosterRefused {
        error: crate::error::ErrorDetail {
            code,
            message,
            field: None,
        },
        problems,
        more,
    })
}
