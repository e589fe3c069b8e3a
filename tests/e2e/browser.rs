//! The kitchen dashboard page in a real browser (chromedriver).

use crate::common::*;

/// The kitchen dashboard in a real browser: it shows an order placed through the API, a bump
/// click moves it, and after a hub restart it resumes with `since` and misses nothing.
#[actix_web::test]
async fn the_dashboard_in_a_real_browser() {
    use fantoccini::Locator;
    let driver = ChromeDriver::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let hub = Hub::start(hub_env(&db, None));
    let admin = hub.admin_token();
    let f = fixture(&hub, &admin, "browser").await;
    let browser = driver.browser().await;
    browser
        .goto(&hub.url(&format!(
            "/dashboard/{}#token={}",
            f.school, f.kitchen_token
        )))
        .await
        .unwrap();
    let wait = |css: String| {
        let browser = browser.clone();
        async move {
            browser
                .wait()
                .at_most(Duration::from_secs(20))
                .for_element(Locator::Css(&css))
                .await
                .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
        }
    };
    // The page redraws its columns on every frame, so an element found a moment ago may be
    // gone: read and click by selector, again until it holds still.
    let text_of = |css: String| {
        let browser = browser.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(el) = browser.find(Locator::Css(&css)).await
                    && let Ok(text) = el.text().await
                {
                    return text;
                }
                assert!(std::time::Instant::now() < deadline, "{css} never readable");
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let click = |css: String| {
        let browser = browser.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(el) = browser.find(Locator::Css(&css)).await
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
    };
    let in_column = |column: &str, order: &str| format!("#{column} [data-order-id='{order}']");
    wait("#status:not(.stale)".into()).await;

    let first = expect(place_order(&hub, &f, "browser-1", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait(in_column("placed", &first)).await;
    assert!(
        text_of(in_column("placed", &first))
            .await
            .contains("Tomato soup")
    );
    click(format!("{} .bump", in_column("placed", &first))).await;
    wait(in_column("confirmed", &first)).await;
    wait("#counters tr".into()).await;
    assert!(text_of("#counters".into()).await.contains("Counter 1"));

    // The hub goes down and comes back on the same address; what happens right after the
    // restart reaches the page through its resume.
    let address = hub.base.trim_start_matches("http://").to_owned();
    let mut env = hub.kill();
    wait("#banner.shown".into()).await;
    env.push(("TIFFIN_BIND".into(), address));
    let hub = Hub::start(env);
    let second = expect(place_order(&hub, &f, "browser-2", 1).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/orders/{first}/start");
    expect(post(&hub, &f.kitchen_token, &path, json!({})).await, 200);
    wait(in_column("placed", &second)).await;
    wait(in_column("preparing", &first)).await;
    wait("#status:not(.stale)".into()).await;
    let (_, subscribed) = subscribe(&hub, &f.kitchen_token, &f.school, None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = browser
            .execute("return Number(document.body.dataset.lastSeq)", vec![])
            .await
            .unwrap();
        if shown == subscribed["seq"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "page at {shown}, hub at {}",
            subscribed["seq"]
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close().await.unwrap();
    drop(hub);
    db.drop_database().await;
}
