//! School set-up: schools, counters, people, guardian links and menus.

use super::Json;
use super::{allergen_list, new_id, required_text, split_list, utc};
use crate::auth::Principal;
use crate::auth::passwords::hash_password;
use crate::db::models::*;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tiffin_actors::domain::Role;
use utoipa::ToSchema;
use uuid::Uuid;

type Data = web::Data<AppState>;

// The domain's `Role` (serde names), described for the OpenAPI document.
/// Who a person is to the hub.
#[derive(ToSchema)]
#[schema(as = Role, rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RoleName {
    Student,
    Guardian,
    Teacher,
    KitchenStaff,
    SchoolAdmin,
    Admin,
}

#[derive(Serialize, ToSchema)]
pub struct School {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    /// Low-priority notifications wait until these end; absent when there are none.
    pub quiet_hours: Option<QuietHoursBody>,
    /// ISO 3166-1 country whose numbering plan reads phone numbers written without `+`.
    pub phone_region: String,
    /// School-local `HH:MM` the guardians' daily digest goes out; absent: the hub's
    /// `digest.at` (18:00 unless configured).
    pub digest_at: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// School-local times of day, `HH:MM`; a start after the end spans midnight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    pub start: String,
    pub end: String,
}

impl From<SchoolRow> for School {
    fn from(r: SchoolRow) -> School {
        School {
            id: r.id,
            name: r.name,
            time_zone: r.time_zone,
            quiet_hours: r
                .quiet_hours_start
                .zip(r.quiet_hours_end)
                .map(|(start, end)| QuietHoursBody { start, end }),
            phone_region: r.phone_region,
            digest_at: r.digest_at,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchool {
    pub name: String,
    /// IANA time zone, e.g. `America/Chicago`.
    pub time_zone: String,
    /// ISO 3166-1 country for phone numbers written without `+` (default `US`).
    pub phone_region: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchool {
    pub name: Option<String>,
    pub time_zone: Option<String>,
    /// Equal start and end turn quiet hours off.
    pub quiet_hours: Option<QuietHoursBody>,
    pub phone_region: Option<String>,
    /// School-local `HH:MM` of the daily digest; `null` goes back to the hub's `digest.at`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub digest_at: Option<Option<String>>,
}

/// A field that is present, even as `null` (`Some(None)`), against one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn time_of_day(field: &str, value: &str) -> Result<String, ApiError> {
    chrono::NaiveTime::parse_from_str(value, "%H:%M")
        .map(|t| t.format("%H:%M").to_string())
        .map_err(|_| ApiError::validation(format!("{field} must be HH:MM, got {value:?}")))
}

/// `Some(None)` turns quiet hours off.
fn quiet_hours(body: &QuietHoursBody) -> Result<Option<(String, String)>, ApiError> {
    let time = |field: &str, value: &str| time_of_day(&format!("quiet_hours.{field}"), value);
    let (start, end) = (time("start", &body.start)?, time("end", &body.end)?);
    Ok((start != end).then_some((start, end)))
}

const DEFAULT_PHONE_REGION: &str = "US";

fn phone_region(region: &str) -> Result<String, ApiError> {
    let region = region.trim().to_uppercase();
    region
        .parse::<phonenumber::country::Id>()
        .map(|_| region.clone())
        .map_err(|_| {
            ApiError::validation(format!(
                "phone_region {region:?} is not an ISO 3166-1 country"
            ))
            .with_field("phone_region")
        })
}

fn time_zone(tz: &str) -> Result<String, ApiError> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| tz.to_owned())
        .map_err(|_| ApiError::validation(format!("unknown time zone {tz:?}")))
}

/// The school must exist; 404 otherwise (after the caller's scope was checked).
pub async fn existing_school(state: &AppState, id: &str) -> Result<SchoolRow, ApiError> {
    store::schools::school(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("school"))
}

#[utoipa::path(tag = "schools", request_body = CreateSchool,
    responses((status = 201, body = School), (status = "4XX", body = crate::error::ErrorBody)))]
#[post("/schools")]
pub async fn create_school(
    state: Data,
    who: Principal,
    body: Json<CreateSchool>,
) -> Result<HttpResponse, ApiError> {
    who.require_admin()?;
    let at = now();
    let row = SchoolRow {
        id: new_id(),
        name: required_text("name", &body.name, 200)?,
        time_zone: time_zone(&body.time_zone)?,
        event_seq: 0,
        created_at: at,
        updated_at: at,
        quiet_hours_start: None,
        quiet_hours_end: None,
        notice_seq: 0,
        phone_region: body
            .phone_region
            .as_deref()
            .map_or(Ok(DEFAULT_PHONE_REGION.to_owned()), phone_region)?,
        digest_at: None,
        digest_done_on: None,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(School::from(row)))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = Vec<School>)))]
