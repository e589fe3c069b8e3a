//! A loopback SMTP server (mailin's protocol implementation) that counts every email the hub
//! delivers, by Message-ID (the hub's outbox message id), with when it arrived.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

/// Outbox message id -> arrival times (more than one: delivered twice).
pub type Deliveries = Arc<Mutex<HashMap<String, Vec<DateTime<Utc>>>>>;

pub struct SmtpSink {
    pub port: u16,
    deliveries: Deliveries,
}

#[derive(Clone)]
struct Counter {
    deliveries: Deliveries,
    data: Vec<u8>,
}

impl mailin::Handler for Counter {
    fn data_start(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> mailin::Response {
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        let at = Utc::now();
        let raw = String::from_utf8_lossy(&self.data);
        let id = raw
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
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
            .unwrap_or_default();
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .push(at);
        mailin::response::OK
    }
}

impl SmtpSink {
    pub fn start() -> anyhow::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counter = Counter {
            deliveries: Deliveries::default(),
            data: Vec::new(),
        };
        let deliveries = counter.deliveries.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = counter.clone();
                std::thread::spawn(move || session(stream, counter));
            }
        });
        Ok(SmtpSink { port, deliveries })
    }

    pub fn deliveries(&self) -> HashMap<String, Vec<DateTime<Utc>>> {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The hub's settings to send through this sink.
    pub fn hub_env(&self) -> Vec<(String, String)> {
        [
            ("TIFFIN_SMTP__HOST", "127.0.0.1".to_owned()),
            ("TIFFIN_SMTP__PORT", self.port.to_string()),
            ("TIFFIN_SMTP__TLS", "none".to_owned()),
            ("TIFFIN_SMTP__FROM", "Tiffin <tiffin@load.test>".to_owned()),
            // One sink, as fast as loopback allows: the hub's own bucket is not under test.
            ("TIFFIN_DELIVERY__EMAIL__PER_SEC", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

fn session(stream: TcpStream, counter: Counter) {
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
    let mut session = mailin::SessionBuilder::new("sink.load.test").build(peer, counter);
    let _ = session.greeting().write_to(&mut writer);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let response = session.process(&line);
        match response.action {
            mailin::response::Action::NoReply => {}
            mailin::response::Action::Reply => {
                let _ = response.write_to(&mut writer);
                let _ = writer.flush();
            }
            _ => {
                let _ = response.write_to(&mut writer);
                let _ = writer.flush();
                return;
            }
        }
    }
}
