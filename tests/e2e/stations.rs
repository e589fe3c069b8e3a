//! Kitchen stations: a school's stations and its meals' stations through the API, items
//! marked done and published in the kitchen's sequence, an order readied on expo or by
//! itself when every station is done; the screens in a real browser (`screens`).

use crate::common::*;

mod screens;

/// Puts the fixture's two meals at two new stations ("Grill", "Salad bar"); their ids.
pub async fn two_stations(hub: &Hub, admin: &str, f: &Fixture) -> (String, String) {
    let grill = new_station(hub, admin, &f.school, "Grill").await;
    let salad = new_station(hub, admin, &f.school, "Salad bar").await;
    for (meal, station) in [(&f.meals[0], &grill), (&f.meals[1], &salad)] {
        let path = format!("/api/v1/schools/{}/meals/{meal}", f.school);
        let meal = expect(
            patch(hub, admin, &path, json!({"station_id": station})).await,
            200,
        );
        assert_eq!(meal["station_id"], json!(station));
    }
    (grill, salad)
}

fn done_path(order: &str, line: usize) -> String {
    format!("/api/v1/orders/{order}/items/{line}/done")
}

/// The next frame about `order` on a kitchen socket, checking the sequence has no gap.
async fn frame_of(socket: &mut Socket, last_seq: &mut i64, order: &str) -> Value {
    loop {
        let f = next_json(socket).await;
        if f["seq"].is_null() {
            continue;
        }
        assert_eq!(f["seq"].as_i64().unwrap(), *last_seq + 1, "a gap: {f}");
        *last_seq += 1;
        if f["data"]["order"]["id"] == order {
            return f;
        }
    }
}

