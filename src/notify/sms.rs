//! SMS through a Twilio-compatible REST API; errors about the number itself are permanent
//! and never retried.

use super::templates::Templates;
use super::{http_client, retry_after, transport_error};
use crate::config::SmsConfig;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};

const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Twilio error codes that no retry will fix: invalid or non-mobile number, unsubscribed
/// recipient, unreachable region, message refused as spam.
const PERMANENT_CODES: [i64; 7] = [21211, 21214, 21408, 21610, 21612, 21614, 30007];

/// `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, HTTP basic auth with the account
/// SID and auth token, a form body (`To`, `From`, `Body`).
pub struct SmsSender {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: SecretString,
    from: String,
    templates: Arc<Templates>,
}

impl SmsSender {
    pub fn new(
        config: &SmsConfig,
        timeout: Duration,
        templates: Arc<Templates>,
    ) -> Result<SmsSender, String> {
        let base = config.base_url.trim_end_matches('/');
        Ok(SmsSender {
            http: http_client(timeout)?,
            url: format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                config.account_sid
            ),
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            from: config.from.clone(),
            templates,
        })
    }
}

/// Sorts a refusal into retry or give up, by HTTP status and the provider's error code.
fn classify(status: u16, code: Option<i64>, text: String, wait: Option<Duration>) -> SendError {
    match status {
        429 => SendError::Throttled {
            reason: text,
            retry_after: wait.unwrap_or(DEFAULT_RETRY_AFTER),
        },
        500..=599 => match wait {
            Some(retry_after) => SendError::Throttled {
                reason: text,
                retry_after,
            },
            None => SendError::Transient(text),
        },
        // Our credentials are wrong: hold the backlog (the circuit opens) until they are fixed.
        401 | 403 => SendError::Transient(text),
        _ if code.is_some_and(|c| PERMANENT_CODES.contains(&c)) => SendError::Permanent(text),
        400..=499 => SendError::Permanent(text),
        _ => SendError::Transient(text),
    }
}

#[async_trait]
impl Sender for SmsSender {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        let (_, body) = self
            .templates
            .render_short(message)
            .map_err(SendError::Permanent)?;
        let reply = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&[
                ("To", message.address.as_str()),
                ("From", self.from.as_str()),
                ("Body", body.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("SMS: {}", transport_error(&e))))?;
        let status = reply.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = retry_after(reply.headers());
        let answer: serde_json::Value = reply.json().await.unwrap_or_default();
        let code = answer["code"].as_i64();
        let text = format!(
            "SMS provider answered {status}: {} {}",
            code.map(|c| c.to_string()).unwrap_or_default(),
            answer["message"].as_str().unwrap_or_default()
        );
        Err(classify(status.as_u16(), code, text, wait))
    }
}

#[cfg(test)]
mod tests {
    use super::classify;
    use std::time::Duration;
    use tiffin_actors::ports::SendError;

    #[test]
    fn number_errors_are_permanent_and_outages_are_not() {
        let t = || "x".to_owned();
        assert!(matches!(
            classify(400, Some(21211), t(), None),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify(500, None, t(), None),
            SendError::Transient(_)
        ));
        assert!(matches!(
            classify(401, Some(20003), t(), None),
            SendError::Transient(_)
        ));
        assert_eq!(
            classify(429, Some(20429), t(), Some(Duration::from_secs(7))),
            SendError::Throttled {
                reason: t(),
                retry_after: Duration::from_secs(7)
            }
        );
    }
}
