//! Notifications: templates and a sender per channel (email, push, SMS, in-app, and the log
//! when no provider is configured), wired to the dispatcher's `Sender` port.

pub mod email;
pub mod in_app;
#[cfg(test)]
mod in_app_tests;
pub mod log;
pub mod push;
pub mod sms;
pub mod templates;

use crate::config::{Config, CrashPoint};
use crate::db::Db;
use anyhow::anyhow;
use email::SmtpSender;
use in_app::InAppSender;
use log::LogSender;
use push::FcmSender;
use sms::SmsSender;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use templates::Templates;
use tiffin_actors::bus::Bus;
use tiffin_actors::notices::Channel;
use tiffin_actors::ports::Sender;

/// A sender per channel: the configured provider, else the log.
pub fn senders(
    config: &Config,
    templates: Arc<Templates>,
    db: &Db,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<HashMap<String, Arc<dyn Sender>>> {
    let timeout = Duration::from_secs(config.delivery.provider_timeout_secs);
    let email: Arc<dyn Sender> = match &config.smtp {
        Some(smtp) => {
            let crash = config.test_crash_at == Some(CrashPoint::EmailAccepted);
            Arc::new(
                SmtpSender::new(smtp, timeout, templates.clone())
                    .map_err(|e| anyhow!(e))?
                    .crash_when_accepted(crash),
            )
        }
        None => Arc::new(LogSender::new(templates.clone())),
    };
    let push: Arc<dyn Sender> = match &config.push {
        Some(push) => Arc::new(
            FcmSender::new(push, timeout, db.clone(), templates.clone()).map_err(|e| anyhow!(e))?,
        ),
        None => Arc::new(LogSender::new(templates.clone())),
    };
    let sms: Arc<dyn Sender> = match &config.sms {
        Some(sms) => {
            Arc::new(SmsSender::new(sms, timeout, templates.clone()).map_err(|e| anyhow!(e))?)
        }
        None => Arc::new(LogSender::new(templates.clone())),
    };
    let in_app: Arc<dyn Sender> = Arc::new(InAppSender::new(db.clone(), templates, bus));
    Ok(HashMap::from([
        (Channel::Email.as_str().to_owned(), email),
        (Channel::Push.as_str().to_owned(), push),
        (Channel::Sms.as_str().to_owned(), sms),
        (Channel::InApp.as_str().to_owned(), in_app),
    ]))
}

/// The HTTP client of the push and SMS providers: bounded timeouts, so a provider that
/// accepts a connection and never answers costs a retry, not a stuck dispatcher.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("tiffin/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// A transport failure in words an operator can act on (reqwest's own message hides the cause).
pub fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out waiting for the provider".into()
    } else if e.is_connect() {
        format!("could not connect: {}", source_chain(e))
    } else {
        source_chain(e)
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A `Retry-After` header: seconds, or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}
