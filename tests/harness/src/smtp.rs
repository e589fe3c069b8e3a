//! A real SMTP server (mailin's protocol implementation) on a loopback port: it hands every
//! message it accepts to its owner, who keeps or counts it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Called with each accepted message's envelope recipients and raw data.
pub type OnMessage = Arc<dyn Fn(Vec<String>, &[u8]) + Send + Sync>;

/// How the server behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmtpOptions {
    /// How long it takes to accept each message (a slow provider).
    pub delay: Duration,
    /// Closes each session, unannounced, after one message (as servers with a per-session
    /// limit or an idle timeout do).
    pub hang_up_after_each: bool,
}

pub struct SmtpServer {
    pub port: u16,
    sessions: Arc<AtomicUsize>,
    paused: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Receiver {
    on_message: OnMessage,
    delay: Duration,
    /// While set, messages are held before their reply (a provider that stalls).
    paused: Arc<AtomicBool>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin::Handler for Receiver {
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
        // Each session is its own thread: sleeping holds up only this connection.
        while self.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(self.delay);
        (self.on_message)(
            std::mem::take(&mut self.to),
            &std::mem::take(&mut self.data),
        );
        mailin::response::OK
    }
}

impl SmtpServer {
    /// Serves SMTP over plain TCP on a free loopback port, each session in a thread of its own.
    pub fn start(options: SmtpOptions, on_message: OnMessage) -> std::io::Result<SmtpServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let sessions = Arc::new(AtomicUsize::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let receiver = Receiver {
            on_message,
            delay: options.delay,
            paused: paused.clone(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let opened = sessions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                opened.fetch_add(1, Ordering::SeqCst);
                let receiver = receiver.clone();
                let hang_up = options.hang_up_after_each;
                std::thread::spawn(move || session(stream, receiver, hang_up));
            }
        });
        Ok(SmtpServer {
            port,
            sessions,
            paused,
        })
    }

    /// SMTP sessions opened so far.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Holds every message before its reply until resumed: the hub's sends wait, and what it
    /// commits meanwhile stays in its outbox.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// The hub's settings to send email through this server, from `from`.
    pub fn hub_env(&self, from: &str) -> Vec<(String, String)> {
        [
            ("TIFFIN_SMTP__HOST", "127.0.0.1".to_owned()),
            ("TIFFIN_SMTP__PORT", self.port.to_string()),
            ("TIFFIN_SMTP__TLS", "none".to_owned()),
            ("TIFFIN_SMTP__FROM", from.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// The local part of a raw message's Message-ID header (the hub's outbox message id).
pub fn message_id(raw: &str) -> Option<String> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id").then(|| {
            value
                .trim()
                .trim_start_matches('<')
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    })
}

fn session(stream: TcpStream, receiver: Receiver, hang_up_after_each: bool) {
    // Replies are small writes: without this, Nagle's algorithm against the client's delayed
    // ACKs adds tens of milliseconds per SMTP round trip, and the sink would time itself.
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or([127, 0, 0, 1].into());
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut session = mailin::SessionBuilder::new("sink.test").build(peer, receiver);
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
