//! A school set up through the API, and orders placed and moved in it.

use super::*;

/// A school with a counter, two meals, a student, a guardian and a kitchen account.
pub struct Fixture {
    pub school: String,
    pub meals: Vec<String>,
    pub student: String,
    pub student_token: String,
    pub guardian: String,
    pub guardian_email: String,
    /// Stored in E.164 (`+1201555…`); sign-in accepts it written with spaces and dashes.
    pub guardian_phone: String,
    pub kitchen_token: String,
}

pub async fn login(hub: &Hub, login: &str, password: &str) -> Value {
    let reply = send(
        client().post(hub.url("/api/v1/auth/login")),
        Some(json!({"login": login, "password": password})),
    )
    .await;
    expect(reply, 200)
}

pub async fn fixture(hub: &Hub, admin: &str, tag: &str) -> Fixture {
    fixture_in(hub, admin, tag, "America/New_York").await
}

pub async fn fixture_in(hub: &Hub, admin: &str, tag: &str, time_zone: &str) -> Fixture {
    let school = expect(
        post(
            hub,
            admin,
            "/api/v1/schools",
            json!({"name": format!("{tag} School"), "time_zone": time_zone}),
        )
        .await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/counters"),
            json!({"number": 1, "is_open": true}),
        )
        .await,
        201,
    );
    let mut meals = Vec::new();
    for (name, cents) in [("Tomato soup", 300), ("Rice bowl", 450)] {
        let meal = expect(
            post(
                hub,
                admin,
                &format!("/api/v1/schools/{school}/meals"),
                json!({"name": name, "price_cents": cents, "allergens": ["Celery"]}),
            )
            .await,
            201,
        );
        assert_eq!(meal["allergens"], json!(["celery"]));
        meals.push(meal["id"].as_str().unwrap().to_owned());
    }
    let users = format!("/api/v1/schools/{school}/users");
    let student_login = format!("ada.{tag}@school.test");
    let student = expect(
        post(hub, admin, &users, json!({"role": "student", "display_name": "Ada", "email": student_login, "password": "student-pass-1"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let guardian_email = format!("grace.{tag}@family.test");
    // 555 numbers of a real area code: dialable by the numbering plan, fictional.
    let guardian_phone = format!(
        "+1201555{:04}",
        (tag.len() * 7919 + tag.as_bytes()[0] as usize) % 10_000
    );
    let guardian = expect(
        post(hub, admin, &users, json!({"role": "guardian", "display_name": "Grace", "email": guardian_email, "phone": guardian_phone, "password": "guardian-pass-1"})).await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let kitchen_login = format!("kim.{tag}@school.test");
    expect(
        post(hub, admin, &users, json!({"role": "kitchen_staff", "display_name": "Kim", "email": kitchen_login, "password": "kitchen-pass-1"})).await,
        201,
    );
    expect(
        post(
            hub,
            admin,
            &format!("/api/v1/schools/{school}/guardian-links"),
            json!({"guardian_id": guardian, "student_id": student, "relationship": "mother"}),
        )
        .await,
        201,
    );
    let student_token = login(hub, &student_login, "student-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kitchen_token = login(hub, &kitchen_login, "kitchen-pass-1").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    Fixture {
        school,
        meals,
        student,
        student_token,
        guardian,
        guardian_email,
        guardian_phone,
        kitchen_token,
    }
}

pub async fn place_order(hub: &Hub, f: &Fixture, key: &str, quantity: i32) -> Reply {
    send(
        client()
            .post(hub.url(&format!("/api/v1/schools/{}/orders", f.school)))
            .bearer_auth(&f.student_token)
            .insert_header(("Idempotency-Key", key)),
        Some(json!({"items": [{"meal_id": f.meals[0], "quantity": quantity}, {"meal_id": f.meals[1], "quantity": 1}]})),
    )
    .await
}

/// Kitchen staff take an order through `actions` (`confirm`, `start`, `ready`, `pickup`, …);
/// returns the order after the last one.
pub async fn advance(hub: &Hub, f: &Fixture, order: &str, actions: &[&str]) -> Value {
    let mut last = Value::Null;
    for action in actions {
        let path = format!("/api/v1/orders/{order}/{action}");
        last = expect(post(hub, &f.kitchen_token, &path, json!({})).await, 200);
    }
    last
}

pub async fn token_of(hub: &Hub, login_name: &str, password: &str) -> String {
    login(hub, login_name, password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}
