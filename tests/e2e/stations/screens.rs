//! The kitchen screens in a real browser: every dashboard action from the keyboard alone,
//! a station screen and the expo driving orders to ready, sound on and off.

use super::two_stations;
use crate::common::*;
use fantoccini::Locator;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};

const ENTER: char = '\u{e007}';
const ESCAPE: char = '\u{e00c}';
const ARROW_UP: char = '\u{e013}';
const ARROW_DOWN: char = '\u{e015}';

/// One browser tab and what the tests ask of a page.
struct Page {
    browser: fantoccini::Client,
}

impl Page {
    async fn open(driver: &ChromeDriver, url: &str) -> Page {
        let browser = driver.browser().await;
        browser.goto(url).await.unwrap();
        let page = Page { browser };
        page.wait("#status:not(.stale)").await;
        page
    }

    async fn wait(&self, css: &str) {
        self.browser
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
    }

    /// Waits until the script `condition` (an expression) is true.
    async fn until(&self, condition: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let script = format!("return !!({condition})");
            if self.browser.execute(&script, vec![]).await.unwrap() == json!(true) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never true: {condition}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, expression: &str) -> Value {
        let script = format!("return {expression}");
        self.browser.execute(&script, vec![]).await.unwrap()
    }

    /// Real key presses, as a keyboard or a bump bar sends them, to the page.
    async fn press(&self, keys: &[char]) {
        for &key in keys {
            let actions = KeyActions::new("keys".into())
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key });
            self.browser.perform_actions(actions).await.unwrap();
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(el) = self.browser.find(Locator::Css(css)).await
                && el.click().await.is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{css} never clickable"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn state_of(hub: &Hub, f: &Fixture, order: &str) -> Value {
    let read = expect(
        get(hub, &f.kitchen_token, &format!("/api/v1/orders/{order}")).await,
        200,
    );
    read["order"]["state"].clone()
}

fn order_id(reply: Reply) -> String {
    expect(reply, 201)["id"].as_str().unwrap().to_owned()
}

/// Every action of the dashboard from the keyboard alone: help, select by number and by
/// arrow, bump through to ready, recall the last bumped, cancel after a question; sound
/// chimes for a new order, and a mute stays muted across a reload.
#[actix_web::test]
async fn every_dashboard_action_from_the_keyboard() {
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "keys").await;
    let url = hub.url(&format!(
        "/dashboard/{}#token={}",
        f.school, f.kitchen_token
    ));
    let page = Page::open(&driver, &url).await;

    page.press(&['?']).await;
    page.wait("#keys-help:not([hidden])").await;
    assert!(
        page.js("document.getElementById('keys-help').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("recall")
    );
    page.press(&[ESCAPE]).await;
    page.wait("#keys-help[hidden]").await;

    let sounds = page.js("Number(document.body.dataset.sounds || 0)").await;
    let first = order_id(place_order(&hub, &f, "keys-1", 1).await);
    let second = order_id(place_order(&hub, &f, "keys-2", 1).await);
    page.wait(&format!("#placed [data-order-id='{second}']"))
        .await;
    page.until(&format!(
        "Number(document.body.dataset.sounds) >= {} + 2",
        sounds
    ))
    .await;
    assert_eq!(page.js("document.body.dataset.lastSound").await, "order");

    // Select by number, bump through to ready: the selection follows the order.
    page.press(&['1']).await;
    assert_eq!(
        page.js("document.body.dataset.selected").await,
        json!(first)
    );
    page.press(&[ENTER]).await;
    page.wait(&format!("#confirmed [data-order-id='{first}'].selected"))
        .await;
    page.press(&[' ']).await;
    page.wait(&format!("#preparing [data-order-id='{first}'].selected"))
        .await;
    page.press(&['b']).await;
    page.wait(&format!("#ready [data-order-id='{first}'].selected"))
        .await;
    assert_eq!(state_of(&hub, &f, &first).await, "ready");
    // Recall the last bumped: back to preparing.
    page.press(&['r']).await;
    page.wait(&format!("#preparing [data-order-id='{first}']"))
        .await;
    assert_eq!(state_of(&hub, &f, &first).await, "preparing");

    // Arrows move the selection (cards in column order: the placed one comes first).
    page.press(&[ARROW_DOWN]).await;
    assert_eq!(
        page.js("document.body.dataset.selected").await,
        json!(first)
    );
    page.press(&[ARROW_UP]).await;
    assert_eq!(
        page.js("document.body.dataset.selected").await,
        json!(second)
    );
    // Cancel asks first: no keeps it, yes cancels it.
    page.press(&['x']).await;
    page.wait("#keys-confirm:not([hidden])").await;
    page.press(&['n']).await;
    page.wait("#keys-confirm[hidden]").await;
    assert_eq!(state_of(&hub, &f, &second).await, "placed");
    page.press(&['x', 'y']).await;
    page.until(&format!(
        "!document.querySelector(\"[data-order-id='{second}']\")"
    ))
    .await;
    assert_eq!(state_of(&hub, &f, &second).await, "cancelled");

    // Sound: M mutes; muted stays muted after a reload, and a new order makes no sound.
    assert_ne!(page.js("document.body.dataset.sound").await, "muted");
    page.press(&['m']).await;
    page.until("document.body.dataset.sound === 'muted'").await;
    assert_eq!(
        page.js("document.getElementById('sound-toggle').getAttribute('aria-pressed')")
            .await,
        "false"
    );
    page.browser.refresh().await.unwrap();
    page.wait("#status:not(.stale)").await;
    assert_eq!(page.js("document.body.dataset.sound").await, "muted");
    let third = order_id(place_order(&hub, &f, "keys-3", 1).await);
    page.wait(&format!("#placed [data-order-id='{third}']"))
        .await;
    assert_eq!(page.js("document.body.dataset.sounds || '0'").await, "0");
    page.click("#sound-toggle").await;
    page.until("document.body.dataset.sound !== 'muted'").await;

    page.browser.close().await.unwrap();
    drop(hub);
    db.drop_database().await;
}

