//! The plan's schools: a meal, a counter and readers, a kitchen bot, students with passwords
//! and cards, guardians of two students each with a device and a phone; everyone signed in.

use super::plan::Plan;
use super::{Guardian, PASSWORD, SEED_AT_ONCE, School, Student};
use crate::hub::Target;
use crate::people::{kitchen_staff, phone_number, phone_salt, sign_in};
use anyhow::Context;
use awc::Client;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};

async fn created(client: &Client, url: String, token: &str, body: Value) -> anyhow::Result<Value> {
    crate::hub::created(client.post(url).bearer_auth(token), body).await
}

/// Schools with a meal, a counter and readers, a kitchen bot, students with passwords and
/// cards, and guardians of two students each: everyone signed in.
pub(super) async fn seed(
    plan: &Plan,
    target: &Target,
    client: &Client,
) -> anyhow::Result<(Vec<School>, Vec<Student>, Vec<Guardian>)> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // Phone numbers are unique: this run's differ from an earlier run's on the same hub.
    let phone_salt = phone_salt(&run_id);
    let admin = target.admin_token.as_str();
    let url = |p: String| format!("{}{p}", target.url);
    let mut schools = Vec::new();
    let mut students = Vec::new();
    let mut guardians = Vec::new();
    for n in 0..plan.schools {
        let (id, meal) = crate::hub::school_with_meal(
            target,
            format!("Hasivu school {n} ({})", &run_id[..8]),
            "America/Chicago",
            ("Hasivu thali", 450),
        )
        .await?;
        let counter = created(
            client,
            url(format!("/api/v1/schools/{id}/counters")),
            admin,
            json!({"number": 1, "is_open": true}),
        )
        .await?;
        let counter = counter["id"].as_str().context("counter id")?.to_owned();
        let mut readers = Vec::new();
        for r in 0..plan.readers_per_school {
            let reader = created(
                client,
                url(format!("/api/v1/schools/{id}/readers")),
                admin,
                json!({"name": format!("Hasivu reader {r}"), "counter_id": counter}),
            )
            .await?;
            let secret = |k: &str| reader[k].as_str().map(str::to_owned).context("reader");
            readers.push(((secret("id")?, secret("secret")?), Cell::new(1)));
        }
        let staff_login = format!("hasivu-{run_id}-{n}-kitchen@load.test");
        let staff = kitchen_staff(target, &id, "Hasivu kitchen", (&staff_login, PASSWORD)).await?;
        // Students: created with a password (a hash on the hub), a card, signed in.
        let first = students.len();
        let numbers: Vec<usize> = (0..plan.students_per_school).collect();
        for lot in numbers.chunks(SEED_AT_ONCE) {
            let made = futures_util::future::join_all(lot.iter().map(|s| {
                let (id, run_id, url) = (&id, &run_id, &url);
                async move {
                    let login = format!("hasivu-{run_id}-{n}-{s}@load.test");
                    let student = created(
                        client,
                        url(format!("/api/v1/schools/{id}/users")),
                        admin,
                        json!({"role": "student", "display_name": format!("Student {s}"), "email": login, "password": PASSWORD}),
                    )
                    .await?;
                    let student_id = student["id"].as_str().context("student id")?.to_owned();
                    // Unique per run: runs on one hub do not share cards.
                    let card = format!("4A{}{n:02X}{s:04X}", &run_id[..6]);
                    created(
                        client,
                        url(format!("/api/v1/schools/{id}/cards")),
                        admin,
                        json!({"student_id": student_id, "card_uid": card}),
                    )
                    .await?;
                    let tokens = sign_in(client, &target.url, &login, PASSWORD).await?;
                    anyhow::Ok((
                        student_id,
                        Student {
                            school: n,
                            login,
                            card,
                            access: RefCell::new(tokens.access),
                            refresh: RefCell::new(tokens.refresh),
                            latest_order: RefCell::new(None),
                        },
                    ))
                }
            }))
            .await;
            for m in made {
                let (student_id, student) = m?;
                students.push((student_id, student));
            }
        }
        for g in 0..plan.guardians_per_school {
            let login = format!("hasivu-{run_id}-{n}-g{g}@load.test");
            let guardian = created(
                client,
                url(format!("/api/v1/schools/{id}/users")),
                admin,
                json!({
                    "role": "guardian",
                    "display_name": format!("Guardian {g}"),
                    "email": login,
                    "password": PASSWORD,
                    "phone": phone_number(phone_salt, n * 1000 + g),
                }),
            )
            .await?;
            let guardian_id = guardian["id"].as_str().context("guardian id")?.to_owned();
            let children = [first + 2 * g, first + 2 * g + 1];
            for child in children {
                created(
                    client,
                    url(format!("/api/v1/schools/{id}/guardian-links")),
                    admin,
                    json!({"guardian_id": guardian_id, "student_id": students[child].0, "relationship": "parent"}),
                )
                .await?;
            }
            let token = sign_in(client, &target.url, &login, PASSWORD).await?.access;
            // As the rush's guardians with the app: a device for push, "ready" by SMS and
            // pickups by email too (routine news is in-app and push by default), so that
            // every channel carries the lunch's news.
            created(
                client,
                url("/api/v1/me/devices".to_owned()),
                &token,
                json!({"platform": "android", "token": format!("hasivu-{run_id}-{n}-g{g}")}),
            )
            .await?;
            crate::hub::created(
                client
                    .put(url("/api/v1/me/preferences".to_owned()))
                    .bearer_auth(&token),
                json!({"preferences": [
                    {"kind": "order_ready", "channel": "sms", "enabled": true},
                    {"kind": "order_picked_up", "channel": "email", "enabled": true},
                ]}),
            )
            .await?;
            guardians.push(Guardian {
                token,
                children,
                next_child: Cell::new(0),
            });
        }
        schools.push(School {
            id,
            meal,
            staff,
            readers,
            next_reader: Cell::new(0),
        });
    }
    Ok((
        schools,
        students.into_iter().map(|(_, s)| s).collect(),
        guardians,
    ))
}
