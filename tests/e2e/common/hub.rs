//! A hub process started from the built binary (through the harness), and its settings.

use super::*;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tiffin_harness::hub::HubProcess;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// A hub process started from the built binary.
pub struct Hub {
    process: HubProcess,
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
        env.extend(smtp.hub_env());
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
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let process = HubProcess::serve(cmd, bind, stderr, printed).expect("hub did not start");
        let base = process.url().to_owned();
        Hub { process, base, env }
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
        let pid = self.process.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }

    /// Waits up to `within` for the process to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL: nothing gets a chance to flush.
    pub fn kill(self) -> Vec<(String, String)> {
        let Hub {
            mut process, env, ..
        } = self;
        process.kill();
        env
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
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

/// The load tool run against a hub of this build that it starts: whether the run held, and
/// its report.
pub async fn load_run(args: &[&str], out: &std::path::Path) -> (bool, Value) {
    let out_dir = out.to_str().unwrap();
    let mut argv = vec!["tiffin-load"];
    argv.extend_from_slice(args);
    argv.extend([
        "--hub-bin",
        env!("CARGO_BIN_EXE_tiffin"),
        "--out",
        out_dir,
        "--quiet",
    ]);
    let held = tiffin_load::outcome(argv).await.expect("the load run ran");
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    (held, serde_json::from_str(&report).unwrap())
}
