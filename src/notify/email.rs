//! Email: the `email` channel's sender, over SMTP connections of our own, pooled, for
//! lettre to speak over.

use super::templates::Templates;
use crate::config::{SmtpConfig, SmtpTls};
use async_trait::async_trait;
use deadpool::managed::{Manager, Metrics, Object, Pool, RecycleError, RecycleResult};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};

pub struct SmtpSender {
    connections: SmtpConnections,
    /// Sessions open at once, one message on each.
    sessions: usize,
    from: Mailbox,
    templates: Arc<Templates>,
    /// `test_crash_at = "email_accepted"`.
    crash_when_accepted: bool,
}

impl SmtpSender {
    pub fn new(
        config: &SmtpConfig,
        timeout: std::time::Duration,
        templates: Arc<Templates>,
    ) -> Result<SmtpSender, String> {
        let from = config
            .from
            .parse()
            .map_err(|e| format!("smtp from address {:?}: {e}", config.from))?;
        Ok(SmtpSender {
            connections: SmtpConnections::new(config, timeout)?,
            sessions: config.connections,
            from,
            templates,
            crash_when_accepted: false,
        })
    }

    /// Fault injection for tests: abort once the server has accepted a message.
    pub fn crash_when_accepted(mut self, crash: bool) -> SmtpSender {
        self.crash_when_accepted = crash;
        self
    }
}

#[async_trait]
impl Sender for SmtpSender {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        let email = self
            .templates
            .render_email(message)
            .map_err(SendError::Permanent)?;
        let to: Mailbox = message
            .address
            .parse()
            .map_err(|e| SendError::Permanent(format!("address: {e}")))?;
        // One Message-ID per outbox message: a resend after a crash (sent, then killed
        // before it was marked) is the same message to every mail system on its way.
        let message_id = format!("<{}@{}>", message.id, self.from.email.domain());
        let mail = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(email.text))
                    .singlepart(SinglePart::html(email.html)),
            )
            .map_err(|e| SendError::Permanent(format!("message: {e}")))?;
        self.connections.send(&mail).await.map_err(|e| {
            if e.is_permanent() {
                SendError::Permanent(e.to_string())
            } else {
                SendError::Transient(e.to_string())
            }
        })?;
        crate::config::crash_if(
            self.crash_when_accepted,
            crate::config::CrashPoint::EmailAccepted,
        );
        Ok(())
    }

    fn parallel(&self) -> usize {
        self.sessions
    }
}

/// A pooled connection not used for this long is checked with NOOP before it is used again:
/// servers drop idle sessions.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("smtp connect: {0}")]
    Connect(std::io::Error),
    #[error("smtp: timed out after {0:?}")]
    Timeout(Duration),
    #[error("smtp: {0}")]
    Protocol(#[from] lettre::transport::smtp::Error),
    #[error("smtp pool: {0}")]
    Pool(String),
}

impl SmtpError {
    /// The server answered nothing (closed or reset): no SMTP reply code.
    fn no_reply(&self) -> bool {
        matches!(self, SmtpError::Protocol(e) if e.status().is_none() && !e.is_client() && !e.is_tls())
    }

    /// A 5xx reply: the same message would be refused again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SmtpError::Protocol(e) if e.is_permanent())
    }
}

/// Opens, greets, secures and signs in one SMTP session.
struct Connector {
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
}

impl Connector {
    fn tls_parameters(&self) -> Result<TlsParameters, SmtpError> {
        Ok(TlsParameters::new(self.host.clone())?)
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        let mut conn = match self.tls {
            SmtpTls::Tls => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.timeout),
                    &self.hello,
                    Some(self.tls_parameters()?),
                    None,
                )
                .await?
            }
            SmtpTls::None | SmtpTls::Starttls => {
                let socket = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(SmtpError::Connect)?;
                socket.set_nodelay(true).map_err(SmtpError::Connect)?;
                AsyncSmtpConnection::connect_with_transport(Box::new(socket), &self.hello).await?
            }
        };
        if self.tls == SmtpTls::Starttls {
            conn.starttls(self.tls_parameters()?, &self.hello).await?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}

