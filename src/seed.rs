//! The demo school seeded on first start of the embedded default (and by `tiffin demo`).

use crate::auth::passwords::hash_password;
use crate::db::models::*;
use crate::db::new_id;
use crate::db::schema::{counters, guardian_links, meals, schools, stations, users};
use crate::db::{Db, DbError};
use crate::with_conn;
use diesel_async::{AsyncConnection, RunQueryDsl};

pub struct DemoPeople {
    pub school_id: String,
    pub admin_id: String,
    pub kitchen_id: String,
    pub student_id: String,
    pub guardian_id: String,
    /// (who, login, password): the passwords exist nowhere else once printed.
    pub sign_ins: Vec<(&'static str, &'static str, String)>,
}

/// Demo sign-ins (who, login). Their passwords are random, made at seeding and printed once;
/// `tiffin password LOGIN` sets a new one.
pub const DEMO_LOGINS: &[(&str, &str)] = &[
    ("admin", "admin@demo.tiffin.test"),
    ("kitchen staff", "kitchen@demo.tiffin.test"),
    ("student", "ada@demo.tiffin.test"),
    ("guardian", "grace@demo.tiffin.test"),
];

/// A password nobody can guess from the code or the README: 20 letters and digits (~119 bits).
pub fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

async fn person(
    school: Option<&str>,
    role: &str,
    name: &str,
    email: &str,
    password: &str,
    allergies: &str,
) -> Result<UserRow, DbError> {
    let at = now();
    Ok(UserRow {
        id: new_id(),
        school_id: school.map(str::to_owned),
        role: role.into(),
        display_name: name.into(),
        email: Some(email.into()),
        phone: None,
        password_hash: Some(
            hash_password(password.to_owned())
                .await
                .map_err(|e| DbError::Other(e.message))?,
        ),
        allergies: allergies.into(),
        locale: "en".into(),
        active: true,
        created_at: at,
        updated_at: at,
    })
}

pub async fn seed_demo(db: &Db) -> Result<DemoPeople, DbError> {
    let at = now();
    let school = SchoolRow {
        id: new_id(),
        name: "Demo Elementary".into(),
        time_zone: "America/Chicago".into(),
        event_seq: 0,
        created_at: at,
        updated_at: at,
        quiet_hours_start: None,
        quiet_hours_end: None,
        notice_seq: 0,
        phone_region: "US".into(),
        digest_at: None,
        digest_done_on: None,
        ready_when_stations_done: false,
    };
    let counters: Vec<CounterRow> = (1..=2)
        .map(|number| CounterRow {
            id: new_id(),
            school_id: school.id.clone(),
            number,
            name: format!("Counter {number}"),
            is_open: true,
            created_at: at,
            updated_at: at,
        })
        .collect();
    // Two stations, so the station and expo screens have something to show.
    let station = |name: &str| StationRow {
        id: new_id(),
        school_id: school.id.clone(),
        name: name.into(),
        created_at: at,
    };
    let demo_stations = [station("Hot line"), station("Cold bar")];
    let [hot, cold] = [&demo_stations[0].id, &demo_stations[1].id];
    let meals: Vec<MealRow> = [
        ("Veggie lasagna", 425, "gluten,milk", hot),
        ("Chicken rice bowl", 450, "", hot),
        ("Bean burrito", 400, "gluten", hot),
        ("Fruit cup", 150, "", cold),
    ]
    .into_iter()
    .map(|(name, cents, allergens, station)| MealRow {
        id: new_id(),
        school_id: school.id.clone(),
        name: name.into(),
        price_cents: cents,
        allergens: allergens.into(),
        available: true,
        station_id: Some(station.clone()),
        created_at: at,
        updated_at: at,
    })
    .collect();
    let sid = Some(school.id.as_str());
    let sign_ins: Vec<_> = DEMO_LOGINS
        .iter()
        .map(|(who, login)| (*who, *login, random_password()))
        .collect();
    let [
        (_, admin_login, admin_pw),
        (_, kitchen_login, kitchen_pw),
        (_, student_login, student_pw),
        (_, guardian_login, guardian_pw),
    ] = sign_ins.as_slice()
    else {
        return Err(DbError::Other("demo logins".into()));
    };
    let admin = person(None, "admin", "District Admin", admin_login, admin_pw, "").await?;
    let kitchen = person(
        sid,
        "kitchen_staff",
        "Kim (kitchen)",
        kitchen_login,
        kitchen_pw,
        "",
    )
    .await?;
    let student = person(
        sid,
        "student",
        "Ada L.",
        student_login,
        student_pw,
        "peanuts",
    )
    .await?;
    let guardian = person(sid, "guardian", "Grace L.", guardian_login, guardian_pw, "").await?;
    let link = GuardianLinkRow {
        guardian_id: guardian.id.clone(),
        student_id: student.id.clone(),
        relationship: "mother".into(),
        created_at: at,
    };
    // All or nothing: a half-seeded demo would never be seeded again.
    with_conn!(db, |conn| conn
        .transaction(async |conn| {
            diesel::insert_into(schools::table)
                .values(&school)
                .execute(conn)
                .await?;
            for row in &counters {
                diesel::insert_into(counters::table)
                    .values(row)
                    .execute(conn)
                    .await?;
            }
            for row in &demo_stations {
                diesel::insert_into(stations::table)
                    .values(row)
                    .execute(conn)
                    .await?;
            }
            for row in &meals {
                diesel::insert_into(meals::table)
                    .values(row)
                    .execute(conn)
                    .await?;
            }
            for user in [&admin, &kitchen, &student, &guardian] {
                diesel::insert_into(users::table)
                    .values(user)
                    .execute(conn)
                    .await?;
            }
            diesel::insert_into(guardian_links::table)
                .values(&link)
                .execute(conn)
                .await?;
            Ok::<_, diesel::result::Error>(())
        })
        .await)?;
    Ok(DemoPeople {
        school_id: school.id,
        admin_id: admin.id,
        kitchen_id: kitchen.id,
        student_id: student.id,
        guardian_id: guardian.id,
        sign_ins,
    })
}
