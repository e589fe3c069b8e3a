//! Fan-out: frames a second to many kitchen screens on one kitchen against the bare broadcast
//! server's, and the bare server's publish -> frame p99 (the scan -> dashboard budget).

use super::seed::{School, place_orders};
use super::sockets::{Seen, any_text, close, contains, open_sockets};
use super::{Series, quiesce};
use crate::hub::{Target, client};
use crate::stats::{cpu_per, server_cpu, timed};
use futures_util::StreamExt;
use serde_json::json;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Publishers in the fan-out comparison.
const PUBLISHERS: usize = 4;
/// Sockets per kitchen when timing publish -> frame.
const LATENCY_SOCKETS: usize = 10;
/// Messages a second when timing publish -> frame.
const LATENCY_RATE: f64 = 200.0;

/// Waits for `expected` frames (at most 10 s more); frames per second from `started` to
/// the last arrival.
async fn frames_per_sec(seen: &Seen, expected: u64, started: Instant) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.frames.get() < expected && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let end = seen.last.get().unwrap_or(started);
    seen.frames.get() as f64 / end.duration_since(started).as_secs_f64().max(1e-9)
}

fn is_order_placed(text: &[u8]) -> bool {
    contains(text, br#""type":"order.placed""#)
}

/// The hub's fan-out: `sockets` kitchen screens on one school while `PUBLISHERS` clients
/// place orders there; frames per second, and one frame's size.
async fn hub_fanout(
    target: &Target,
    school: &School,
    sockets: usize,
    length: Duration,
) -> anyhow::Result<(f64, Option<f64>, usize)> {
    let seen = Rc::new(Seen::default());
    let ws = format!(
        "{}/api/v1/ws?access_token={}",
        target.url.replacen("http", "ws", 1),
        school.staff
    );
    let subscribe = json!({"type": "subscribe", "topic": format!("kitchen:{}", school.id)});
    let tasks = open_sockets(
        ws,
        sockets,
        Some(subscribe.to_string()),
        seen.clone(),
        is_order_placed,
    )
    .await?;
    let cpu = server_cpu(target.pid);
    let started = Instant::now();
    let publishers: Vec<&School> = (0..PUBLISHERS).map(|_| school).collect();
    let (per_sec, _) = place_orders(&target.url, &publishers, length).await;
    let placed = (per_sec * started.elapsed().as_secs_f64()).round() as u64;
    let rate = frames_per_sec(&seen, placed * sockets as u64, started).await;
    let cost = cpu_per(cpu, server_cpu(target.pid), seen.frames.get());
    close(tasks);
    Ok((rate, cost, seen.bytes.get()))
}
/// The bare server's fan-out: the same sockets and publishers, the same frame size.
async fn bare_fanout(
    bare: &str,
    bare_pid: u32,
    sockets: usize,
    frame_bytes: usize,
    length: Duration,
) -> anyhow::Result<(f64, Option<f64>)> {
    let seen = Rc::new(Seen::default());
    let ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    let tasks = open_sockets(ws, sockets, None, seen.clone(), any_text).await?;
    let body = "x".repeat(frame_bytes.max(1));
    let cpu = server_cpu(Some(bare_pid));
    let until = Instant::now() + length;
    let started = Instant::now();
    let publishers = (0..PUBLISHERS).map(|_| {
        let body = body.clone();
        async move {
            let c = client();
            let mut sent = 0u64;
            while Instant::now() < until {
                if let Ok(mut res) = c
                    .post(format!("{bare}/publish"))
                    .send_body(body.clone())
                    .await
                {
                    let _ = res.body().await;
                    sent += 1;
                }
            }
            sent
        }
    });
    let sent: u64 = futures_util::future::join_all(publishers)
        .await
        .iter()
        .sum();
    let rate = frames_per_sec(&seen, sent * sockets as u64, started).await;
    let cost = cpu_per(cpu, server_cpu(Some(bare_pid)), seen.frames.get());
    close(tasks);
    Ok((rate, cost))
}

/// The bare server's publish -> frame p99 (ms) with `LATENCY_SOCKETS` sockets, messages sent
/// at `LATENCY_RATE` a second for `length` and timed from when each was due.
async fn bare_fanout_p99(bare: &str, length: Duration) -> anyhow::Result<f64> {
    let ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    let latency = Rc::new(std::cell::RefCell::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let due = Rc::new(std::cell::RefCell::new(Vec::<Instant>::new()));
    // Each socket times its frames against the due time of the message they carry.
    let mut tasks = Vec::new();
    for _ in 0..LATENCY_SOCKETS {
        let (_, mut socket) = client()
            .ws(ws.as_str())
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("socket: {e}"))?;
        let (latency, due) = (latency.clone(), due.clone());
        tasks.push(actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let awc::ws::Frame::Text(text) = frame {
                    let n: Option<usize> = std::str::from_utf8(&text)
                        .ok()
                        .and_then(|t| t.split(':').next())
                        .and_then(|k| k.parse().ok());
                    if let Some(at) = n.and_then(|n| due.borrow().get(n).copied()) {
                        let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = latency.borrow_mut().record(us.clamp(1, 60_000_000));
                    }
                }
            }
        }));
    }
    let count = (LATENCY_RATE * length.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let mut sends = Vec::new();
    for k in 0..count {
        let at = start + Duration::from_secs_f64(k as f64 / LATENCY_RATE);
        actix_web::rt::time::sleep_until(at.into()).await;
        due.borrow_mut().push(at);
        let body = format!("{k}:{}", "x".repeat(500));
        let url = format!("{bare}/publish");
        sends.push(actix_web::rt::spawn(async move {
            if let Ok(mut res) = client().post(url).send_body(body).await {
                let _ = res.body().await;
            }
        }));
    }
    for send in sends {
        let _ = send.await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (latency.borrow().len() as usize) < count * LATENCY_SOCKETS && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    close(tasks);
    let p99 = latency.borrow().value_at_quantile(0.99) as f64 / 1000.0;
    Ok(p99)
}

/// One round: the hub's fan-out, then the bare server's with the hub's frame size, then the
/// bare server's publish -> frame p99; the round's line and the hub's frame size.
pub(super) async fn round(
    target: &Target,
    bare: &str,
    bare_pid: u32,
    school: &School,
    sockets: usize,
    length: Duration,
    s: &mut Series,
) -> anyhow::Result<(String, usize)> {
    let (hub_rate, hub_cost, bytes) = hub_fanout(target, school, sockets, length).await?;
    let frame_bytes = bytes.max(1);
    s.push("hub_fanout_frames_per_sec", hub_rate);
    quiesce(target.pid).await;
    let (bare_run, busy) = timed(bare_fanout(bare, bare_pid, sockets, frame_bytes, length)).await;
    let (bare_rate, bare_cost) = bare_run?;
    s.push("bare_fanout_frames_per_sec", bare_rate);
    s.push("driver_cores_busy_bare_fanout", busy);
    if let (Some(hub_cost), Some(bare_cost)) = (hub_cost, bare_cost) {
        s.push("hub_fanout_cpu_us_per_frame", hub_cost);
        s.push("bare_fanout_cpu_us_per_frame", bare_cost);
    }
    s.push("bare_fanout_p99_ms", bare_fanout_p99(bare, length).await?);
    Ok((
        format!(" fan-out {hub_rate:.0} vs {bare_rate:.0} frames/s;"),
        frame_bytes,
    ))
}
