//! Settings: defaults that run with no file at all, then a TOML file, then `TIFFIN_*`
//! environment variables (nested keys with `__`, e.g. `TIFFIN_SMTP__HOST`).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tiffin_actors::DeliveryPolicy;
use tiffin_actors::domain::TimerPolicy;

/// The longest an access token may live, signed in or from `tiffin token`.
pub const MAX_ACCESS_TOKEN_TTL_SECS: i64 = 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on; port 0 picks a free one.
    pub bind: String,
    /// `sqlite://FILE` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Redis for several nodes; unset runs a single node with the in-process bus.
    #[serde(serialize_with = "never_serialize")]
    pub redis_url: Option<String>,
    /// Names this deployment's channel and keys in Redis (several deployments may share one).
    pub redis_prefix: String,
    /// HS256 signing key for access tokens. Unset on SQLite: generated once and kept in a
    /// file beside the database. Required on PostgreSQL, where nodes must share it.
    #[serde(serialize_with = "never_serialize", deserialize_with = "secret")]
    pub jwt_secret: Option<SecretString>,
    /// When set, `/metrics` answers only `Authorization: Bearer <metrics_token>`.
    #[serde(serialize_with = "never_serialize", deserialize_with = "secret")]
    pub metrics_token: Option<SecretString>,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    /// How long a one-time sign-in code sent by email or SMS works.
    pub sign_in_code_ttl_secs: i64,
    pub database_pool_size: usize,
    /// Seed a demo school when the database has no school yet (embedded SQLite only; on
    /// PostgreSQL run `tiffin demo` deliberately).
    pub seed_demo: bool,
    /// How often notification dispatch polls the outbox.
    pub dispatch_poll_ms: u64,
    /// Largest accepted JSON body.
    pub max_body_bytes: usize,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    pub smtp: Option<SmtpConfig>,
    /// FCM HTTP v1; unset logs push messages instead (embedded default).
    pub push: Option<PushConfig>,
    /// A Twilio-compatible SMS API; unset logs SMS messages instead.
    pub sms: Option<SmsConfig>,
    /// Retries, dead-lettering, circuit breakers, rate limits and the SMS fallback.
    pub delivery: DeliveryPolicy,
    /// A request's head must arrive within this long (`408`, then the connection closes).
    pub http_header_timeout_secs: u64,
    /// An idle keep-alive connection is closed after this long.
    pub http_keep_alive_secs: u64,
    /// On SIGTERM: stop taking requests, close sockets (1001), finish in-flight requests, and
    /// exit within this long.
    pub shutdown_timeout_secs: u64,
    /// Card readers at the counters.
    pub rfid: RfidConfig,
    /// Paired kitchen screens: their access tokens and pairing codes.
    pub screens: crate::auth::ScreensConfig,
    /// Token buckets per client address, user, reader, sign-in and one-time codes.
    pub limits: crate::limits::LimitsConfig,
    /// Frames a WebSocket may have waiting to be written before it counts as a slow consumer
    /// and is closed (1013); it then resumes with `since`.
    pub ws_send_queue: usize,
    /// A WebSocket that has sent nothing (not even a pong) for this long is closed (1001).
    pub ws_idle_timeout_secs: u64,
    /// Orders waiting longer than this in a state are shown as late on the dashboard.
    pub dashboard_age_warning_secs: i64,
    /// Order timers: the confirm deadline and what it does, the pickup reminder.
    pub timers: TimerPolicy,
    /// The guardians' daily digest email.
    pub digest: DigestConfig,
    /// This node's name in the claims it holds; a restart under the same name takes them back
    /// at once. Unset: `{hostname}:{port}` of the bound address. Distinct for every node.
    pub node_id: Option<String>,
    /// For the crash tests only: the process aborts (as if killed) at this point. Off unless
    /// set; never set it in production.
    pub test_crash_at: Option<CrashPoint>,
}

/// The daily digest: one email an evening per guardian with the day's orders of each child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DigestConfig {
    /// Off: no digests are queued (guardians still get what they chose per kind).
    pub enabled: bool,
    /// School-local `HH:MM` a school's digests go out, unless the school sets its own.
    pub at: String,
    /// How often the hub looks for schools whose digest time has come.
    pub check_secs: u64,
}

