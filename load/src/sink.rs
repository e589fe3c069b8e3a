//! Loopback sinks for the hub's email, push and SMS: they count every message it delivers (email
//! by Message-ID, the hub's outbox message id), with when it arrived.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tiffin_harness::smtp::{SmtpOptions, SmtpServer, message_id};

/// SMTP sessions a hub the tool starts holds to the sink unless told otherwise.
pub const SMTP_SESSIONS: usize = 32;

/// Outbox message id -> arrival times (more than one: delivered twice).
pub type Deliveries = Arc<Mutex<HashMap<String, Vec<DateTime<Utc>>>>>;

/// The harness's SMTP server, counting what arrives.
pub struct SmtpSink {
    server: SmtpServer,
    deliveries: Deliveries,
}

impl SmtpSink {
    /// A sink that takes `delay` to accept each message.
    pub fn start(delay: Duration) -> anyhow::Result<SmtpSink> {
        let deliveries = Deliveries::default();
        let counted = deliveries.clone();
        let options = SmtpOptions {
            delay,
            hang_up_after_each: false,
        };
        let server = SmtpServer::start(
            options,
            Arc::new(move |_to: Vec<String>, data: &[u8]| {
                let at = Utc::now();
                let id = message_id(&String::from_utf8_lossy(data)).unwrap_or_default();
                counted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(id)
                    .or_default()
                    .push(at);
            }),
        )?;
        Ok(SmtpSink { server, deliveries })
    }

    /// Holds every message before its reply until resumed: the hub's sends wait, and what it
    /// commits meanwhile stays in its outbox.
    pub fn pause(&self, paused: bool) {
        self.server.pause(paused);
    }

