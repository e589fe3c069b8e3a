//! Test support: a real hub process, real PostgreSQL databases, a real SMTP server, loopback
//! push and SMS providers.

#![allow(dead_code)]

pub mod providers;
pub use providers::*;

use awc::Client;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// PostgreSQL for tests; the test command checks it is up before anything runs.
pub fn postgres_admin_url() -> String {
    std::env::var("TIFFIN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

async fn pg_admin(sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let url = postgres_admin_url();
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for these tests: {e}"));
    conn.batch_execute(sql).await.expect("admin SQL");
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("tiffin.db").display()),
                backend,
                pg_name: None,
                _dir: dir,
            },
            Backend::Postgres => {
                let name = format!("tiffin_test_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&format!("CREATE DATABASE {name}")).await;
                let base = postgres_admin_url();
                let url = match base.rfind('/') {
                    Some(i) => format!("{}/{name}", &base[..i]),
                    None => panic!("bad TIFFIN_TEST_POSTGRES_URL"),
                };
                TestDb {
                    url,
                    backend,
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Cuts every session on this PostgreSQL database, as a failover or a server restart does.
    pub async fn terminate_connections(&self) {
        if let Some(name) = &self.pg_name {
            pg_admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ))
            .await;
        }
    }

    pub async fn drop_database(self) {
        if let Some(name) = &self.pg_name {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

/// A received email: envelope recipients and the raw message.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    /// The raw message with quoted-printable soft line breaks joined, so long lines match.
    pub fn unfolded(&self) -> String {
        self.data.replace("=\r\n", "")
    }
}

#[derive(Clone, Default)]
struct Collector {
    inbox: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin::Handler for Collector {
    fn data_start(&mut self, _: &str, _: &str, _: bool, to: &[String]) -> mailin::Response {
        self.to = to.to_vec();
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        self.inbox.lock().unwrap().push(Mail {
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        });
        mailin::response::OK
    }
}

/// A real SMTP server (mailin) on a loopback port, collecting what it receives.
pub struct SmtpSink {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
    sessions: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    /// Serves SMTP with the `mailin` protocol implementation over plain TCP.
    pub fn start() -> SmtpSink {
        SmtpSink::serve(false)
    }

    /// Like `start`, but the server closes each session, unannounced, after one message (as
    /// servers with a per-session limit or an idle timeout do).
    pub fn start_hanging_up_after_each() -> SmtpSink {
        SmtpSink::serve(true)
    }

    fn serve(hang_up_after_each: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind smtp");
        let port = listener.local_addr().unwrap().port();
        let collector = Collector::default();
        let inbox = collector.inbox.clone();
        let sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let opened = sessions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = collector.clone();
                std::thread::spawn(move || smtp_session(stream, handler, hang_up_after_each));
            }
        });
        SmtpSink {
            port,
            inbox,
            sessions,
        }
    }

    /// SMTP sessions opened so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits until a message for `to` arrives.
    pub async fn wait_for(&self, to: &str, within: Duration) -> Mail {
        self.wait_for_containing(to, "", within).await
    }

    /// The first email to `to` whose raw data contains `text`.
    pub async fn wait_for_containing(&self, to: &str, text: &str, within: Duration) -> Mail {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self
                .messages()
                .into_iter()
                .find(|m| m.to.iter().any(|t| t == to) && m.unfolded().contains(text))
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no email to {to} containing {text:?} within {within:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A hub process started from the built binary.
pub struct Hub {
    child: Child,
    pub base: String,
    env: Vec<(String, String)>,
}

pub fn hub_env(db: &TestDb, smtp: Option<&SmtpSink>) -> Vec<(String, String)> {
    let mut env = vec![
        ("TIFFIN_DATABASE_URL".to_owned(), db.url.clone()),
        ("TIFFIN_JWT_SECRET".into(), JWT_SECRET.into()),
        ("TIFFIN_SEED_DEMO".into(), "false".into()),
        ("TIFFIN_DISPATCH_POLL_MS".into(), "200".into()),
        ("RUST_LOG".into(), "warn".into()),
        // The daily digest goes out at the school's evening, whenever a test happens to run:
        // off unless a test turns it on (`with_digests`).
        ("TIFFIN_DIGEST__ENABLED".into(), "false".into()),
    ];
    if let Some(smtp) = smtp {
        env.push(("TIFFIN_SMTP__HOST".into(), "127.0.0.1".into()));
        env.push(("TIFFIN_SMTP__PORT".into(), smtp.port.to_string()));
        env.push(("TIFFIN_SMTP__TLS".into(), "none".into()));
        env.push((
            "TIFFIN_SMTP__FROM".into(),
            "Tiffin <tiffin@school.test>".into(),
        ));
    }
    env
}

/// `env` with the daily digest on, checked every `check_secs`.
pub fn with_digests(mut env: Vec<(String, String)>, check_secs: u64) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != "TIFFIN_DIGEST__ENABLED" && k != "TIFFIN_DIGEST__CHECK_SECS");
    env.push(("TIFFIN_DIGEST__ENABLED".into(), "true".into()));
    env.push(("TIFFIN_DIGEST__CHECK_SECS".into(), check_secs.to_string()));
    env
}

fn tiffin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiffin"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TIFFIN_") && k != "TIFFIN_TEST_POSTGRES_URL" {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Hub {
    pub fn start(env: Vec<(String, String)>) -> Hub {
        Hub::start_logging(env, None)
    }

    /// Starts a hub whose log (stderr) goes to `log`, or to the test's stderr.
    pub fn start_logging(env: Vec<(String, String)>, log: Option<&std::path::Path>) -> Hub {
        Hub::spawn(env, log, None, Arc::default())
    }

    /// Starts a hub in `dir` with nothing but `env`; everything it prints goes to `printed`.
    pub fn start_in(
        dir: &std::path::Path,
        env: Vec<(String, String)>,
        printed: Arc<Mutex<Vec<String>>>,
    ) -> Hub {
        Hub::spawn(env, None, Some(dir), printed)
    }

    fn spawn(
        env: Vec<(String, String)>,
        log: Option<&std::path::Path>,
        dir: Option<&std::path::Path>,
        printed: Arc<Mutex<Vec<String>>>,
    ) -> Hub {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        let mut cmd = tiffin();
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        // A restarted hub may need its old address back (pages reconnect to it).
        let bind = env
            .iter()
            .find(|(k, _)| k == "TIFFIN_BIND")
            .map_or("127.0.0.1:0", |(_, v)| v.as_str());
        let mut child = cmd
            .args(["serve", "--bind", bind])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn tiffin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().unwrap().push(line.clone());
                if let Some(url) = line.strip_prefix("Tiffin listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hub did not print its address");
        Hub { child, base, env }
    }

    /// Runs a `tiffin` subcommand with this hub's settings; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = tiffin()
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run tiffin");
        assert!(
            out.status.success(),
            "tiffin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    pub fn admin_token(&self) -> String {
        self.cli(&["token", "--role", "admin", "--ttl", "3600"])
    }

    /// Sends SIGTERM (a service manager stopping the hub).
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }

    /// Waits up to `within` for the process to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: nothing gets a chance to flush.
    pub fn kill(mut self) -> Vec<(String, String)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!(
            "{}/api/v1/ws?access_token={token}",
            self.base.replacen("http", "ws", 1)
        )
    }
}

