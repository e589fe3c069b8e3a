//! A real SMTP server (mailin) on a loopback port that keeps what it receives.

use super::*;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
