//! Start-up: configuration to a running hub.

use crate::app;
use crate::auth::JwtKeys;
use crate::cluster::{Cluster, ClusterBus};
use crate::config::Config;
use crate::db::{self, DatabaseUrl, Db};
use crate::metrics;
use crate::notify::senders;
use crate::notify::templates::Templates;
use crate::seed::{self, DEMO_LOGINS};
use crate::state::AppState;
use crate::store;
use crate::store::{DEFAULT_DIGEST_AT, DieselStore};
use actix::Actor;
use actix_web::{HttpServer, web};
use anyhow::{Context, anyhow, bail};
use base64::Engine;
use secrecy::ExposeSecret;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tiffin_actors::bus::{Bus, LocalBus};
use tiffin_actors::domain::Role;
use tiffin_actors::{Dispatcher, KitchenFor, Registry};

const MIN_SECRET_BYTES: usize = 32;
/// Demo tokens last a school day, so the printed ones work through a session.
const DEMO_TOKEN_TTL_SECS: i64 = 12 * 3600;

/// The JWT signing key: configured, or on SQLite generated once and kept beside the database.
pub fn jwt_secret(config: &Config, url: &DatabaseUrl) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        let bytes = secret.expose_secret().as_bytes().to_vec();
        if bytes.len() < MIN_SECRET_BYTES {
            bail!("jwt_secret must have at least {MIN_SECRET_BYTES} bytes");
        }
        return Ok(bytes);
    }
    let DatabaseUrl::Sqlite(path) = url else {
        bail!("set TIFFIN_JWT_SECRET (32+ bytes): nodes sharing PostgreSQL must share the key");
    };
    let file = format!("{path}.jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&file) {
        let existing = existing.trim();
        if existing.len() >= MIN_SECRET_BYTES {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    let bytes: [u8; 48] = rand::random();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    write_private(&file, &secret).with_context(|| format!("writing {file}"))?;
    tracing::info!(file = %file, "generated a JWT signing key");
    Ok(secret.into_bytes())
}

fn write_private(path: &str, content: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(content.as_bytes())
}

/// Parses the URL and applies migrations.
pub async fn prepare_database(config: &Config) -> anyhow::Result<(DatabaseUrl, Db)> {
    let url = DatabaseUrl::parse(&config.database_url).map_err(|e| anyhow!(e))?;
    let applied = db::migrate(&url)
        .await
        .with_context(|| format!("migrating {}", url.redacted()))?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "applied migrations");
    }
    let db = Db::connect(&url, config.database_pool_size)?;
    Ok((url, db))
}

/// The demo's passwords, the one time they are known.
pub fn print_sign_ins(
    out: &mut impl Write,
    sign_ins: &[(&str, &str, String)],
) -> std::io::Result<()> {
    writeln!(
        out,
        "Demo sign-ins (shown once; `tiffin password LOGIN` sets a new password):"
    )?;
    for (who, login, password) in sign_ins {
        writeln!(out, "  {who} sign-in: {login} / {password}")?;
    }
    Ok(())
}

/// How to pair a kitchen screen with the demo school: no token goes in a screen's URL.
fn print_pairing(
    out: &mut impl Write,
    base: &str,
    school_id: &str,
    stations: &[crate::db::models::StationRow],
    token: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Pair a kitchen screen: open {base}/screens/pair on it; it shows a code. Enter the code with {token}:"
    )?;
    writeln!(
        out,
        "  curl -X POST {base}/api/v1/schools/{school_id}/screens -H 'Authorization: Bearer TOKEN' \\"
    )?;
    writeln!(
        out,
        "    -H 'Content-Type: application/json' -d '{{\"code\": \"CODE\", \"name\": \"Pass\", \"kind\": \"expo\"}}'"
    )?;
    let named: Vec<String> = stations
        .iter()
        .map(|s| format!("{} {}", s.name, s.id))
        .collect();
    writeln!(
        out,
        "  kind: kitchen (the dashboard), expo, board, or station with a station_id: {}",
        named.join(", ")
    )
}

/// The demo school and its people (role, user id, school id).
pub struct Demo {
    pub school_id: String,
    pub people: Vec<(Role, String, Option<String>)>,
    /// Seeded just now.
    pub fresh: bool,
    /// (who, login, password), when seeded just now: printed once, stored only as hashes.
    pub sign_ins: Vec<(&'static str, &'static str, String)>,
}