impl Default for DigestConfig {
    fn default() -> DigestConfig {
        DigestConfig {
            enabled: true,
            at: "18:00".into(),
            check_secs: 60,
        }
    }
}

impl DigestConfig {
    /// `at` as a time of day (checked when the configuration is loaded).
    pub fn time(&self) -> Option<chrono::NaiveTime> {
        chrono::NaiveTime::parse_from_str(&self.at, "%H:%M").ok()
    }
}

/// Where `test_crash_at` kills the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrashPoint {
    /// A scan is claimed, nothing decided yet.
    ScanClaimed,
    /// A scan's hand-over is committed, the reader not yet answered.
    ScanHandedOver,
    /// The SMTP server accepted an email, its outbox row not yet marked sent.
    EmailAccepted,
}

impl Config {
    /// Aborts the process here when `test_crash_at` names this point.
    pub fn crash_point(&self, here: CrashPoint) {
        crash_if(self.test_crash_at == Some(here), here);
    }
}

/// Aborts the process (no clean-up, like SIGKILL) when `armed`: fault injection for tests.
pub fn crash_if(armed: bool, here: CrashPoint) {
    if armed {
        tracing::error!(point = ?here, "test_crash_at: aborting");
        std::process::abort();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to 465 for `tls`, 587 otherwise.
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(
        default,
        serialize_with = "never_serialize",
        deserialize_with = "secret"
    )]
    pub password: Option<SecretString>,
    #[serde(default = "default_from")]
    pub from: String,
    /// SMTP sessions open at once: one message at a time goes over each.
    #[serde(default = "default_smtp_connections")]
    pub connections: usize,
}

fn default_smtp_connections() -> usize {
    10
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfidConfig {
    /// The same card read again on the same reader within this long gets the first verdict.
    pub debounce_ms: i64,
    /// How far a signed request's timestamp may be from the hub's clock.
    pub signature_window_secs: i64,
    /// A reader not heard from (heartbeat or scan) for this long shows offline.
    pub reader_offline_after_secs: i64,
    /// How long a one-time pickup code works.
    pub code_ttl_secs: i64,
}

impl Default for RfidConfig {
    fn default() -> RfidConfig {
        RfidConfig {
            debounce_ms: 3000,
            signature_window_secs: 30,
            reader_offline_after_secs: 60,
            code_ttl_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The service-account JSON file from the Firebase console (holds the private key).
    pub service_account_file: String,
    /// Where `/v1/projects/{project}/messages:send` lives.
    #[serde(default = "default_fcm_base_url")]
    pub base_url: String,
    /// Overrides the service account's `token_uri` (the OAuth2 token endpoint).
    pub token_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    #[serde(default = "default_sms_base_url")]
    pub base_url: String,
    #[serde(deserialize_with = "text")]
    pub account_sid: String,
    #[serde(
        serialize_with = "never_serialize",
        deserialize_with = "required_secret"
    )]
    pub auth_token: SecretString,
    /// The sending number (E.164) or sender id.
    pub from: String,
}

fn default_fcm_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

fn default_sms_base_url() -> String {
    "https://api.twilio.com".into()
}

/// Text from any scalar.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use secrecy::ExposeSecret;
    required_secret(d).map(|s| s.expose_secret().to_owned())
}

fn required_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    secret(d)?.ok_or_else(|| serde::de::Error::custom("a secret is required"))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Tls => 465,
            SmtpTls::None | SmtpTls::Starttls => 587,
        })
    }
}

/// A secret from any scalar: the environment provider reads `12345678` as a number, and a
/// type error would print the value.
fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i128),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(d)?.map(|v| {
        SecretString::from(match v {
            Scalar::Text(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        })
    }))
}

fn default_from() -> String {
    "Tiffin <tiffin@localhost>".into()
}

fn never_serialize<S: serde::Serializer, T>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: "127.0.0.1:8080".into(),
            database_url: "sqlite://tiffin.db".into(),
            redis_url: None,
            redis_prefix: "tiffin".into(),
            jwt_secret: None,
            metrics_token: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            sign_in_code_ttl_secs: 10 * 60,
            database_pool_size: 8,
            seed_demo: true,
            dispatch_poll_ms: 1000,
            max_body_bytes: 64 * 1024,
            log_json: false,
            smtp: None,
            push: None,
            sms: None,
            delivery: DeliveryPolicy::default(),
            shutdown_timeout_secs: 10,
            http_header_timeout_secs: 5,
            http_keep_alive_secs: 30,
            rfid: RfidConfig::default(),
            screens: crate::auth::ScreensConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            ws_send_queue: 256,
            ws_idle_timeout_secs: 30,
            dashboard_age_warning_secs: 600,
            timers: TimerPolicy::default(),
            digest: DigestConfig::default(),
            node_id: None,
            test_crash_at: None,
        }
    }
}

