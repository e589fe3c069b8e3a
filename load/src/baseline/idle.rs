//! Idle sockets: the hub's memory per authenticated, subscribed socket against the bare
//! server's per socket.

use super::Options;
use super::seed::seed;
use super::sockets::{Seen, any_text, close, open_sockets};
use crate::hub::{self, Target};
use anyhow::Context;
use serde_json::{Value, json};
use std::rc::Rc;
use std::time::Duration;

/// The idle-socket goal: hub memory per authenticated socket subscribed to a kitchen,
/// against the bare server's per socket.
pub(super) async fn idle_sockets(
    target: &Target,
    bare: &str,
    bare_pid: u32,
    options: &Options,
) -> anyhow::Result<Option<Value>> {
    let n = options.idle_sockets;
    let Some(pid) = target.pid else {
        eprintln!("tiffin-load: no --hub-pid: hub memory per socket not measured");
        return Ok(None);
    };
    let school = seed(target, 1, false).await?;
    let school = school.first().context("seeded school")?;
    let ws = format!(
        "{}/api/v1/ws?access_token={}",
        target.url.replacen("http", "ws", 1),
        school.staff
    );
    let subscribe = json!({"type": "subscribe", "topic": format!("kitchen:{}", school.id)});
    // A few sockets first, so that one-off costs (buffers, the kitchen actor) are not counted.
    idle_socket_kib(pid, &ws, 16, Some(subscribe.to_string())).await?;
    let hub_kib = idle_socket_kib(pid, &ws, n, Some(subscribe.to_string())).await?;
    let bare_ws = format!("{}/ws", bare.replacen("http", "ws", 1));
    idle_socket_kib(bare_pid, &bare_ws, 16, None).await?;
    let bare_kib = idle_socket_kib(bare_pid, &bare_ws, n, None).await?;
    let density = bare_kib / hub_kib.max(1e-9);
    Ok(Some(json!({
        "goal": format!("idle authenticated WebSocket <= 25 KB at {n} sockets, >= 0.6x the bare server's density"),
        "hub_kib_per_socket": hub_kib,
        "bare_kib_per_socket": bare_kib,
        "ratio": density,
        "met": hub_kib * 1.024 <= 25.0 && density >= 0.6,
    })))
}

/// Memory per idle socket (KiB): the server's resident memory before and after `n` sockets
/// (hub: authenticated and subscribed to a kitchen), settled.
async fn idle_socket_kib(
    pid: u32,
    ws_url: &str,
    n: usize,
    subscribe: Option<String>,
) -> anyhow::Result<f64> {
    let before = hub::memory_kib(pid, "VmRSS").context("server memory")?;
    let tasks = open_sockets(
        ws_url.to_owned(),
        n,
        subscribe,
        Rc::new(Seen::default()),
        any_text,
    )
    .await?;
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    let after = hub::memory_kib(pid, "VmRSS").context("server memory")?;
    close(tasks);
    // Let the server see the sockets go before the next measurement.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    Ok((after - before) / n as f64)
}