/// A WebSocket to the hub with a tiny receive buffer, so that once the test stops reading,
/// the hub's writes back up at once instead of filling a large kernel buffer.
pub async fn tight_socket(
    hub: &Hub,
    token: &str,
) -> actix_codec::Framed<tokio::net::TcpStream, awc::ws::Codec> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = hub.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /api/v1/ws?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte: whatever follows the head already belongs to the WebSocket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    actix_codec::Framed::new(stream, awc::ws::Codec::new().client_mode())
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).finish()
}

/// A response's status and JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Sends a request; `None` when no answer came back (the hub is down or dying).
pub async fn try_send(req: awc::ClientRequest, body: Option<&Value>) -> Option<Reply> {
    reply_of(
        match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        }
        .ok()?,
    )
    .await
}

/// Sends a raw body; `None` when no answer came back.
pub async fn try_send_raw(req: awc::ClientRequest, body: String) -> Option<Reply> {
    reply_of(req.send_body(body).await.ok()?).await
}

async fn reply_of<S>(mut res: awc::ClientResponse<S>) -> Option<Reply>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let bytes = res.body().limit(4 << 20).await.ok()?;
    Some(Reply {
        status: res.status().as_u16(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after: res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    })
}

pub async fn send(req: awc::ClientRequest, body: Option<Value>) -> Reply {
    try_send(req, body.as_ref()).await.expect("request")
}

pub async fn get(hub: &Hub, token: &str, path: &str) -> Reply {
    send(client().get(hub.url(path)).bearer_auth(token), None).await
}

pub async fn post(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().post(hub.url(path)).bearer_auth(token), Some(body)).await
}

pub async fn put(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().put(hub.url(path)).bearer_auth(token), Some(body)).await
}

pub async fn patch(hub: &Hub, token: &str, path: &str, body: Value) -> Reply {
    send(client().patch(hub.url(path)).bearer_auth(token), Some(body)).await
}