#[get("/schools")]
pub async fn list_schools(state: Data, who: Principal) -> Result<HttpResponse, ApiError> {
    let only = if who.is_admin() {
        None
    } else {
        Some(
            who.school_id
                .clone()
                .ok_or_else(|| ApiError::forbidden("no school on this token"))?,
        )
    };
    let rows = store::schools::schools(&state.db, only.as_deref()).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(School::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = School), (status = 404, body = crate::error::ErrorBody)))]
#[get("/schools/{school_id}")]
pub async fn get_school(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.to_string();
    who.require_school(&id)?;
    Ok(HttpResponse::Ok().json(School::from(existing_school(&state, &id).await?)))
}

#[utoipa::path(tag = "schools", request_body = UpdateSchool, responses((status = 200, body = School)))]
#[patch("/schools/{school_id}")]
pub async fn update_school(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<UpdateSchool>,
) -> Result<HttpResponse, ApiError> {
    let id = path.to_string();
    who.require_school_admin(&id)?;
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 200))
        .transpose()?;
    let tz = body.time_zone.as_deref().map(time_zone).transpose()?;
    let quiet = body.quiet_hours.as_ref().map(quiet_hours).transpose()?;
    let region = body.phone_region.as_deref().map(phone_region).transpose()?;
    let digest_at = match &body.digest_at {
        Some(Some(at)) => Some(Some(time_of_day("digest_at", at)?)),
        Some(None) => Some(None),
        None => None,
    };
    let changes = store::schools::SchoolChanges {
        name: name.as_deref(),
        time_zone: tz.as_deref(),
        quiet_hours: quiet,
        phone_region: region.as_deref(),
        digest_at,
    };
    store::schools::update_school(&state.db, &id, changes).await?;
    Ok(HttpResponse::Ok().json(School::from(existing_school(&state, &id).await?)))
}

#[derive(Serialize, ToSchema)]
pub struct Counter {
    pub id: String,
    pub school_id: String,
    pub number: i32,
    pub name: String,
    pub is_open: bool,
}

