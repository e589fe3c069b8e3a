//! The load tool's report as people read it: the smoke profile against a hub the tool starts
//! (the real `tiffin` binary), then its report.html in headless Chromium.

use crate::common::*;

/// The smoke run passes, and its page opens with the verdict and the summary table, then
/// charts that the browser draws (lines with a size on screen), fetching nothing.
#[actix_web::test]
async fn the_load_report_reads_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let (held, report) = load_run(&["--profile", "smoke"], &out).await;
    assert!(held, "the smoke run lost, doubled or refused something");
    let seconds = report["series"]["seconds"].as_u64().unwrap();
    assert!(seconds > 0, "{}", report["series"]);
    let answered: u64 = report["series"]["hops"]["order_post"]["count"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(
        answered, report["hops"]["order_post"]["count"],
        "every order's answer is in some second"
    );
    assert!(
        report["series"]["hub"]["rss_mib"]
            .as_array()
            .is_some_and(|r| r.iter().any(|m| m.as_f64().is_some_and(|m| m > 1.0))),
        "the hub's memory was sampled: {}",
        report["series"]["hub"]
    );

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser.set_window_size(1000, 1600).await.unwrap();
    let page = out.join("report.html");
    browser
        .goto(&format!("file://{}", page.display()))
        .await
        .unwrap();
    let seen = browser
        .execute(
            r#"
            const box = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
            const first = document.querySelector('h2');
            return {
                firstHeading: first && first.closest('section') ? first.closest('section').id : null,
                verdict: document.querySelector('#verdict h2').textContent,
                checks: document.querySelectorAll('#verdict li').length,
                summaryRows: Array.from(document.querySelectorAll('#summary tr')).map(r => r.cells[0].textContent),
                charts: Array.from(document.querySelectorAll('svg.chart')).map(svg => ({
                    id: svg.dataset.chart,
                    drawn: box(svg),
                    lines: Array.from(svg.querySelectorAll('path.line')).filter(p => p.getTotalLength() > 0).length,
                    phases: svg.querySelectorAll('line.phase').length,
                })),
                fetched: performance.getEntriesByType('resource').length,
                scripts: document.scripts.length,
            };
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        seen["firstHeading"], "verdict",
        "the page opens with the verdict: {seen}"
    );
    assert!(
        seen["verdict"].as_str().unwrap().starts_with("PASSED"),
        "{seen}"
    );
    assert!(seen["checks"].as_u64().unwrap() >= 4, "{seen}");
    let rows = seen["summaryRows"].as_array().unwrap();
    for hop in [
        "hop",
        "order_post",
        "scan_verdict",
        "scan_to_dashboard",
        "transition",
    ] {
        assert!(
            rows.contains(&json!(hop)),
            "{hop} not in the summary: {seen}"
        );
    }
    let charts = seen["charts"].as_array().unwrap();
    for id in [
        "latency-order_post",
        "latency-scan_verdict",
        "throughput",
        "hub-cpu",
        "hub-memory",
    ] {
        let chart = charts
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no chart {id}: {seen}"));
        assert_eq!(chart["drawn"], true, "{id}: {seen}");
        assert!(
            chart["lines"].as_u64().unwrap() >= 1,
            "{id} has no line drawn: {seen}"
        );
        assert!(
            chart["phases"].as_u64().unwrap() >= 3,
            "{id} marks no phases: {seen}"
        );
    }
    assert_eq!(seen["fetched"], 0, "the page fetched something: {seen}");
    assert_eq!(seen["scripts"], 0, "{seen}");
    screenshot(&browser, "load-report.png").await;
    browser.close().await.unwrap();
}