/// A station screen shows only its items and marks them done; the expo shows each
/// station's progress and bumps the order ready. With the school's setting, the last
/// station's item readies the order by itself.
#[actix_web::test]
async fn stations_and_expo_drive_orders_to_ready() {
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "screens").await;
    let (grill, salad) = two_stations(&hub, &admin, &f).await;
    let screen = |path: String| hub.url(&format!("{path}#token={}", f.kitchen_token));
    let expo = Page::open(&driver, &screen(format!("/expo/{}", f.school))).await;
    let station = Page::open(&driver, &screen(format!("/station/{}/{grill}", f.school))).await;
    station
        .until("document.getElementById('station-name').textContent === 'Grill'")
        .await;

    let order = order_id(place_order(&hub, &f, "screens-1", 2).await);
    let card = format!("#orders [data-order-id='{order}']");
    expo.wait(&card).await;
    // Placed: not the stations' yet. The expo confirms it from the keyboard.
    assert_eq!(
        station
            .js("document.querySelectorAll('#orders .order').length")
            .await,
        0
    );
    expo.press(&['1', ENTER]).await;
    expo.wait(&format!("{card}[data-state='confirmed']")).await;
    station.wait(&card).await;
    let lines = station
        .js(&format!(
            "[...document.querySelectorAll(\"{card} .item\")].map(b => b.textContent)"
        ))
        .await;
    assert_eq!(lines, json!(["2 × Tomato soup"]), "only the grill's item");
    expo.until(&format!("document.querySelector(\"{card} .station[data-station-id='{grill}']\").textContent.includes('0/1')")).await;

    // The grill bumps its item from the keyboard: gone from its screen, done on expo.
    station.press(&[ENTER]).await;
    station
        .until(&format!("!document.querySelector(\"{card}\")"))
        .await;
    expo.wait(&format!("{card} .station.done[data-station-id='{grill}']"))
        .await;
    assert_eq!(
        state_of(&hub, &f, &order).await,
        "confirmed",
        "the setting is off"
    );
    // The salad bar's screen, clicked: every station done; expo bumps it to ready.
    let salad_screen = Page::open(&driver, &screen(format!("/station/{}/{salad}", f.school))).await;
    salad_screen.click(&format!("{card} .item")).await;
    expo.wait(&format!("{card}[data-stations-done='true']"))
        .await;
    expo.press(&['1', ENTER]).await;
    expo.wait(&format!("{card}[data-state='preparing']")).await;
    expo.press(&[ENTER]).await;
    expo.wait(&format!("{card}[data-state='ready']")).await;
    assert_eq!(state_of(&hub, &f, &order).await, "ready");

    // The school's setting on: the last station's item readies the order by itself.
    let school = format!("/api/v1/schools/{}", f.school);
    expect(
        patch(
            &hub,
            &admin,
            &school,
            json!({"ready_when_stations_done": true}),
        )
        .await,
        200,
    );
    let auto = order_id(place_order(&hub, &f, "screens-2", 1).await);
    let card = format!("#orders [data-order-id='{auto}']");
    advance(&hub, &f, &auto, &["confirm"]).await;
    station.wait(&card).await;
    salad_screen.wait(&card).await;
    salad_screen.click(&format!("{card} .item")).await;
    station.click(&format!("{card} .item")).await;
    expo.wait(&format!("{card}[data-state='ready']")).await;
    assert_eq!(state_of(&hub, &f, &auto).await, "ready");

    for page in [expo, station, salad_screen] {
        page.browser.close().await.unwrap();
    }
    drop(hub);
    db.drop_database().await;
}
