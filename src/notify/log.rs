//! The embedded default provider of every channel: the message rendered and logged, not sent.

use super::templates::Templates;
use async_trait::async_trait;
use std::sync::Arc;
use tiffin_actors::notices::Kind;
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};

/// The embedded default: renders the message and writes it to the log instead of sending.
pub struct LogSender {
    templates: Arc<Templates>,
}

impl LogSender {
    pub fn new(templates: Arc<Templates>) -> LogSender {
        LogSender { templates }
    }
}

#[async_trait]
impl Sender for LogSender {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        let (title, body) = if message.channel == "email" {
            let email = self
                .templates
                .render_email(message)
                .map_err(SendError::Permanent)?;
            (email.subject, String::new())
        } else {
            self.templates
                .render_short(message)
                .map_err(SendError::Permanent)?
        };
        let secret = Kind::parse(&message.template).is_some_and(Kind::secret);
        let body = if secret {
            "[secret: not logged]".to_owned()
        } else {
            body
        };
        tracing::info!(
            provider = "log",
            channel = %message.channel,
            to = %message.address,
            title = %title,
            body = %body,
            "notification recorded (no provider configured)"
        );
        Ok(())
    }
}