async fn stations_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "stations").await;
    let other = fixture(&hub, &admin, "otherstations").await;
    let stations = format!("/api/v1/schools/{}/stations", f.school);

    // Stations: unique per school, a name required; staff may not make them.
    let (grill, salad) = two_stations(&hub, &admin, &f).await;
    let r = post(&hub, &admin, &stations, json!({"name": "Grill"})).await;
    assert_eq!((r.status, r.code()), (409, "duplicate"), "{:?}", r.body);
    let r = post(&hub, &admin, &stations, json!({"name": "  "})).await;
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_failed"),
        "{:?}",
        r.body
    );
    let r = post(&hub, &f.kitchen_token, &stations, json!({"name": "Fryer"})).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let listed = expect(get(&hub, &f.kitchen_token, &stations).await, 200);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Grill", "Salad bar"]);
    let elsewhere = new_station(&hub, &admin, &other.school, "Grill").await;

    // A meal's station must be the school's; a refused change changes nothing.
    let meal = format!("/api/v1/schools/{}/meals/{}", f.school, f.meals[0]);
    for bad in [elsewhere.clone(), uuid::Uuid::new_v4().to_string()] {
        let r = patch(
            &hub,
            &admin,
            &meal,
            json!({"name": "Renamed", "station_id": bad}),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (422, "unknown_station"),
            "{:?}",
            r.body
        );
    }
    let meals = format!("/api/v1/schools/{}/meals", f.school);
    let r = post(
        &hub,
        &admin,
        &meals,
        json!({"name": "Fries", "price_cents": 200, "station_id": elsewhere}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "unknown_station"),
        "{:?}",
        r.body
    );
    let menu = expect(get(&hub, &admin, &meals).await, 200);
    assert_eq!(
        menu.as_array().unwrap().len(),
        2,
        "no meal was made: {menu}"
    );
    assert!(menu.to_string().contains("Tomato soup") && !menu.to_string().contains("Renamed"));
    let r = patch(&hub, &f.kitchen_token, &meal, json!({"station_id": salad})).await;
    assert_eq!(
        r.status, 403,
        "staff move meals between stations? {:?}",
        r.body
    );

    // An order carries its meals' stations; items are done only once the kitchen took it.
    let mut socket = open_kitchen_socket(&hub, &f.kitchen_token, &f.school).await;
    let order = expect(place_order(&hub, &f, "st-1", 2).await, 201);
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["items"][0]["station_id"], json!(grill));
    assert_eq!(order["items"][1]["station_id"], json!(salad));
    assert_eq!(order["items"][0]["done"], false);
    let placed = next_json(&mut socket).await;
    let mut seq = placed["seq"].as_i64().unwrap();
    let r = post(&hub, &f.kitchen_token, &done_path(&id, 0), json!({})).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "order_not_in_kitchen"),
        "{:?}",
        r.body
    );
    advance(&hub, &f, &id, &["confirm"]).await;
    frame_of(&mut socket, &mut seq, &id).await;

    let done = expect(
        post(&hub, &f.kitchen_token, &done_path(&id, 0), json!({})).await,
        200,
    );
    assert_eq!(done["items"][0]["done"], true);
    assert_eq!(done["items"][1]["done"], false);
    assert_eq!(done["state"], "confirmed");
    let frame = frame_of(&mut socket, &mut seq, &id).await;
    assert_eq!(frame["type"], "order.item_done", "{frame}");
    assert_eq!(frame["data"]["order"]["items"][0]["done"], true);
    for (who, token, line, status, code) in [
        ("again", &f.kitchen_token, 0, 409, "item_already_done"),
        ("no such line", &f.kitchen_token, 7, 404, "not_found"),
        ("the student", &f.student_token, 1, 403, "forbidden"),
        (
            "another school's staff",
            &other.kitchen_token,
            1,
            403,
            "wrong_school",
        ),
    ] {
        let r = post(&hub, token, &done_path(&id, line), json!({})).await;
        assert_eq!((r.status, r.code()), (status, code), "{who}: {:?}", r.body);
    }
    let r = post(
        &hub,
        &f.kitchen_token,
        &format!("/api/v1/orders/{id}/items/first/done"),
        json!({}),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "invalid_id"), "{:?}", r.body);

    // Without the school's setting, stations done leave the ready to expo's bump.
    expect(
        post(&hub, &f.kitchen_token, &done_path(&id, 1), json!({})).await,
        200,
    );
    frame_of(&mut socket, &mut seq, &id).await;
    let bump = format!("/api/v1/orders/{id}/bump");
    assert_eq!(
        expect(post(&hub, &f.kitchen_token, &bump, json!({})).await, 200)["state"],
        "preparing"
    );
    assert_eq!(
        expect(post(&hub, &f.kitchen_token, &bump, json!({})).await, 200)["state"],
        "ready"
    );
    for _ in 0..2 {
        frame_of(&mut socket, &mut seq, &id).await;
    }
    let r = post(&hub, &f.kitchen_token, &done_path(&id, 0), json!({})).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "order_not_in_kitchen"),
        "{:?}",
        r.body
    );

    // With it, the last station's item readies the order: started and readied by the hub,
    // each step its own event in the sequence.
    let school = format!("/api/v1/schools/{}", f.school);
    let r = patch(
        &hub,
        &f.kitchen_token,
        &school,
        json!({"ready_when_stations_done": true}),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "staff change the school's settings? {:?}",
        r.body
    );
    let s = expect(
        patch(
            &hub,
            &admin,
            &school,
            json!({"ready_when_stations_done": true}),
        )
        .await,
        200,
    );
    assert_eq!(s["ready_when_stations_done"], true);
    let order = expect(place_order(&hub, &f, "st-2", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    frame_of(&mut socket, &mut seq, &order).await;
    advance(&hub, &f, &order, &["confirm"]).await;
    frame_of(&mut socket, &mut seq, &order).await;
    expect(
        post(&hub, &f.kitchen_token, &done_path(&order, 1), json!({})).await,
        200,
    );
    frame_of(&mut socket, &mut seq, &order).await;
    let last = expect(
        post(&hub, &f.kitchen_token, &done_path(&order, 0), json!({})).await,
        200,
    );
    assert_eq!(
        last["state"], "confirmed",
        "the answer is the item's commit"
    );
    let kinds: Vec<Value> = [
        frame_of(&mut socket, &mut seq, &order).await,
        frame_of(&mut socket, &mut seq, &order).await,
        frame_of(&mut socket, &mut seq, &order).await,
    ]
    .into_iter()
    .map(|f| f["type"].clone())
    .collect();
    assert_eq!(kinds, ["order.item_done", "order.preparing", "order.ready"]);
    let read = expect(
        get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    assert_eq!(read["order"]["state"], "ready");
    assert!(read["order"]["pickup_code"].is_string(), "{read}");
    let ready = read["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(ready["reason"], "every station done");
    assert_eq!(
        ready["actor_id"],
        Value::Null,
        "the hub readied it: {ready}"
    );
    let items_done = read["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["type"] == "order.item_done")
        .count();
    assert_eq!(items_done, 2);

    drop((socket, hub));
    db.drop_database().await;
}

#[actix_web::test]
async fn stations_and_items_done_on_sqlite() {
    stations_api(Backend::Sqlite).await;
}

#[actix_web::test]
async fn stations_and_items_done_on_postgres() {
    stations_api(Backend::Postgres).await;
}
