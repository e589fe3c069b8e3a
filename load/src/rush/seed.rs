//! The rush's district: schools with a meal, a counter, readers, kitchen staff, and students
//! with cards and guardians (those with the app signed in, with a phone and a device).

use super::waves::TIME_ZONE;
use super::{GUARDIAN_PASSWORD, GuardianApp, KITCHEN_PASSWORD, School};
use crate::hub::{Target, client, created};
use crate::people::{kitchen_staff, phone_number, phone_salt, sign_in};
use crate::profile::Profile;
use anyhow::Context;
use serde_json::json;
use std::cell::Cell;

fn card_uid(school: usize, student: usize) -> String {
    format!("1D{school:05X}{student:06X}")
}

/// Schools with a meal, a counter, readers, kitchen staff, and students with cards and
/// guardians; eight schools at once.
pub(super) async fn seed(
    profile: &Profile,
    target: &Target,
    run_id: &str,
) -> anyhow::Result<Vec<School>> {
    let indexes: Vec<usize> = (0..profile.schools).collect();
    let mut schools = Vec::with_capacity(profile.schools);
    for chunk in indexes.chunks(8) {
        let made = futures_util::future::join_all(
            chunk
                .iter()
                .map(|n| seed_school(profile, target, run_id, *n)),
        )
        .await;
        for school in made {
            schools.push(school?);
        }
    }
    Ok(schools)
}

/// A school's kitchen for the rush: a meal, counter 1 open with the profile's readers, and a
/// member of staff signed in.
pub(super) struct Kitchen {
    pub meal: String,
    pub readers: Vec<((String, String), Cell<i64>)>,
    pub staff: String,
    pub staff_login: String,
}

/// Sets up school `n`'s kitchen (its meal already on the menu if `meal` is given).
pub(super) async fn kitchen(
    profile: &Profile,
    target: &Target,
    run_id: &str,
    (n, id): (usize, &str),
    meal: Option<String>,
) -> anyhow::Result<Kitchen> {
    let meal = match meal {
        Some(meal) => meal,
        None => crate::hub::add_meal(target, id, MEAL).await?,
    };
    let counter = crate::hub::open_counter(target, id).await?;
    let mut readers = Vec::new();
    for r in 0..profile.readers_per_school {
        let name = format!("Load reader {r}");
        readers.push((
            crate::hub::add_reader(target, id, &counter, &name).await?,
            Cell::new(1),
        ));
    }
    let staff_login = format!("load-{run_id}-{n}-kitchen@load.test");
    let credentials = (staff_login.as_str(), KITCHEN_PASSWORD);
    let staff = kitchen_staff(target, id, "Load kitchen", credentials).await?;
    Ok(Kitchen {
        meal,
        readers,
        staff,
        staff_login,
    })
}

/// Connections a kitchen keeps open to the hub: its staff's tablets.
const KITCHEN_TABLETS: usize = 4;

impl Kitchen {
    /// The school `id` with this kitchen, its students and their cards, and its apps.
    pub(super) fn school(
        self,
        id: String,
        (students, cards): (Vec<String>, Vec<String>),
        apps: Vec<GuardianApp>,
    ) -> School {
        School {
            id,
            staff: self.staff,
            staff_login: self.staff_login,
            kitchen: crate::hub::kept_alive_client(KITCHEN_TABLETS),
            meal: self.meal,
            students,
            cards,
            readers: self.readers,
            waves: Vec::new(),
            apps,
        }
    }
}

const MEAL: (&str, i64) = ("Load lasagna", 400);

/// A guardian's app, signed in as `login` with the run's guardian password: a device
/// registered, "ready" by SMS and pickups by email (routine news is not emailed by default),
/// so every channel is loaded. Its access token.
pub(super) async fn open_app(target: &Target, login: &str, device: &str) -> anyhow::Result<String> {
    let c = client();
    let url = |p: &str| format!("{}{p}", target.url);
    let token = sign_in(&c, &target.url, login, GUARDIAN_PASSWORD)
        .await
        .context("guardian token")?
        .access;
    created(
        c.post(url("/api/v1/me/devices")).bearer_auth(&token),
        json!({"platform": "android", "token": device}),
    )
    .await?;
    created(
        c.put(url("/api/v1/me/preferences")).bearer_auth(&token),
        json!({"preferences": [
            {"kind": "order_ready", "channel": "sms", "enabled": true},
            {"kind": "order_picked_up", "channel": "email", "enabled": true},
        ]}),
    )
    .await?;
    Ok(token)
}

async fn seed_school(
    profile: &Profile,
    target: &Target,
    run_id: &str,
    n: usize,
) -> anyhow::Result<School> {
    let c = client();
    let admin = &target.admin_token;
    let url = |p: &str| format!("{}{p}", target.url);
    let (id, meal) = crate::hub::school_with_meal(
        target,
        format!("Load school {n} ({})", &run_id[..8]),
        TIME_ZONE,
        MEAL,
    )
    .await?;
    let kitchen = kitchen(profile, target, run_id, (n, &id), Some(meal)).await?;
    let mut students = Vec::with_capacity(profile.students_per_school);
    let mut cards = Vec::with_capacity(profile.students_per_school);
    let mut apps = Vec::new();
    let mut guardian_id = String::new();
    // Phone numbers are unique: this run's differ from an earlier run's on the same hub.
    let phone_salt = phone_salt(run_id);
    for s in 0..profile.students_per_school {
        // No password: students of a load run never sign in; the kitchen takes their
        // pre-orders (a staff token naming the student), as a school's ordering system does.
        let student = created(
            c.post(url(&format!("/api/v1/schools/{id}/users"))).bearer_auth(admin),
            json!({"role": "student", "display_name": format!("Student {s}"), "email": format!("load-{run_id}-{n}-{s}@load.test")}),
        )
        .await?;
        let student_id = student["id"].as_str().context("student id")?.to_owned();
        created(
            c.post(url(&format!("/api/v1/schools/{id}/cards")))
                .bearer_auth(admin),
            json!({"student_id": student_id, "card_uid": card_uid(n, s)}),
        )
        .await?;
        // Siblings: one guardian for every two students, with an email address (high and
        // critical news; routine news is in-app and push, the evening digest is off here).
        if s % 2 == 0 {
            let login = format!("load-{run_id}-{n}-g{s}@load.test");
            let mut body = json!({"role": "guardian", "display_name": format!("Guardian {s}"), "email": login});
            // Only guardians with the app get a password: the hub takes tens of ms to hash one.
            // They also have a phone and take "ready" by SMS.
            let with_app = s / 2 < profile.guardian_apps_per_school;
            if with_app {
                body["password"] = json!(GUARDIAN_PASSWORD);
                body["phone"] = json!(phone_number(phone_salt, n * 1000 + s));
            }
            let guardian = created(
                c.post(url(&format!("/api/v1/schools/{id}/users")))
                    .bearer_auth(admin),
                body,
            )
            .await?;
            guardian_id = guardian["id"].as_str().context("guardian id")?.to_owned();
            if with_app {
                let token = open_app(target, &login, &format!("load-{run_id}-{n}-{s}")).await?;
                apps.push(GuardianApp {
                    login,
                    token,
                    students: (s..(s + 2).min(profile.students_per_school)).collect(),
                });
            }
        }
        created(
            c.post(url(&format!("/api/v1/schools/{id}/guardian-links")))
                .bearer_auth(admin),
            json!({"guardian_id": guardian_id, "student_id": student_id, "relationship": "parent"}),
        )
        .await?;
        students.push(student_id);
        cards.push(card_uid(n, s));
    }
    Ok(kitchen.school(id, (students, cards), apps))
}
