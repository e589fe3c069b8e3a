//! The harness's SMTP server on a loopback port, keeping every email it receives.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tiffin_harness::smtp::{SmtpOptions, SmtpServer};

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

/// A real SMTP server (the harness's) on a loopback port, collecting what it receives.
pub struct SmtpSink {
    pub port: u16,
    server: SmtpServer,
    inbox: Arc<Mutex<Vec<Mail>>>,
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
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let kept = inbox.clone();
        let options = SmtpOptions {
            hang_up_after_each,
            ..SmtpOptions::default()
        };
        let server = SmtpServer::start(
            options,
            Arc::new(move |to: Vec<String>, data: &[u8]| {
                kept.lock().unwrap().push(Mail {
                    to,
                    data: String::from_utf8_lossy(data).into_owned(),
                });
            }),
        )
        .expect("bind smtp");
        SmtpSink {
            port: server.port,
            server,
            inbox,
        }
    }

    /// The hub's settings to send email through this sink.
    pub fn hub_env(&self) -> Vec<(String, String)> {
        self.server.hub_env("Tiffin <tiffin@school.test>")
    }

    /// SMTP sessions opened so far.
    pub fn sessions(&self) -> usize {
        self.server.sessions()
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
