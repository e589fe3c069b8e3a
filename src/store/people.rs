//! People (students, guardians, staff; their allergies and sign-in names) and the links
//! between guardians and students.

use super::changed_any;
use crate::db::models::*;
use crate::db::schema::*;
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

pub async fn user(db: &Db, id: &str) -> Result<Option<UserRow>, DbError> {
    crate::db::find(db, id).await
}

/// A user by sign-in name: an email address or a phone number.
pub async fn user_by_login(db: &Db, login: &str) -> Result<Option<UserRow>, DbError> {
    Ok(with_conn!(db, |conn| users::table
        .filter(users::email.eq(login).or(users::phone.eq(login)))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional())?)
}

pub async fn users_of_school(
    db: &Db,
    school_id: &str,
    role: Option<&str>,
) -> Result<Vec<UserRow>, DbError> {
    Ok(with_conn!(db, |conn| {
        let mut q = users::table
            .filter(users::school_id.eq(school_id))
            .select(UserRow::as_select())
            .into_boxed();
        if let Some(role) = role {
            q = q.filter(users::role.eq(role));
        }
        q.order(users::display_name.asc()).load(conn).await
    })?)
}

pub struct UserChanges<'a> {
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub password_hash: Option<&'a str>,
    pub allergies: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub active: Option<bool>,
}

pub async fn update_user(
    db: &Db,
    school_id: &str,
    id: &str,
    c: &UserChanges<'_>,
) -> Result<UserRow, DbError> {
    let at = now();
    Ok(with_conn!(db, |conn| diesel::update(
        users::table
            .filter(users::id.eq(id))
            .filter(users::school_id.eq(school_id))
    )
    .set((
        c.display_name.map(|v| users::display_name.eq(v)),
        c.email.map(|v| users::email.eq(Some(v))),
        c.phone.map(|v| users::phone.eq(Some(v))),
        c.password_hash.map(|v| users::password_hash.eq(Some(v))),
        c.allergies.map(|v| users::allergies.eq(v)),
        c.locale.map(|v| users::locale.eq(v)),
        c.active.map(|v| users::active.eq(v)),
        users::updated_at.eq(at),
    ))
    .returning(UserRow::as_returning())
    .get_result(conn)
    .await)?)
}

/// Replaces a person's password hash (the operator's reset, `tiffin password`).
pub async fn set_password(db: &Db, user_id: &str, hash: &str) -> Result<(), DbError> {
    let n = with_conn!(db, |conn| diesel::update(users::table.find(user_id))
        .set((
            users::password_hash.eq(Some(hash)),
            users::updated_at.eq(now())
        ))
        .execute(conn)
        .await)?;
    changed_any(n)
}

pub async fn delete_link(db: &Db, guardian_id: &str, student_id: &str) -> Result<(), DbError> {
    let n = with_conn!(db, |conn| diesel::delete(
        guardian_links::table
            .filter(guardian_links::guardian_id.eq(guardian_id))
            .filter(guardian_links::student_id.eq(student_id))
    )
    .execute(conn)
    .await)?;
    changed_any(n)
}

pub async fn links_of_student(db: &Db, student_id: &str) -> Result<Vec<GuardianLinkRow>, DbError> {
    Ok(with_conn!(db, |conn| guardian_links::table
        .filter(guardian_links::student_id.eq(student_id))
        .select(GuardianLinkRow::as_select())
        .load(conn)
        .await)?)
}

pub async fn is_guardian_of(db: &Db, guardian_id: &str, student_id: &str) -> Result<bool, DbError> {
    let n: i64 = with_conn!(db, |conn| guardian_links::table
        .filter(guardian_links::guardian_id.eq(guardian_id))
        .filter(guardian_links::student_id.eq(student_id))
        .count()
        .get_result(conn)
        .await)?;
    Ok(n > 0)
}
