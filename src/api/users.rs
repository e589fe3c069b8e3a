//! People of a school: students, guardians, staff and admins.

use super::Json;
use super::schools::existing_school;
use super::{allergen_list, required_text, split_list, utc};
use crate::auth::Principal;
use crate::auth::passwords::hash_password;
use crate::db::models::*;
use crate::db::new_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use actix_web::{HttpResponse, get, patch, post, web};
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
    crate::contact::email(v).map_err(|_| ApiError::validation("invalid email address"))
}

/// A phone number in E.164 (see [`crate::contact::phone`]).
pub fn phone(v: &str, region: Option<&str>) -> Result<String, ApiError> {
    crate::contact::phone(v, region).map_err(|m| ApiError::validation(m).with_field("phone"))
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
