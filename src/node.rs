//! This process as the holder of claims (outbox rows being sent, scans being decided). A node
//! keeps its name across restarts, so that a restarted node takes back at once what its
//! previous process held instead of waiting out the leases, and never takes what another live
//! process holds.

use anyhow::{Context, bail};
use chrono::NaiveDateTime;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Node {
    /// Written into the claims it takes.
    pub id: String,
    /// Claims under this node's name from before this moment are a dead process's.
    pub started_at: NaiveDateTime,
}

impl Node {
    /// `configured`, else `{hostname}:{port}` of the address this process listens on: while
    /// it listens there, no other process on this host can, so a claim under that name from
    /// before it started is its previous process's.
    pub fn new(configured: Option<&str>, listening: SocketAddr) -> Node {
        let id = match configured {
            Some(id) => id.to_owned(),
            None => {
                let host = hostname::get()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "localhost".into());
                format!("{host}:{}", listening.port())
            }
        };
        Node {
            id,
            started_at: crate::db::models::now(),
        }
    }

    /// A name nobody had before (tests): nothing of its own to take back.
    pub fn unique() -> Node {
        Node {
            id: format!("process-{}", uuid::Uuid::new_v4().simple()),
            started_at: crate::db::models::now(),
        }
    }
}

/// Listens on every address `bind` names, as actix-web's own `bind` does; bound before the
/// node takes its claims back, so a second process given the same address stops here.
pub fn listen(bind: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    let mut refused = None;
    for addr in bind
        .to_socket_addrs()
        .with_context(|| format!("binding {bind}"))?
    {
        match listener(addr) {
            Ok(listener) => listeners.push(listener),
            Err(e) => refused = Some(e),
        }
    }
    match (listeners.is_empty(), refused) {
        (false, _) => Ok(listeners),
        (true, Some(e)) => Err(e).with_context(|| format!("binding {bind}")),
        (true, None) => bail!("binding {bind}: it names no address"),
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // actix-web's default backlog.
    socket.listen(1024)?;
    Ok(socket.into())
}
