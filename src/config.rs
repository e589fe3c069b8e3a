//! Settings: defaults that run with no file at all, then a TOML file, then `TIFFIN_*`
//! environment variables (nested keys with `__`, e.g. `TIFFIN_SMTP__HOST`).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on; port 0 picks a free one.
    pub bind: String,
    /// `sqlite://FILE` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Redis for several nodes; unset runs a single node with the in-process bus.
    pub redis_url: Option<String>,
    /// HS256 signing key for access tokens. Unset on SQLite: generated once and kept in a
    /// file beside the database. Required on PostgreSQL, where nodes must share it.
    #[serde(serialize_with = "never_serialize")]
    pub jwt_secret: Option<SecretString>,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    pub database_pool_size: usize,
    /// Seed a demo school when the database has no school yet.
    pub seed_demo: bool,
    /// How often notification dispatch polls the outbox.
    pub dispatch_poll_ms: u64,
    /// Largest accepted JSON body.
    pub max_body_bytes: usize,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    pub smtp: Option<SmtpConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    #[serde(default, serialize_with = "never_serialize")]
    pub password: Option<SecretString>,
    #[serde(default = "default_from")]
    pub from: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

fn default_smtp_port() -> u16 {
    587
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
            jwt_secret: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            database_pool_size: 8,
            seed_demo: true,
            dispatch_poll_ms: 1000,
            max_body_bytes: 64 * 1024,
            log_json: false,
            smtp: None,
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
        figment
            .merge(Env::prefixed("TIFFIN_").split("__"))
            .extract()
            .map_err(|e| format!("bad configuration: {e}"))
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
            assert_eq!((smtp.host.as_str(), smtp.port), ("mail", 2525));
            assert_eq!(smtp.tls, SmtpTls::Starttls);
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
