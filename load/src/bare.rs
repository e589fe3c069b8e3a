//! The bare servers the goals are ratios against, run as a child process (`tiffin-load
//! bare-server`) so that they can be pinned to the hub's core: a hello-world (`GET /hello`)
//! and a WebSocket broadcast server (`GET /ws` joins, `POST /publish` sends the body to every
//! socket), and the raw inserts (`POST /raw`, see raw.rs). Nothing else: no auth, no topics, no sequence numbers, no queues of our own.

use crate::baseline::intake::{RawAnswer, RawRequest};
use crate::raw::{Scratch, measure};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex, PoisonError};

/// Open sockets by join number.
type Sockets = Arc<Mutex<Vec<(u64, actix_ws::Session)>>>;

/// Serves until killed; prints `bare listening on PORT` once bound. Nagle's algorithm stays
/// on (as in actix-web) unless `nodelay`.
pub async fn serve(nodelay: bool) -> anyhow::Result<()> {
    let sockets = Sockets::default();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(sockets.clone()))
            .route(
                "/hello",
                web::get().to(|| async { HttpResponse::Ok().body("hello") }),
            )
            .route("/ws", web::get().to(join))
            .route("/publish", web::post().to(publish))
            .route("/raw", web::post().to(raw_inserts))
    })
    .tcp_nodelay(nodelay)
    .bind("127.0.0.1:0")?;
    let port = server.addrs().first().map(|a| a.port()).unwrap_or_default();
    println!("bare listening on {port}");
    server.run().await?;
    Ok(())
}

async fn join(
    req: HttpRequest,
    body: web::Payload,
    sockets: web::Data<Sockets>,
) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut inbound) = actix_ws::handle(&req, body)?;
    static JOINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = JOINED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sockets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((id, session.clone()));
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = inbound.next().await {
            let answered = match message {
                actix_ws::Message::Ping(bytes) => session.pong(&bytes).await,
                actix_ws::Message::Close(_) => return,
                _ => Ok(()),
            };
            if answered.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

async fn publish(body: web::Bytes, sockets: web::Data<Sockets>) -> HttpResponse {
    let text = String::from_utf8_lossy(&body).into_owned();
    let all: Vec<(u64, actix_ws::Session)> = sockets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut closed = Vec::new();
    for (id, mut socket) in all {
        if socket.text(text.clone()).await.is_err() {
            closed.push(id);
        }
    }
    // Sockets gone since an earlier round are not tried again on every publish.
    if !closed.is_empty() {
        sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _)| !closed.contains(id));
    }
    HttpResponse::Ok().finish()
}

async fn raw_inserts(request: web::Json<RawRequest>) -> HttpResponse {
    let measured = async {
        let scratch = if request.postgres {
            Scratch::existing_postgres(&request.url)
        } else {
            Scratch::Sqlite(request.url.clone().into())
        };
        let length = std::time::Duration::from_millis(request.millis);
        measure(&scratch, request.clients, request.batch, length).await
    }
    .await;
    match measured {
        Ok(rate) => HttpResponse::Ok().json(RawAnswer {
            orders_per_sec: rate.orders_per_sec,
            txn_p50_ms: rate.txn_p50_ms,
            txn_p99_ms: rate.txn_p99_ms,
        }),
        Err(e) => {
            HttpResponse::InternalServerError().json(serde_json::json!({"error": format!("{e:#}")}))
        }
    }
}