/// Seeds the demo school into a database without schools; returns it if it is there.
pub async fn ensure_demo(db: &Db) -> anyhow::Result<Option<Demo>> {
    let mut people = Vec::new();
    for (_, login) in DEMO_LOGINS {
        if let Some(user) = store::people::user_by_login(db, login).await?
            && let Some(role) = Role::parse(&user.role)
        {
            people.push((role, user.id, user.school_id));
        }
    }
    let fresh = people.is_empty();
    let mut sign_ins = Vec::new();
    if fresh {
        if store::schools::school_count(db).await? > 0 {
            return Ok(None);
        }
        let seeded = seed::seed_demo(db).await?;
        tracing::info!(school = %seeded.school_id, "seeded the demo school");
        let school = Some(seeded.school_id.clone());
        people = vec![
            (Role::Admin, seeded.admin_id, None),
            (Role::KitchenStaff, seeded.kitchen_id, school.clone()),
            (Role::Student, seeded.student_id, school.clone()),
            (Role::Guardian, seeded.guardian_id, school),
        ];
        sign_ins = seeded.sign_ins;
    }
    let school = people.iter().find_map(|(_, _, s)| s.clone());
    Ok(school.map(|school_id| Demo {
        school_id,
        people,
        fresh,
        sign_ins,
    }))
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    // One TLS crypto provider for the HTTP providers (reqwest is built without a default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let templates = Arc::new(Templates::load().map_err(|e| anyhow!(e))?);
    let (url, db) = prepare_database(&config).await?;
    if let DatabaseUrl::Sqlite(path) = &url {
        crate::db::checkpoint::checkpoint_in_background(&db, path).await?;
    }
    let signing_key = jwt_secret(&config, &url)?;
    let keys = JwtKeys::new(&signing_key);
    let reader_key = crate::rfid::reader_master_key(&signing_key);
    // Never seed a known admin password into a production database by default.
    let demo = if config.seed_demo && matches!(url, DatabaseUrl::Sqlite(_)) {
        ensure_demo(&db).await?
    } else {
        None
    };
    let metrics = metrics::install().map_err(|e| anyhow!(e))?;

    // Listening first: while this process holds the address, no other process on this host
    // runs as this node, so what the node's name holds from before is a dead process's.
    let listeners = crate::node::listen(&config.bind)?;
    let addr = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()?
        .ok_or_else(|| anyhow!("bound no address"))?;
    let node = crate::node::Node::new(config.node_id.as_deref(), addr);
    let store = Arc::new(
        DieselStore::new(db.clone(), config.delivery.sms_fallback_after_secs)
            .with_node(node.clone())
            .with_digest_at(config.digest.time().unwrap_or(DEFAULT_DIGEST_AT)),
    );
    // Before dispatch claims anything and before any scan arrives.
    let taken_back = store.take_back_own_claims().await?;
    let (decided, abandoned) = crate::rfid::sweep_claims(&db, &node)
        .await
        .map_err(|e| anyhow!("settling scan claims: {e:?}"))?;
    if taken_back + decided + abandoned > 0 {
        tracing::info!(
            node = %node.id,
            outbox = taken_back,
            scans_decided = decided,
            scans_abandoned = abandoned,
            "took back the claims of this node's previous process"
        );
    }
    let local = Arc::new(LocalBus::new());
    let (bus, cluster): (Arc<dyn Bus>, _) = match &config.redis_url {
        Some(url) => {
            let (cluster, tasks) = Cluster::new(url, &config.redis_prefix)?;
            (
                Arc::new(ClusterBus::new(local.clone(), cluster.clone())),
                Some((cluster, tasks)),
            )
        }
        None => (local.clone(), None),
    };
    // Alone, every change to a reader goes through this node's store.
    store.hear_reader_changes(config.redis_url.is_none());
    let registry = Registry::new(store.clone(), bus.clone(), config.timers);
    let kitchens = registry.kitchens();
    let registry = registry.start();
    let screen_sockets = Arc::new(crate::screen_sockets::ScreenSockets::default());
    let cluster = cluster.map(|(cluster, tasks)| {
        let node = crate::cluster::NodeParts {
            registry: registry.clone(),
            local,
            store: store.clone(),
            screen_sockets: screen_sockets.clone(),
        };
        tasks.start(cluster.clone(), node);
        cluster
    });
    for school in store::orders::schools_with_live_orders(&db).await? {
        registry.do_send(KitchenFor(school));
    }
    // On a thread of its own: rendering and sending (and, on SQLite, the statements, which
    // run on the thread that awaits them) must not queue behind the kitchens' work.
    let dispatcher = {
        let outbox = store.clone();
        store.deliver_in_app_with(Arc::new(crate::notify::in_app::InPlace::new(
            templates.clone(),
            bus.clone(),
        )));
        let senders = senders(&config, templates, &db, bus.clone())?;
        let poll = Duration::from_millis(config.dispatch_poll_ms);
        let policy = config.delivery.clone();
        let digests = config
            .digest
            .enabled
            .then(|| Duration::from_secs(config.digest.check_secs));
        Dispatcher::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
            let dispatcher = Dispatcher::new(outbox, senders, poll, policy);
            match digests {
                Some(every) => dispatcher.with_digests(every),
                None => dispatcher,
            }
        })
    };
    let woken = dispatcher.clone();
    store.wake_dispatch_with(move |what| match what {
        crate::store::Wake::Events => woken.do_send(tiffin_actors::EventsCommitted),
        crate::store::Wake::Messages => woken.do_send(tiffin_actors::Nudge),
    });

    let limits = config.limits.clone();
    let state = web::Data::new(AppState {
        config,
        db,
        store,
        keys,
        registry,
        kitchens,
        bus,
        dispatcher,
        metrics,
        reader_key,
        seen_signatures: Default::default(),
        limits: crate::limits::Limits::new(&limits, cluster.clone()),
        cluster,
        shutdown: tokio::sync::watch::channel(false).0,
        screen_sockets,
    });
    let pruned = state.clone();
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            pruned.limits.shrink();
        }
    });
    // Scan claims of nodes that died settle within their lease, retried or not.
    let sweeping = state.clone();
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(crate::rfid::SWEEP_EVERY);
        loop {
            every.tick().await;
            let node = sweeping.store.node();
            match crate::rfid::sweep_claims(&sweeping.db, node).await {
                Ok((0, 0)) => {}
                Ok((decided, abandoned)) => {
                    tracing::info!(decided, abandoned, "settled scan claims of a dead node")
                }
                Err(e) => tracing::warn!(error = ?e, "could not settle scan claims"),
            }
        }
    });
    let noting = state.clone();
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(crate::rfid::SEEN_SAVED_EVERY);
        loop {
            every.tick().await;
            if let Err(e) = noting.store.save_readers_seen().await {
                tracing::warn!(error = ?e, "could not store when readers were last seen");
            }
        }
    });
    let app_state = state.clone();
    let drain = Duration::from_secs(state.config.shutdown_timeout_secs);
    let mut server = HttpServer::new(move || app::build(app_state.clone()))
        .shutdown_timeout(drain.as_secs())
        // A client that trickles its request head (slowloris) is cut off, not waited for.
        .client_request_timeout(Duration::from_secs(state.config.http_header_timeout_secs))
        .keep_alive(Duration::from_secs(state.config.http_keep_alive_secs))
        // Frames and replies go out at once: with Nagle's algorithm a small frame sent while
        // the previous one is unacknowledged waits for the client's delayed ACK (~40 ms).
        .tcp_nodelay(true)
        .disable_signals();
    for listener in listeners {
        server = server.listen(listener).context("listening")?;
    }
    tracing::info!(database = %url.redacted(), %addr, node = %node.id, "tiffin started");

    let base = format!("http://{addr}");
    let demo_stations = match &demo {
        Some(demo) => store::stations::stations(&state.db, &demo.school_id).await?,
        None => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "Tiffin listening on {base}")?;
    match demo {
        // Tokens are printed once, when the demo is created: stdout often ends up in logs.
        Some(Demo {
            school_id,
            people,
            fresh: true,
            sign_ins,
        }) => {
            let token = "the kitchen_staff token below";
            print_pairing(&mut out, &base, &school_id, &demo_stations, token)?;
            writeln!(out, "Demo school: {school_id}; demo tokens (valid 12 h):")?;
            for (role, id, school) in &people {
                let token = state
                    .keys
                    .issue(id, *role, school.as_deref(), DEMO_TOKEN_TTL_SECS)?;
                writeln!(out, "  {role}: {token}")?;
            }
            print_sign_ins(&mut out, &sign_ins)?;
        }
        Some(Demo { school_id, .. }) => {
            let token = format!(
                "a kitchen_staff token (sign in, or tiffin token --role kitchen_staff --school {school_id})"
            );
            print_pairing(&mut out, &base, &school_id, &demo_stations, &token)?;
        }
        None => {}
    }
    out.flush()?;
    drop(out);
    let server = server.run();
    let handle = server.handle();
    let draining = state.clone();
    actix_web::rt::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!(
            within_secs = drain.as_secs(),
            "draining: no new requests, closing sockets"
        );
        let _ = draining.shutdown.send(true);
        handle.stop(true).await;
    });
    server.await?;
    let dispatcher = state.dispatcher.clone();
    let _ = dispatcher.send(tiffin_actors::StopDispatch).await;
    for _ in 0..100 {
        if !dispatcher.connected() {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what service managers and orchestrators send) or Ctrl-C.
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