impl Manager for Connector {
    type Type = AsyncSmtpConnection;
    type Error = SmtpError;

    async fn create(&self) -> Result<AsyncSmtpConnection, SmtpError> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| SmtpError::Timeout(self.timeout))?
    }

    async fn recycle(
        &self,
        conn: &mut AsyncSmtpConnection,
        metrics: &Metrics,
    ) -> RecycleResult<SmtpError> {
        // lettre marks a session broken after any error in it.
        if conn.has_broken() {
            return Err(RecycleError::message("broken session"));
        }
        if metrics.last_used() > CHECK_AFTER_IDLE && !conn.test_connected().await {
            return Err(RecycleError::message("idle session closed by the server"));
        }
        Ok(())
    }
}

/// Sends whole messages over pooled SMTP sessions.
///
/// lettre's transport opens its sockets without `TCP_NODELAY` and writes a message and its
/// end-of-data line as two sends: the second waits for the server's delayed ACK, about 40 ms
/// per email (measured with strace, BENCHMARKS.md). Here the plain and STARTTLS sockets are
/// ours, with `TCP_NODELAY` set. Implicit TLS (port 465) connections are still opened by
/// lettre, which wraps its own socket.
pub struct SmtpConnections {
    pool: Pool<Connector>,
    timeout: Duration,
}

impl SmtpConnections {
    pub fn new(config: &SmtpConfig, timeout: Duration) -> Result<SmtpConnections, String> {
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            )),
            _ => None,
        };
        let connector = Connector {
            host: config.host.clone(),
            port: config.port(),
            tls: config.tls,
            credentials,
            hello: ClientId::default(),
            timeout,
        };
        let pool = Pool::builder(connector)
            .max_size(config.connections)
            .wait_timeout(Some(timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("smtp pool: {e}"))?;
        Ok(SmtpConnections { pool, timeout })
    }

    /// One message within the provider timeout (waiting for a session included).
    pub async fn send(&self, mail: &Message) -> Result<(), SmtpError> {
        let envelope = mail.envelope();
        let body = mail.formatted();
        let attempt = async {
            match self.send_once(envelope, &body).await {
                // A pooled session the server had closed: it gave no reply at all, so it took
                // nothing. Once more, on another session.
                Err(Failed {
                    reused: true,
                    error,
                }) if error.no_reply() => self
                    .send_once(envelope, &body)
                    .await
                    .map_err(|failed| failed.error),
                outcome => outcome.map_err(|failed| failed.error),
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| SmtpError::Timeout(self.timeout))?
    }

    async fn send_once(
        &self,
        envelope: &lettre::address::Envelope,
        body: &[u8],
    ) -> Result<(), Failed> {
        let conn = self.pool.get().await.map_err(|e| Failed {
            reused: false,
            error: match e {
                deadpool::managed::PoolError::Backend(e) => e,
                other => SmtpError::Pool(other.to_string()),
            },
        })?;
        let reused = Object::metrics(&conn).recycle_count > 0;
        Session(Some(conn))
            .send(envelope, body)
            .await
            .map_err(|error| Failed { reused, error })
    }
}

struct Failed {
    reused: bool,
    error: SmtpError,
}

/// A session lent for one message. Unless the message went through, it is closed instead of
/// going back to the pool: a send cut off by the timeout leaves it mid-transaction.
struct Session(Option<Object<Connector>>);

impl Session {
    async fn send(
        mut self,
        envelope: &lettre::address::Envelope,
        body: &[u8],
    ) -> Result<(), SmtpError> {
        if let Some(conn) = self.0.as_mut() {
            conn.send(envelope, body).await?;
            // Dropped here rather than in `drop`: back to the pool.
            self.0.take();
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}