/// Signs `login` in and turns email on for these kinds of message (routine news is not
/// emailed by default); returns the access token.
pub async fn choose_email(hub: &Hub, login: &str, password: &str, kinds: &[&str]) -> String {
    let signed_in = expect(
        send(
            client().post(hub.url("/api/v1/auth/login")),
            Some(serde_json::json!({"login": login, "password": password})),
        )
        .await,
        200,
    );
    let token = signed_in["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let preferences: Vec<Value> = kinds
        .iter()
        .map(|kind| serde_json::json!({"kind": kind, "channel": "email", "enabled": true}))
        .collect();
    expect(
        put(
            hub,
            &token,
            "/api/v1/me/preferences",
            serde_json::json!({ "preferences": preferences }),
        )
        .await,
        200,
    );
    token
}

/// Asserts the status and returns the body.
#[track_caller]
pub fn expect(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "unexpected answer: {}", reply.body);
    reply.body
}

fn smtp_session(stream: std::net::TcpStream, handler: Collector, hang_up_after_each: bool) {
    use std::io::Write;
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or([127, 0, 0, 1].into());
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    let mut session = mailin::SessionBuilder::new("sink.test").build(peer, handler);
    let _ = session.greeting().write_to(&mut writer);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = session.process(&line);
        let message_taken = line == b".\r\n" && response.code == 250;
        match response.action {
            mailin::response::Action::NoReply => {}
            mailin::response::Action::Reply => {
                let _ = response.write_to(&mut writer);
                let _ = writer.flush();
                if hang_up_after_each && message_taken {
                    return;
                }
            }
            _ => {
                let _ = response.write_to(&mut writer);
                let _ = writer.flush();
                return;
            }
        }
    }
}

/// A registered card reader and its secret.
#[derive(Clone)]
pub struct ReaderKey {
    pub id: String,
    pub secret: String,
}

/// The reader's signature: hex HMAC-SHA256 of `{timestamp}\n{METHOD}\n{path}\n{body}`.
pub fn reader_signature(secret: &str, timestamp: i64, path: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\nPOST\n{path}\n").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A signed reader request, with the reader's clock `skew_secs` off the hub's.
pub async fn reader_post_at(
    hub: &Hub,
    reader: &ReaderKey,
    path: &str,
    body: &Value,
    skew_secs: i64,
) -> Reply {
    let timestamp = chrono::Utc::now().timestamp_millis() + skew_secs * 1000;
    let body = body.to_string();
    let signature = reader_signature(&reader.secret, timestamp, path, body.as_bytes());
    signed_send(hub, &reader.id, timestamp, &signature, path, body).await
}

pub async fn reader_post(hub: &Hub, reader: &ReaderKey, path: &str, body: &Value) -> Reply {
    reader_post_at(hub, reader, path, body, 0).await
}

/// Sends exactly these headers and body (to replay or forge a request).
/// A reader's request to `url`, signed with `signature` over `timestamp`.
pub fn signed_request(
    url: &str,
    reader_id: &str,
    timestamp: i64,
    signature: &str,
) -> awc::ClientRequest {
    client()
        .post(url)
        .insert_header(("X-Reader-Id", reader_id))
        .insert_header(("X-Timestamp", timestamp.to_string()))
        .insert_header(("X-Signature", signature))
        .insert_header(("Content-Type", "application/json"))
}

pub async fn signed_send(
    hub: &Hub,
    reader_id: &str,
    timestamp: i64,
    signature: &str,
    path: &str,
    body: String,
) -> Reply {
    let req = signed_request(&hub.url(path), reader_id, timestamp, signature);
    try_send_raw(req, body).await.expect("request")
}

/// A PostgreSQL server of the test's own (the machine's binaries, a temporary data directory,
/// a free loopback port), so a test can stop and start it without disturbing others.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    /// `None` where the PostgreSQL server binaries are not installed.
    pub fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())?;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres { dir, port, bin };
        // PostgreSQL refuses to run as root: hand the directory to its own user.
        if pg.as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the private PostgreSQL directory");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.up();
        Some(pg)
    }

    fn as_root(&self) -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect(tool);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// A fast shutdown: sessions are cut, as when the database server restarts.
    pub fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

/// A Redis server of the test's own (the machine's `redis-server`, a free loopback port, no
/// persistence), so a test can stop and restart it without disturbing others.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        redis.up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server on its port and waits until it answers PING.
    pub fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed (Debian: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        conn.write_all(b"PING\r\n").is_ok()
            && conn.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL: connections drop as in a crash).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}
