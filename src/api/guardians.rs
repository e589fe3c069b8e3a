//! Guardian links: which guardian may act for which student.

use super::Json;
use super::required_text;
use crate::auth::Principal;
use crate::db::models::*;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardianLink {
    pub guardian_id: Uuid,
    pub student_id: Uuid,
    /// For example `mother`, `father`, `guardian`.
    pub relationship: String,
}

/// Both people must belong to this school: a student, and a guardian.
async fn check_pair(
    state: &AppState,
    school_id: &str,
    guardian_id: &str,
    student_id: &str,
) -> Result<(), ApiError> {
    let guardian = store::people::user(&state.db, guardian_id).await?;
    let student = store::people::user(&state.db, student_id).await?;
    match (guardian, student) {
        (Some(g), Some(s))
            if g.role == "guardian"
                && s.role == "student"
                && g.school_id.as_deref() == Some(school_id)
                && s.school_id.as_deref() == Some(school_id) =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => Err(ApiError::validation(
            "link a guardian to a student, both of this school",
        )),
        _ => Err(ApiError::not_found("guardian or student")),
    }
}

#[utoipa::path(tag = "users", request_body = GuardianLink, responses((status = 201, body = GuardianLink)))]
#[post("/schools/{school_id}/guardian-links")]
pub async fn create_guardian_link(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<GuardianLink>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    let (guardian_id, student_id) = (body.guardian_id.to_string(), body.student_id.to_string());
    check_pair(&state, &school_id, &guardian_id, &student_id).await?;
    let row = GuardianLinkRow {
        guardian_id,
        student_id,
        relationship: required_text("relationship", &body.relationship, 40)?,
        created_at: now(),
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(body.into_inner()))
}

#[utoipa::path(tag = "users", responses((status = 204)))]
#[delete("/schools/{school_id}/guardian-links/{guardian_id}/{student_id}")]
pub async fn delete_guardian_link(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, guardian_id, student_id) =
        (path.0.to_string(), path.1.to_string(), path.2.to_string());
    who.require_school_admin(&school_id)?;
    check_pair(&state, &school_id, &guardian_id, &student_id).await?;
    store::people::delete_link(&state.db, &guardian_id, &student_id)
        .await
        .map_err(|e| match e {
            crate::db::DbError::NotFound => ApiError::not_found("guardian link"),
            e => e.into(),
        })?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(tag = "users", responses((status = 200, body = Vec<GuardianLink>)))]
#[get("/schools/{school_id}/students/{student_id}/guardians")]
pub async fn list_guardians(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, student_id) = (path.0.to_string(), path.1.to_string());
    who.require_school_admin(&school_id)?;
    let student = store::people::user(&state.db, &student_id).await?;
    if student.and_then(|s| s.school_id).as_deref() != Some(school_id.as_str()) {
        return Err(ApiError::not_found("student"));
    }
    let links = store::people::links_of_student(&state.db, &student_id).await?;
    let body: Vec<serde_json::Value> = links
        .into_iter()
        .map(|l| serde_json::json!({"guardian_id": l.guardian_id, "student_id": l.student_id, "relationship": l.relationship}))
        .collect();
    Ok(HttpResponse::Ok().json(body))
}