impl Config {
    /// Defaults, then the file (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(format!("config file {} does not exist", file.display()));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("TIFFIN_").split("__"));
        // The environment provider reads `+15005550006` as a number and drops the `+`: phone
        // numbers are taken as written.
        for (key, var) in [("sms.from", "TIFFIN_SMS__FROM")] {
            if let Ok(raw) = std::env::var(var) {
                figment = figment.merge(Serialized::default(key, raw));
            }
        }
        let config: Config = figment
            .extract()
            .map_err(|e| format!("bad configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Ranges that keep timers and date arithmetic sane.
    fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                (60..=MAX_ACCESS_TOKEN_TTL_SECS).contains(&self.access_token_ttl_secs),
                "access_token_ttl_secs must be between 60 and 86400",
            ),
            (
                (3600..=365 * 24 * 3600).contains(&self.refresh_token_ttl_secs),
                "refresh_token_ttl_secs must be between 3600 and 31536000",
            ),
            (
                (30..=3600).contains(&self.sign_in_code_ttl_secs),
                "sign_in_code_ttl_secs must be between 30 and 3600",
            ),
            (
                (1..=256).contains(&self.database_pool_size),
                "database_pool_size must be between 1 and 256",
            ),
            (
                (10..=60_000).contains(&self.dispatch_poll_ms),
                "dispatch_poll_ms must be between 10 and 60000",
            ),
            (
                (1024..=16 << 20).contains(&self.max_body_bytes),
                "max_body_bytes must be between 1024 and 16777216",
            ),
            (
                (10..=24 * 3600).contains(&self.dashboard_age_warning_secs),
                "dashboard_age_warning_secs must be between 10 and 86400",
            ),
            (
                (15..=3600).contains(&self.ws_idle_timeout_secs),
                "ws_idle_timeout_secs must be between 15 and 3600",
            ),
            (
                !self.redis_prefix.is_empty()
                    && self.redis_prefix.len() <= 64
                    && self
                        .redis_prefix
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "redis_prefix must be 1 to 64 letters, digits, '-' or '_'",
            ),
            (
                (0..=60_000).contains(&self.rfid.debounce_ms),
                "rfid.debounce_ms must be between 0 and 60000",
            ),
            (
                (5..=600).contains(&self.rfid.signature_window_secs),
                "rfid.signature_window_secs must be between 5 and 600",
            ),
            (
                (1..=60).contains(&self.http_header_timeout_secs),
                "http_header_timeout_secs must be between 1 and 60",
            ),
            (
                (1..=600).contains(&self.http_keep_alive_secs),
                "http_keep_alive_secs must be between 1 and 600",
            ),
            (
                (1..=600).contains(&self.shutdown_timeout_secs),
                "shutdown_timeout_secs must be between 1 and 600",
            ),
            (
                (1..=3600).contains(&self.rfid.code_ttl_secs),
                "rfid.code_ttl_secs must be between 1 and 3600",
            ),
            (
                (10..=3600).contains(&self.rfid.reader_offline_after_secs),
                "rfid.reader_offline_after_secs must be between 10 and 3600",
            ),
            (
                (5..=86_400).contains(&self.screens.access_token_ttl_secs),
                "screens.access_token_ttl_secs must be between 5 and 86400",
            ),
            (
                (10..=3600).contains(&self.screens.pairing_code_ttl_secs),
                "screens.pairing_code_ttl_secs must be between 10 and 3600",
            ),
            (
                (8..=65_536).contains(&self.ws_send_queue),
                "ws_send_queue must be between 8 and 65536",
            ),
            (
                (1..=24 * 3600).contains(&self.timers.confirm_within_secs),
                "timers.confirm_within_secs must be between 1 and 86400",
            ),
            (
                (0..=24 * 3600).contains(&self.timers.pickup_reminder_after_secs),
                "timers.pickup_reminder_after_secs must be between 0 (off) and 86400",
            ),
            (self.digest.time().is_some(), "digest.at must be HH:MM"),
            (
                (1..=3600).contains(&self.digest.check_secs),
                "digest.check_secs must be between 1 and 3600",
            ),
            (
                self.node_id
                    .as_ref()
                    .is_none_or(|id| !id.trim().is_empty() && id.len() <= 128),
                "node_id must be 1 to 128 characters",
            ),
            (
                self.smtp
                    .as_ref()
                    .is_none_or(|smtp| (1..=256).contains(&smtp.connections)),
                "smtp.connections must be between 1 and 256",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(format!("bad configuration: {message}"));
        }
        self.delivery
            .validate()
            .map_err(|message| format!("bad configuration: {message}"))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own error
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn defaults_need_no_file() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.bind, "127.0.0.1:8080");
            assert_eq!(c.database_url, "sqlite://tiffin.db");
            assert!(c.smtp.is_none());
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tiffin.toml",
                "bind = \"0.0.0.0:9000\"\n[smtp]\nhost = \"mail\"\npassword = \"p\"\n",
            )?;
            jail.set_env("TIFFIN_DATABASE_URL", "postgres://db/tiffin");
            jail.set_env("TIFFIN_JWT_SECRET", "s3cret-s3cret-s3cret-s3cret-s3cret");
            jail.set_env("TIFFIN_SMTP__PORT", "2525");
            let c = Config::load(Some(Path::new("tiffin.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.bind, "0.0.0.0:9000");
            assert_eq!(c.database_url, "postgres://db/tiffin");
            let smtp = c.smtp.clone().ok_or("smtp")?;
            assert_eq!((smtp.host.as_str(), smtp.port()), ("mail", 2525));
            assert_eq!(smtp.tls, SmtpTls::Starttls);
            assert_eq!(smtp.connections, 10);
            assert_eq!(
                c.jwt_secret.as_ref().map(|s| s.expose_secret().len()),
                Some(34)
            );
            // Secrets stay out of Debug output (and so out of logs).
            let shown = format!("{c:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn providers_from_the_environment_keep_phone_numbers_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TIFFIN_SMS__ACCOUNT_SID", "AC123");
            jail.set_env("TIFFIN_SMS__AUTH_TOKEN", "98765");
            jail.set_env("TIFFIN_SMS__FROM", "+15005550006");
            jail.set_env("TIFFIN_DELIVERY__SMS__PER_SEC", "3");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let sms = c.sms.clone().ok_or("sms")?;
            assert_eq!(sms.from, "+15005550006");
            assert_eq!(sms.auth_token.expose_secret(), "98765");
            assert_eq!(sms.base_url, "https://api.twilio.com");
            assert_eq!(c.delivery.sms.per_sec, 3);
            assert!(!format!("{c:?}").contains("98765"));
            jail.set_env("TIFFIN_DELIVERY__BREAKER_FAILURES", "0");
            let refused = Config::load(None).err().unwrap_or_default();
            assert!(refused.contains("breaker_failures"), "{refused}");
            Ok(())
        });
    }

    #[test]
    fn numeric_secrets_are_read_and_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TIFFIN_SMTP__HOST", "mail");
            jail.set_env("TIFFIN_SMTP__TLS", "tls");
            jail.set_env("TIFFIN_SMTP__PASSWORD", "12345678");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let smtp = c.smtp.ok_or("smtp")?;
            assert_eq!(
                smtp.password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned())
                    .as_deref(),
                Some("12345678")
            );
            assert_eq!(smtp.port(), 465);
            Ok(())
        });
    }

    #[test]
    fn out_of_range_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TIFFIN_DISPATCH_POLL_MS", "0");
            let err = Config::load(None).err().ok_or("accepted")?;
            assert!(err.contains("dispatch_poll_ms"), "{err}");
            jail.set_env("TIFFIN_DISPATCH_POLL_MS", "500");
            jail.set_env("TIFFIN_DIGEST__AT", "6pm");
            let err = Config::load(None).err().ok_or("accepted")?;
            assert!(err.contains("digest.at"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "bnid = \"x\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")))
                .err()
                .ok_or("accepted")?;
            assert!(err.contains("bnid"), "{err}");
            Ok(())
        });
    }
}