    pub fn deliveries(&self) -> HashMap<String, Vec<DateTime<Utc>>> {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many distinct emails have arrived.
    pub fn delivered(&self) -> usize {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The hub's settings to send through this sink over `sessions` SMTP sessions.
    pub fn hub_env(&self, sessions: usize) -> Vec<(String, String)> {
        let mut env = self.server.hub_env("Tiffin <tiffin@load.test>");
        env.extend(
            [
                // One message at a time per session: against a sink slowed to 50 ms, each
                // session carries up to 20 emails a second.
                ("TIFFIN_SMTP__CONNECTIONS", sessions.to_string()),
                // One sink, as fast as loopback allows: the hub's own bucket is not under test.
                ("TIFFIN_DELIVERY__EMAIL__PER_SEC", "0".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }
}

/// Loopback FCM HTTP v1 and Twilio-style SMS servers that count every push (by the outbox
/// message id it carries) and every SMS, as the SMTP sink counts email.
pub struct ProviderSinks {
    base: String,
    push: Deliveries,
    /// When each SMS arrived (Twilio's API carries no id of ours to count by).
    sms: Arc<Mutex<Vec<DateTime<Utc>>>>,
    dir: std::path::PathBuf,
}

const FCM_PROJECT: &str = "tiffin-load";
const SMS_SID: &str = "ACload";
const SMS_TOKEN: &str = "load-sms-token";
const SMS_FROM: &str = "+15550000000";

#[derive(Clone)]
struct ProviderState {
    push: Deliveries,
    sms: Arc<Mutex<Vec<DateTime<Utc>>>>,
    delay: Duration,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SmsForm {
    to: String,
    body: String,
}

impl ProviderSinks {
    pub fn start(delay: Duration) -> anyhow::Result<ProviderSinks> {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let state = ProviderState {
            push: Deliveries::default(),
            sms: Arc::default(),
            delay,
        };
        let (push, sms) = (state.push.clone(), state.sms.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ran = actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(state.clone()))
                        .route(
                            "/token",
                            web::post().to(|| async {
                                HttpResponse::Ok().json(serde_json::json!({
                                    "access_token": "load-access-token",
                                    "expires_in": 3600,
                                    "token_type": "Bearer",
                                }))
                            }),
                        )
                        .route(
                            "/v1/projects/{project}/messages:send",
                            web::post().to(fcm_send),
                        )
                        .route(
                            "/2010-04-01/Accounts/{sid}/Messages.json",
                            web::post().to(sms_send),
                        )
                })
                .workers(1)
                .bind("127.0.0.1:0")?;
                let port = server.addrs().first().map(|a| a.port()).unwrap_or_default();
                let _ = tx.send(port);
                server.run().await
            });
            if let Err(e) = ran {
                eprintln!("tiffin-load: provider sinks: {e}");
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(10))?;
        let dir =
            std::env::temp_dir().join(format!("tiffin-load-fcm-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(ProviderSinks {
            base: format!("http://127.0.0.1:{port}"),
            push,
            sms,
            dir,
        })
    }

    pub fn push_deliveries(&self) -> HashMap<String, Vec<DateTime<Utc>>> {
        self.push
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn sms_count(&self) -> usize {
        self.sms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The hub's settings for both providers: a service account whose key is the test key in
    /// tests/fixtures (it grants nothing) and whose token endpoint is this sink.
    pub fn hub_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let path = tiffin_harness::fcm::write_service_account(
            &self.dir,
            FCM_PROJECT,
            "load@tiffin-load.iam.gserviceaccount.com",
            &format!("{}/token", self.base),
        )?;
        Ok([
            (
                "TIFFIN_PUSH__SERVICE_ACCOUNT_FILE",
                path.display().to_string(),
            ),
            ("TIFFIN_PUSH__BASE_URL", self.base.clone()),
            ("TIFFIN_SMS__BASE_URL", self.base.clone()),
            ("TIFFIN_SMS__ACCOUNT_SID", SMS_SID.to_owned()),
            ("TIFFIN_SMS__AUTH_TOKEN", SMS_TOKEN.to_owned()),
            ("TIFFIN_SMS__FROM", SMS_FROM.to_owned()),
            // The sinks are not under test: no client-side buckets in front of them.
            ("TIFFIN_DELIVERY__PUSH__PER_SEC", "0".to_owned()),
            ("TIFFIN_DELIVERY__SMS__PER_SEC", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect())
    }
}

impl Drop for ProviderSinks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn fcm_send(
    body: actix_web::web::Json<serde_json::Value>,
    state: actix_web::web::Data<ProviderState>,
) -> actix_web::HttpResponse {
    actix_web::rt::time::sleep(state.delay).await;
    let id = body["message"]["data"]["notification_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    state
        .push
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(id.clone())
        .or_default()
        .push(Utc::now());
    actix_web::HttpResponse::Ok()
        .json(serde_json::json!({"name": format!("projects/{FCM_PROJECT}/messages/{id}")}))
}

async fn sms_send(
    form: actix_web::web::Form<SmsForm>,
    state: actix_web::web::Data<ProviderState>,
) -> actix_web::HttpResponse {
    actix_web::rt::time::sleep(state.delay).await;
    state
        .sms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Utc::now());
    actix_web::HttpResponse::Created().json(serde_json::json!({
        "sid": format!("SM{}", uuid::Uuid::new_v4().simple()),
        "status": "queued",
        "to": form.to,
        "body": form.body,
    }))
}

/// Every sink of a run the tool's own hub sends to.
pub struct Sinks {
    pub smtp: SmtpSink,
    pub providers: ProviderSinks,
}

impl Sinks {
    pub fn start(delay: Duration) -> anyhow::Result<Sinks> {
        Ok(Sinks {
            smtp: SmtpSink::start(delay)?,
            providers: ProviderSinks::start(delay)?,
        })
    }

    /// The hub's settings to send through these sinks, with `limits` as its provider buckets.
    pub fn hub_env(
        &self,
        smtp_sessions: usize,
        limits: &ProviderLimits,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = self.smtp.hub_env(smtp_sessions);
        env.extend(self.providers.hub_env()?);
        let buckets = limits.hub_env();
        env.retain(|(k, _)| !buckets.iter().any(|(b, _)| b == k));
        env.extend(buckets);
        Ok(env)
    }
}

/// One provider's token bucket in the hub (`delivery.<channel>.per_sec` and `burst`); a
/// `per_sec` of 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub per_sec: u32,
    pub burst: u32,
}

/// The hub's per-channel provider buckets (`TIFFIN_DELIVERY__{EMAIL,PUSH,SMS}__*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProviderLimits {
    pub email: Bucket,
    pub push: Bucket,
    pub sms: Bucket,
}

impl ProviderLimits {
    /// No buckets: the sinks are not under test, only the hub's own path to them (the rushes).
    pub const NONE: ProviderLimits = ProviderLimits {
        email: Bucket {
            per_sec: 0,
            burst: 0,
        },
        push: Bucket {
            per_sec: 0,
            burst: 0,
        },
        sms: Bucket {
            per_sec: 0,
            burst: 0,
        },
    };

    pub fn hub_env(&self) -> Vec<(String, String)> {
        [
            ("EMAIL", self.email),
            ("PUSH", self.push),
            ("SMS", self.sms),
        ]
        .into_iter()
        .flat_map(|(channel, bucket)| {
            [
                (
                    format!("TIFFIN_DELIVERY__{channel}__PER_SEC"),
                    bucket.per_sec.to_string(),
                ),
                (
                    format!("TIFFIN_DELIVERY__{channel}__BURST"),
                    bucket.burst.to_string(),
                ),
            ]
        })
        .collect()
    }
}