impl From<CounterRow> for Counter {
    fn from(r: CounterRow) -> Counter {
        Counter {
            id: r.id,
            school_id: r.school_id,
            number: r.number,
            name: r.name,
            is_open: r.is_open,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCounter {
    pub number: i32,
    pub name: Option<String>,
    #[serde(default)]
    pub is_open: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCounter {
    pub name: Option<String>,
    pub is_open: Option<bool>,
}

#[utoipa::path(tag = "counters", request_body = CreateCounter, responses((status = 201, body = Counter)))]
#[post("/schools/{school_id}/counters")]
pub async fn create_counter(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateCounter>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    if !(1..=99).contains(&body.number) {
        return Err(ApiError::validation(
            "counter number must be between 1 and 99",
        ));
    }
    let at = now();
    let row = CounterRow {
        id: new_id(),
        school_id,
        number: body.number,
        name: match &body.name {
            Some(n) => required_text("name", n, 80)?,
            None => format!("Counter {}", body.number),
        },
        is_open: body.is_open,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(Counter::from(row)))
}

#[utoipa::path(tag = "counters", responses((status = 200, body = Vec<Counter>)))]
#[get("/schools/{school_id}/counters")]
pub async fn list_counters(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::counters::counters(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Counter::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "counters", request_body = UpdateCounter, responses((status = 200, body = Counter)))]
#[patch("/schools/{school_id}/counters/{counter_id}")]
pub async fn update_counter(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateCounter>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, counter_id) = (path.0.to_string(), path.1.to_string());
    // Staff open and close counters; renaming is set-up.
    if body.name.is_some() {
        who.require_school_admin(&school_id)?;
    } else {
        who.require_kitchen(&school_id)?;
    }
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 80))
        .transpose()?;
    let row = store::counters::update_counter(
        &state.db,
        &school_id,
        &counter_id,
        name.as_deref(),
        body.is_open,
    )
    .await
    .map_err(|e| match e {
        crate::db::DbError::NotFound => ApiError::not_found("counter"),
        e => e.into(),
    })?;
    // Closing a counter moves the meals waiting there, and tells their students.
    if body.is_open == Some(false) {
        let kitchen = state
            .registry
            .send(tiffin_actors::KitchenFor(school_id.clone()))
            .await?;
        let moved = kitchen
            .send(tiffin_actors::CounterClosed {
                counter_id: counter_id.clone(),
                actor_id: Some(who.user_id.clone()),
            })
            .await??;
        if moved > 0 {
            state.dispatcher.do_send(tiffin_actors::Nudge);
        }
    }
    Ok(HttpResponse::Ok().json(Counter::from(row)))
}

#[derive(Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub school_id: Option<String>,
    #[schema(value_type = RoleName, example = "student")]
    pub role: Role,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub allergies: Vec<String>,
    pub locale: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl User {
    /// The holder of the signing key, as `/me` shows an operator's admin token.
    pub fn operator(who: &Principal) -> User {
        User {
            id: crate::auth::OPERATOR.to_owned(),
            school_id: None,
            role: Role::Admin,
            display_name: "Operator (token from `tiffin token`)".to_owned(),
            email: None,
            phone: None,
            allergies: Vec::new(),
            locale: "en".to_owned(),
            active: true,
            created_at: DateTime::from_timestamp(who.issued_at, 0).unwrap_or_default(),
        }
    }
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            role: Role::parse(&r.role).unwrap_or(Role::Student),
            id: r.id,
            school_id: r.school_id,
            display_name: r.display_name,
            email: r.email,
            phone: r.phone,
            allergies: split_list(&r.allergies),
            locale: r.locale,
            active: r.active,
            created_at: utc(r.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// student, guardian, teacher, kitchen_staff or school_admin.
    #[schema(value_type = RoleName, example = "student")]
    pub role: Role,
    pub display_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// At least 8 characters; without one the user cannot sign in.
    pub password: Option<String>,
    #[serde(default)]
    pub allergies: Vec<String>,
    pub locale: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub password: Option<String>,
    pub allergies: Option<Vec<String>>,
    pub locale: Option<String>,
    pub active: Option<bool>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserFilter {
    #[param(value_type = Option<RoleName>)]
    pub role: Option<Role>,
}

fn email(v: &str) -> Result<String, ApiError> {
    let v = v.trim().to_lowercase();
    let valid = v.len() <= 254
        && v.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if valid {
        Ok(v)
    } else {
        Err(ApiError::validation("invalid email address"))
    }
}

/// Phone numbers are stored in E.164 (`+` and digits), so sign-in and SMS match however they
/// were written. Written without `+`, a number is read in `region`'s numbering plan; one that
/// plan says cannot be dialled is refused.
pub fn phone(v: &str, region: Option<&str>) -> Result<String, ApiError> {
    let region = region.and_then(|r| r.parse::<phonenumber::country::Id>().ok());
    phonenumber::parse(region, v.trim())
        .ok()
        .filter(phonenumber::PhoneNumber::is_valid)
        .map(|n| n.format().mode(phonenumber::Mode::E164).to_string())
        .ok_or_else(|| {
            ApiError::validation(format!(
                "{v:?} is not a phone number that can be dialled: write +<country><number>, or a \
                 number of the school's phone_region"
            ))
            .with_field("phone")
        })
}

fn locale(v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if (2..=10).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
        Ok(v.to_owned())
    } else {
        Err(ApiError::validation("invalid locale"))
    }
}

async fn password_hash(password: &str) -> Result<String, ApiError> {
    if password.chars().count() < 8 || password.len() > 256 {
        return Err(ApiError::validation("passwords have 8 to 256 characters"));
    }
    let password = password.to_owned();
    hash_password(password).await
}

#[utoipa::path(tag = "users", request_body = CreateUser, responses((status = 201, body = User)))]
#[post("/schools/{school_id}/users")]
pub async fn create_user(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    if body.role == Role::Admin {
        return Err(ApiError::validation(
            "district admins belong to no school; create them with `tiffin demo` or in the database",
        ));
    }
    if body.role == Role::SchoolAdmin && !who.is_admin() {
        return Err(ApiError::forbidden(
            "only a district admin creates school admins",
        ));
    }
    let school = existing_school(&state, &school_id).await?;
    let hash = match &body.password {
        Some(p) => Some(password_hash(p).await?),
        None => None,
    };
    let at = now();
    let row = UserRow {
        id: new_id(),
        school_id: Some(school_id),
        role: body.role.as_str().to_owned(),
        display_name: required_text("display_name", &body.display_name, 120)?,
        email: body.email.as_deref().map(email).transpose()?,
        phone: body
            .phone
            .as_deref()
            .map(|p| phone(p, Some(&school.phone_region)))
            .transpose()?,
        password_hash: hash,
        allergies: allergen_list(&body.allergies)?,
        locale: body
            .locale
            .as_deref()
            .map(locale)
            .transpose()?
            .unwrap_or_else(|| "en".into()),
        active: true,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(User::from(row)))
}

#[utoipa::path(tag = "users", params(UserFilter), responses((status = 200, body = Vec<User>)))]
#[get("/schools/{school_id}/users")]
pub async fn list_users(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    filter: web::Query<UserFilter>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::people::users_of_school(&state.db, &school_id, filter.role.map(Role::as_str))
        .await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(User::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "users", request_body = UpdateUser, responses((status = 200, body = User)))]
#[patch("/schools/{school_id}/users/{user_id}")]
pub async fn update_user(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, user_id) = (path.0.to_string(), path.1.to_string());
    who.require_school_admin(&school_id)?;
    // School admins manage their school's people, not each other.
    let target = store::people::user(&state.db, &user_id)
        .await?
        .filter(|u| u.school_id.as_deref() == Some(school_id.as_str()))
        .ok_or_else(|| ApiError::not_found("user"))?;
    if target.role == Role::SchoolAdmin.as_str() && !who.is_admin() && target.id != who.user_id {
        return Err(ApiError::forbidden(
            "only a district admin changes another school admin",
        ));
    }
    let hash = match &body.password {
        Some(p) => Some(password_hash(p).await?),
        None => None,
    };
    let display_name = body
        .display_name
        .as_deref()
        .map(|n| required_text("display_name", n, 120))
        .transpose()?;
    let email = body.email.as_deref().map(email).transpose()?;
    let phone = match body.phone.as_deref() {
        Some(p) => {
            let school = existing_school(&state, &school_id).await?;
            Some(phone(p, Some(&school.phone_region))?)
        }
        None => None,
    };
    let allergies = body.allergies.as_deref().map(allergen_list).transpose()?;
    let locale = body.locale.as_deref().map(locale).transpose()?;
    let changes = store::people::UserChanges {
        display_name: display_name.as_deref(),
        email: email.as_deref(),
        phone: phone.as_deref(),
        password_hash: hash.as_deref(),
        allergies: allergies.as_deref(),
        locale: locale.as_deref(),
        active: body.active,
    };
    let row = store::people::update_user(&state.db, &school_id, &user_id, &changes)
        .await
        .map_err(|e| match e {
            crate::db::DbError::NotFound => ApiError::not_found("user"),
            e => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(User::from(row)))
}

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

#[derive(Serialize, ToSchema)]
pub struct Meal {
    pub id: String,
    pub school_id: String,
    pub name: String,
    pub price_cents: i64,
    pub allergens: Vec<String>,
    pub available: bool,
}

impl From<MealRow> for Meal {
    fn from(r: MealRow) -> Meal {
        Meal {
            allergens: split_list(&r.allergens),
            id: r.id,
            school_id: r.school_id,
            name: r.name,
            price_cents: r.price_cents,
            available: r.available,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMeal {
    pub name: String,
    pub price_cents: i64,
    #[serde(default)]
    pub allergens: Vec<String>,
    #[serde(default = "yes")]
    pub available: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeal {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub allergens: Option<Vec<String>>,
    pub available: Option<bool>,
}

fn price(cents: i64) -> Result<i64, ApiError> {
    if (0..=100_000).contains(&cents) {
        Ok(cents)
    } else {
        Err(ApiError::validation(
            "price_cents must be between 0 and 100000",
        ))
    }
}

#[utoipa::path(tag = "meals", request_body = CreateMeal, responses((status = 201, body = Meal)))]
#[post("/schools/{school_id}/meals")]
pub async fn create_meal(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateMeal>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    let at = now();
    let row = MealRow {
        id: new_id(),
        school_id,
        name: required_text("name", &body.name, 120)?,
        price_cents: price(body.price_cents)?,
        allergens: allergen_list(&body.allergens)?,
        available: body.available,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(Meal::from(row)))
}

#[utoipa::path(tag = "meals", responses((status = 200, body = Vec<Meal>)))]
#[get("/schools/{school_id}/meals")]
pub async fn list_meals(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::schools::meals(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(Meal::from).collect::<Vec<_>>()))
}

#[utoipa::path(tag = "meals", request_body = UpdateMeal, responses((status = 200, body = Meal)))]
#[patch("/schools/{school_id}/meals/{meal_id}")]
pub async fn update_meal(
    state: Data,
    who: Principal,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateMeal>,
) -> Result<HttpResponse, ApiError> {
    let (school_id, meal_id) = (path.0.to_string(), path.1.to_string());
    // Kitchen staff mark meals sold out; the rest is set-up.
    if body.name.is_some() || body.price_cents.is_some() || body.allergens.is_some() {
        who.require_school_admin(&school_id)?;
    } else {
        who.require_kitchen(&school_id)?;
    }
    let name = body
        .name
        .as_deref()
        .map(|n| required_text("name", n, 120))
        .transpose()?;
    let allergens = body.allergens.as_deref().map(allergen_list).transpose()?;
    let changes = store::schools::MealChanges {
        name: name.as_deref(),
        price_cents: body.price_cents.map(price).transpose()?,
        allergens: allergens.as_deref(),
        available: body.available,
    };
    let row = store::schools::update_meal(&state.db, &school_id, &meal_id, &changes)
        .await
        .map_err(|e| match e {
            crate::db::DbError::NotFound => ApiError::not_found("meal"),
            e => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(Meal::from(row)))
}

/// A lunch wave: school-local times of day, and how long before the start ordering and
/// cancelling close.
#[derive(Serialize, ToSchema)]
pub struct ServiceWindow {
    pub id: String,
    pub school_id: String,
    pub name: String,
    /// `HH:MM:SS`, school-local.
    pub starts_at: String,
    pub ends_at: String,
    pub order_cutoff_minutes: i32,
    pub cancel_deadline_minutes: i32,
}

impl From<ServiceWindowRow> for ServiceWindow {
    fn from(r: ServiceWindowRow) -> ServiceWindow {
        ServiceWindow {
            id: r.id,
            school_id: r.school_id,
            name: r.name,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            order_cutoff_minutes: r.order_cutoff_minutes,
            cancel_deadline_minutes: r.cancel_deadline_minutes,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceWindow {
    pub name: String,
    /// `HH:MM` or `HH:MM:SS` in the school's time zone.
    pub starts_at: String,
    pub ends_at: String,
    #[serde(default)]
    pub order_cutoff_minutes: i32,
    #[serde(default)]
    pub cancel_deadline_minutes: i32,
}

#[utoipa::path(tag = "schools", request_body = CreateServiceWindow, responses((status = 201, body = ServiceWindow)))]
#[post("/schools/{school_id}/service-windows")]
pub async fn create_service_window(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
    body: Json<CreateServiceWindow>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school_admin(&school_id)?;
    existing_school(&state, &school_id).await?;
    let time = |field: &str, v: &str| {
        crate::store::parse_time_of_day(v.trim())
            .ok_or_else(|| ApiError::validation(format!("{field} must be HH:MM or HH:MM:SS")))
    };
    let (starts, ends) = (
        time("starts_at", &body.starts_at)?,
        time("ends_at", &body.ends_at)?,
    );
    if ends <= starts {
        return Err(ApiError::validation("ends_at must be after starts_at"));
    }
    for (field, minutes) in [
        ("order_cutoff_minutes", body.order_cutoff_minutes),
        ("cancel_deadline_minutes", body.cancel_deadline_minutes),
    ] {
        if !(0..=24 * 60).contains(&minutes) {
            return Err(ApiError::validation(format!(
                "{field} must be between 0 and 1440"
            )));
        }
    }
    let at = now();
    let row = ServiceWindowRow {
        id: new_id(),
        school_id,
        name: required_text("name", &body.name, 80)?,
        starts_at: starts.format("%H:%M:%S").to_string(),
        ends_at: ends.format("%H:%M:%S").to_string(),
        order_cutoff_minutes: body.order_cutoff_minutes,
        cancel_deadline_minutes: body.cancel_deadline_minutes,
        created_at: at,
        updated_at: at,
    };
    crate::db::insert(&state.db, &row).await?;
    Ok(HttpResponse::Created().json(ServiceWindow::from(row)))
}

#[utoipa::path(tag = "schools", responses((status = 200, body = Vec<ServiceWindow>)))]
#[get("/schools/{school_id}/service-windows")]
pub async fn list_service_windows(
    state: Data,
    who: Principal,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let school_id = path.to_string();
    who.require_school(&school_id)?;
    existing_school(&state, &school_id).await?;
    let rows = store::schools::service_windows(&state.db, &school_id).await?;
    Ok(HttpResponse::Ok().json(
        rows.into_iter()
            .map(ServiceWindow::from)
            .collect::<Vec<_>>(),
    ))
}
