//! Kitchen screens in a real browser: pairing, renewals, a restart, a network cut and a
//! revocation; station and expo screens paired and driving an order to ready; sound behind
//! the browser's autoplay rule.

use super::with_screens;
use crate::common::*;

/// What the page's JavaScript answers to `script`.
async fn page_value(browser: &fantoccini::Client, script: &str) -> Value {
    browser.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` answers true in the page.
async fn until_page(browser: &fantoccini::Client, script: &str, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if page_value(browser, script).await == json!(true) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: never");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

fn live() -> &'static str {
    "return document.body.dataset.live === 'yes'"
}

fn order_shown(order: &str) -> String {
    format!("return !!document.querySelector(\"[data-order-id='{order}']\")")
}

async fn new_order(hub: &Hub, f: &Fixture, key: &str) -> String {
    expect(place_order(hub, f, key, 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new order reaches the screen within `within`, and the screen says it is live.
async fn order_reaches_a_live_screen(
    browser: &fantoccini::Client,
    order: &str,
    within: Duration,
    after: &str,
) {
    let what = format!("order after {after}");
    until_page(browser, &order_shown(order), within, &what).await;
    let what = format!("live after {after}");
    until_page(browser, live(), Duration::from_secs(20), &what).await;
}

/// A new screen in a real browser: it shows a code, is paired through the API, shows its
/// school, name and a clock, stays live across renewals (8 s tokens), a hub restart and a
/// cut longer than its token, and shows the revoked state when revoked (its socket closed).
/// Paired again as a board, it opens the board. Screenshots go to docs/screens/ (`UPDATE_SCREENSHOTS`).
#[actix_web::test]
async fn a_screen_in_a_real_browser_pairs_and_never_dies() {
    use fantoccini::Locator;
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(with_screens(hub_env(&db, None), 600, 8));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "riverside").await;
    let school = format!("/api/v1/schools/{}", f.school);
    expect(
        patch(&hub, &admin, &school, json!({"name": "Riverside Primary"})).await,
        200,
    );
    let browser = driver.browser().await;
    browser.set_window_size(1280, 720).await.unwrap();
    browser
        .goto(&hub.url(&format!("/dashboard/{}", f.school)))
        .await
        .unwrap();
    let code_of = |browser: fantoccini::Client| async move {
        browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#pairing-code"))
            .await
            .expect("a pairing code")
            .text()
            .await
            .unwrap()
    };
    let code = code_of(browser.clone()).await;
    screenshot(&browser, "screens/pairing-code.png").await;
    expect(
        enter_code(
            &hub,
            &f.kitchen_token,
            &f.school,
            &code,
            "Hot line",
            "kitchen",
        )
        .await,
        201,
    );
    until_page(
        &browser,
        live(),
        Duration::from_secs(20),
        "live after pairing",
    )
    .await;
    assert_eq!(
        page_value(
            &browser,
            "return document.getElementById('screen-name').textContent"
        )
        .await,
        json!("Hot line")
    );
    assert_eq!(
        page_value(
            &browser,
            "return document.getElementById('school').textContent"
        )
        .await,
        json!("Riverside Primary")
    );
    let clock = page_value(
        &browser,
        "return document.getElementById('clock').textContent",
    )
    .await;
    assert!(clock.as_str().is_some_and(|c| c.contains(':')), "{clock}");
    assert!(
        !page_value(&browser, "return location.href")
            .await
            .as_str()
            .unwrap()
            .contains('#'),
        "a token in the URL"
    );
    let first = new_order(&hub, &f, "screen-1").await;
    until_page(
        &browser,
        &order_shown(&first),
        Duration::from_secs(20),
        "first order",
    )
    .await;
    screenshot(&browser, "screens/paired-dashboard.png").await;

    // Tokens of 8 s: the page renews them itself and stays live well past their expiry.
    until_page(
        &browser,
        "return Number(document.body.dataset.renewals || 0) >= 3",
        Duration::from_secs(40),
        "three renewals",
    )
    .await;
    let second = new_order(&hub, &f, "screen-2").await;
    order_reaches_a_live_screen(&browser, &second, Duration::from_secs(20), "renewals").await;

    // A restart on the same address and database: the page comes back by itself.
    let address = hub.base.trim_start_matches("http://").to_owned();
    let mut env = hub.kill();
    until_page(
        &browser,
        "return document.body.dataset.live === 'no'",
        Duration::from_secs(20),
        "shown as not live",
    )
    .await;
    env.push(("TIFFIN_BIND".into(), address));
    let hub = Hub::start(env.clone());
    let third = new_order(&hub, &f, "screen-3").await;
    order_reaches_a_live_screen(&browser, &third, Duration::from_secs(30), "restart").await;

    // A cut longer than the token: renewals fail meanwhile and succeed once the hub is back.
    let env = hub.kill();
    actix_web::rt::time::sleep(Duration::from_secs(12)).await;
    let hub = Hub::start(env);
    let fourth = new_order(&hub, &f, "screen-4").await;
    order_reaches_a_live_screen(&browser, &fourth, Duration::from_secs(40), "the cut").await;

    // Revoked: the socket closes at once and the page says so.
    let screens = expect(
        get(
            &hub,
            &f.kitchen_token,
            &format!("/api/v1/schools/{}/screens", f.school),
        )
        .await,
        200,
    );
    let screen_id = screens[0]["id"].as_str().unwrap().to_owned();
    let url = hub.url(&format!("/api/v1/schools/{}/screens/{screen_id}", f.school));
    let r = send(client().delete(url).bearer_auth(&f.kitchen_token), None).await;
    assert_eq!(r.status, 204);
    until_page(
        &browser,
        "return document.getElementById('screen-overlay').className === 'revoked'",
        Duration::from_secs(10),
        "the revoked state",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut metrics = client().get(hub.url("/metrics")).send().await.unwrap();
        let text =
            String::from_utf8_lossy(&metrics.body().limit(4 << 20).await.unwrap()).to_string();
        if text.lines().any(|l| l == "ws_sockets 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked screen's socket is still open"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(&browser, "screens/revoked.png").await;

    // Paired again, as the now-serving board: the page moves to the board.
    browser
        .find(Locator::Css("#pair-again"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let code = code_of(browser.clone()).await;
    expect(
        enter_code(
            &hub,
            &f.kitchen_token,
            &f.school,
            &code,
            "Counter 1 board",
            "board",
        )
        .await,
        201,
    );
    until_page(
        &browser,
        &format!("return location.pathname === '/board/{}'", f.school),
        Duration::from_secs(20),
        "the board opened",
    )
    .await;
    until_page(&browser, live(), Duration::from_secs(20), "the board live").await;
    assert_eq!(
        page_value(
            &browser,
            "return document.getElementById('screen-name').textContent"
        )
        .await,
        json!("Counter 1 board")
    );
    browser.close().await.unwrap();
    drop(hub);
    db.drop_database().await;
}

/// A browser showing `/screens/pair`, paired through the API with `body` (name, kind...);
/// waits until the page it lands on is live at `lands_on`.
async fn paired_browser(
    driver: &ChromeDriver,
    hub: &Hub,
    f: &Fixture,
    mut body: Value,
    lands_on: &str,
) -> fantoccini::Client {
    use fantoccini::Locator;
    let browser = driver.browser().await;
    browser.set_window_size(1280, 720).await.unwrap();
    browser.goto(&hub.url("/screens/pair")).await.unwrap();
    let code = browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#pairing-code"))
        .await
        .expect("a pairing code")
        .text()
        .await
        .unwrap();
    body["code"] = json!(code);
    expect(
        enter_pairing(hub, &f.kitchen_token, &f.school, body).await,
        201,
    );
    let at = format!("return location.pathname === '{lands_on}'");
    until_page(&browser, &at, Duration::from_secs(20), lands_on).await;
    until_page(&browser, live(), Duration::from_secs(20), "live").await;
    let url = page_value(&browser, "return location.href").await;
    assert!(!url.as_str().unwrap().contains('#'), "a token in {url}");
    browser
}

/// Clicks `css` in the page, again until an element is there to take it (pages redraw).
async fn click(browser: &fantoccini::Client, css: &str) {
    let script =
        format!("const el = document.querySelector(\"{css}\"); if (el) el.click(); return !!el");
    until_page(browser, &script, Duration::from_secs(20), css).await;
}

/// Station and expo screens paired from `/screens/pair` as a kitchen would: each lands on
/// its own page (the station screen on its station) with the school, the screen's name and
/// a clock, and no token in its address. The grill's screen and the salad bar's credential
/// mark their items done (each only its own), the expo sees both stations done and bumps the
/// order to ready.
#[actix_web::test]
async fn paired_station_and_expo_screens_drive_an_order_to_ready() {
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "hillside").await;
    let school = format!("/api/v1/schools/{}", f.school);
    expect(
        patch(&hub, &admin, &school, json!({"name": "Hillside Middle"})).await,
        200,
    );
    let (grill, salad) = crate::stations::two_stations(&hub, &admin, &f).await;
    let station = paired_browser(
        &driver,
        &hub,
        &f,
        json!({"name": "Grill screen", "kind": "station", "station_id": grill}),
        &format!("/station/{}/{grill}", f.school),
    )
    .await;
    let expo = paired_browser(
        &driver,
        &hub,
        &f,
        json!({"name": "Pass", "kind": "expo"}),
        &format!("/expo/{}", f.school),
    )
    .await;
    let header = "return ['station-name', 'school', 'screen-name']\
        .map((id) => document.getElementById(id).textContent).join(' | ')";
    until_page(
        &station,
        &format!("{header} === 'Grill | Hillside Middle | Grill screen'"),
        Duration::from_secs(20),
        "the station's header",
    )
    .await;
    let expo_header = "return document.getElementById('school').textContent + ' | ' + \
        document.getElementById('screen-name').textContent";
    assert_eq!(
        page_value(&expo, expo_header).await,
        json!("Hillside Middle | Pass")
    );
    let clock = page_value(&expo, "return document.getElementById('clock').textContent").await;
    assert!(clock.as_str().is_some_and(|c| c.contains(':')), "{clock}");

    // The expo confirms the order; the grill's screen shows only its item.
    let order = new_order(&hub, &f, "hillside-1").await;
    let card = format!("#orders [data-order-id='{order}']");
    until_page(
        &expo,
        &order_shown(&order),
        Duration::from_secs(20),
        "on expo",
    )
    .await;
    // A paired screen offers no cancel (its credential may not cancel; a person answers for it).
    let offered = format!(
        "return [\"{card} .bump\", \"{card} .cancel\"].map((css) => !!document.querySelector(css))"
    );
    assert_eq!(page_value(&expo, &offered).await, json!([true, false]));
    click(&expo, &format!("{card} .bump")).await;
    until_page(
        &station,
        &order_shown(&order),
        Duration::from_secs(20),
        "on the grill",
    )
    .await;
    let lines = page_value(
        &station,
        &format!("return [...document.querySelectorAll(\"{card} .item\")].map(b => b.textContent)"),
    )
    .await;
    assert_eq!(
        lines.as_array().unwrap().len(),
        1,
        "only the grill's item: {lines}"
    );
    screenshot(&station, "screens/station.png").await;
    screenshot(&expo, "screens/expo.png").await;

    // The grill marks its item done on its screen; the salad bar's credential marks its own.
    click(&station, &format!("{card} .item")).await;
    until_page(
        &station,
        &format!("return !document.querySelector(\"{card}\")"),
        Duration::from_secs(20),
        "gone from the grill",
    )
    .await;
    let salad_bar = paired_station(&hub, &f.kitchen_token, &f.school, "Salad", &salad).await;
    let placed = expect(
        get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    let line = placed["order"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| i["station_id"] == json!(salad))
        .unwrap();
    // A station screen marks only its own station's items.
    let grill_line = 1 - line;
    let grills = format!("/api/v1/orders/{order}/items/{grill_line}/done");
    let r = post(&hub, &salad_bar.access, &grills, json!({})).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.body);
    let done = format!("/api/v1/orders/{order}/items/{line}/done");
    expect(post(&hub, &salad_bar.access, &done, json!({})).await, 200);
    // A station screen moves no order: only the expo bumps it.
    let bump = format!("/api/v1/orders/{order}/bump");
    let r = post(&hub, &salad_bar.access, &bump, json!({})).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));

    let stations_done =
        format!("return !!document.querySelector(\"{card}[data-stations-done='true']\")");
    until_page(
        &expo,
        &stations_done,
        Duration::from_secs(20),
        "stations done",
    )
    .await;
    for state in ["preparing", "ready"] {
        click(&expo, &format!("{card} .bump")).await;
        let reached = format!("return !!document.querySelector(\"{card}[data-state='{state}']\")");
        until_page(&expo, &reached, Duration::from_secs(20), state).await;
    }
    let read = expect(
        get(&hub, &f.kitchen_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    assert_eq!(read["order"]["state"], "ready");
    for browser in [station, expo] {
        browser.close().await.unwrap();
    }
    drop(hub);
    db.drop_database().await;
}

/// With Chromium's autoplay rule on (sound only after the user's gesture), the screen says
/// sound is blocked and shows its "click to enable sound" prompt; a click enables it.
#[actix_web::test]
async fn sound_waits_for_a_click_where_autoplay_is_blocked() {
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "autoplay").await;
    let browser = driver
        .browser_with(&["--autoplay-policy=document-user-activation-required"])
        .await;
    browser
        .goto(&hub.url(&format!(
            "/dashboard/{}#token={}",
            f.school, f.kitchen_token
        )))
        .await
        .unwrap();
    until_page(&browser, live(), Duration::from_secs(20), "live").await;
    let state = "return [document.body.dataset.sound, \
        document.getElementById('sound-prompt').hidden].join(' ')";
    assert_eq!(page_value(&browser, state).await, json!("blocked false"));
    // A new order while blocked: counted, not heard; the prompt stays.
    let order = new_order(&hub, &f, "autoplay-1").await;
    until_page(
        &browser,
        &order_shown(&order),
        Duration::from_secs(20),
        "the order",
    )
    .await;
    assert_eq!(
        page_value(&browser, "return document.body.dataset.sounds").await,
        "1"
    );
    assert_eq!(page_value(&browser, state).await, json!("blocked false"));

    use fantoccini::Locator;
    browser
        .find(Locator::Css("#sound-prompt"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_page(
        &browser,
        &format!("{state} === 'on true'"),
        Duration::from_secs(10),
        "sound on after a click",
    )
    .await;
    browser.close().await.unwrap();
    drop(hub);
    db.drop_database().await;
}
