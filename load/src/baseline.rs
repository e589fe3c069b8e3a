//! Baselines measured in the same run as the hub, so that goals are ratios on this machine:
//! a bare actix-web hello-world (in this process, on its own thread and two workers) against
//! the hub's HTTP path without the database (an authenticated request refused at validation:
//! request id, metrics, rate limit, JWT, routing and the error body, no database). Rounds
//! alternate the two and the report gives medians.

use crate::hub::{Target, client};
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Connections kept busy by the closed-loop driver.
const CLIENTS: usize = 32;

/// Starts the hello-world server; returns its base URL.
fn hello_world() -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ran = actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(|| {
                App::new().route(
                    "/hello",
                    web::get().to(|| async { HttpResponse::Ok().body("hello") }),
                )
            })
            .workers(2)
            .bind("127.0.0.1:0")?;
            let port = server.addrs().first().map(|a| a.port()).unwrap_or_default();
            let _ = tx.send(port);
            server.run().await
        });
        if let Err(e) = ran {
            eprintln!("tiffin-load: hello-world server: {e}");
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(10))?;
    Ok(format!("http://127.0.0.1:{port}"))
}

/// Requests per second that `CLIENTS` connections get through in `length`, each sending the
/// next request as soon as the last is answered (closed loop: the server's capacity).
async fn capacity(url: String, token: Option<String>, expect: u16, length: Duration) -> f64 {
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
    done.get() as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(target: &Target, rounds: usize, seconds: u64) -> anyhow::Result<Value> {
    let hello = format!("{}/hello", hello_world()?);
    let hub = format!("{}/api/v1/orders/not-an-id", target.url);
    let length = Duration::from_secs(seconds);
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        bare.push(capacity(hello.clone(), None, 200, length).await);
        ours.push(capacity(hub.clone(), Some(target.admin_token.clone()), 400, length).await);
        eprintln!(
            "tiffin-load: baseline round {}: hello-world {:.0}/s, hub HTTP path {:.0}/s",
            round + 1,
            bare[round],
            ours[round]
        );
    }
    let (bare, ours) = (median(&mut bare), median(&mut ours));
    let ratio = ours / bare.max(1e-9);
    Ok(json!({
        "mode": "baseline",
        "clients": CLIENTS,
        "rounds": rounds,
        "seconds_per_round": seconds,
        "hello_world_per_sec": bare,
        "hub_http_path_per_sec": ours,
        "ratio": ratio,
        "goal": "hub HTTP path without the database >= 0.6x hello-world",
        "goal_met": ratio >= 0.6,
    }))
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
