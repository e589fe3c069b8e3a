//! The HTTP path: the hub's request path without the database (a request it refuses at
//! validation) against hello-world on the bare server, by rate and by CPU per request.

use super::Series;
use crate::hub::{Target, client};
use crate::stats::{cpu_per, server_cpu, timed};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Connections kept busy by the closed-loop HTTP driver.
pub(super) const CLIENTS: usize = 32;

/// Requests per second that `CLIENTS` connections get through in `length`, each sending the
/// next request as soon as the last is answered (closed loop: the server's capacity).
pub(super) async fn capacity(
    url: String,
    token: Option<String>,
    expect: u16,
    length: Duration,
) -> (f64, u64) {
    let done = Rc::new(Cell::new(0u64));
    let wrong = Rc::new(Cell::new(0u64));
    let until = Instant::now() + length;
    let workers = (0..CLIENTS).map(|_| {
        let (url, token, done, wrong) = (url.clone(), token.clone(), done.clone(), wrong.clone());
        async move {
            let c = client();
            while Instant::now() < until {
                let mut req = c.get(&url);
                if let Some(token) = &token {
                    req = req.bearer_auth(token);
                }
                match req.send().await {
                    Ok(mut res) if res.status().as_u16() == expect => {
                        let _ = res.body().await;
                        done.set(done.get() + 1);
                    }
                    _ => wrong.set(wrong.get() + 1),
                }
            }
        }
    });
    let started = Instant::now();
    futures_util::future::join_all(workers).await;
    if wrong.get() > 0 {
        eprintln!("tiffin-load: {} unexpected answers from {url}", wrong.get());
    }
    (
        done.get() as f64 / started.elapsed().as_secs_f64(),
        done.get(),
    )
}

/// A server's CPU microseconds per request over a capacity run: its efficiency, which the
/// driver's own limit does not hide.
pub(super) async fn serve_cost(
    pid: Option<u32>,
    run: impl Future<Output = (f64, u64)>,
) -> (f64, Option<f64>, f64) {
    let before = server_cpu(pid);
    let ((rate, done), busy) = timed(run).await;
    (rate, cpu_per(before, server_cpu(pid), done), busy)
}

/// One round: hello-world on the bare server, then a request the hub refuses at validation;
/// the round's line.
pub(super) async fn round(
    target: &Target,
    bare: &str,
    bare_pid: u32,
    length: Duration,
    s: &mut Series,
) -> String {
    let hello = format!("{bare}/hello");
    let refused_path = format!("{}/api/v1/orders/not-an-id", target.url);
    let (bare_rate, bare_cost, busy) =
        serve_cost(Some(bare_pid), capacity(hello.clone(), None, 200, length)).await;
    s.push("hello_world_per_sec", bare_rate);
    s.push("driver_cores_busy_hello_world", busy);
    let (rate, cost, busy) = serve_cost(
        target.pid,
        capacity(
            refused_path.clone(),
            Some(target.admin_token.clone()),
            400,
            length,
        ),
    )
    .await;
    s.push("hub_http_path_per_sec", rate);
    s.push("driver_cores_busy_hub_http_path", busy);
    if let (Some(bare_cost), Some(cost)) = (bare_cost, cost) {
        s.push("hello_world_cpu_us_per_request", bare_cost);
        s.push("hub_http_path_cpu_us_per_request", cost);
    }
    format!(" http {rate:.0} vs {bare_rate:.0}/s;")
}
