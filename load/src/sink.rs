//! A loopback SMTP server (mailin's protocol implementation) that counts every email the hub
//! delivers, by Message-ID (the hub's outbox message id), with when it arrived.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// SMTP sessions a hub the tool starts holds to the sink unless told otherwise.
pub const SMTP_SESSIONS: usize = 32;

/// Outbox message id -> arrival times (more than one: delivered twice).
pub type Deliveries = Arc<Mutex<HashMap<String, Vec<DateTime<Utc>>>>>;

pub struct SmtpSink {
    pub port: u16,
    deliveries: Deliveries,
    paused: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Counter {
    deliveries: Deliveries,
    data: Vec<u8>,
    /// How long the sink takes to accept each message (a slow provider).
    delay: Duration,
    /// While set, messages are held before their reply (a provider that stalls).
    paused: Arc<AtomicBool>,
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
        // Each session is its own thread: sleeping holds up only this connection.
        while self.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(self.delay);
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
    /// A sink that takes `delay` to accept each message.
    pub fn start(delay: Duration) -> anyhow::Result<SmtpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counter = Counter {
            deliveries: Deliveries::default(),
            data: Vec::new(),
            delay,
            paused: Arc::default(),
        };
        let deliveries = counter.deliveries.clone();
        let paused = counter.paused.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = counter.clone();
                std::thread::spawn(move || session(stream, counter));
            }
        });
        Ok(SmtpSink {
            port,
            deliveries,
            paused,
        })
    }

    /// Holds every message before its reply until resumed: the hub's sends wait, and what it
    /// commits meanwhile stays in its outbox.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
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
        [
            ("TIFFIN_SMTP__HOST", "127.0.0.1".to_owned()),
            ("TIFFIN_SMTP__PORT", self.port.to_string()),
            ("TIFFIN_SMTP__TLS", "none".to_owned()),
            ("TIFFIN_SMTP__FROM", "Tiffin <tiffin@load.test>".to_owned()),
            // One message at a time per session: against a sink slowed to 50 ms, each session
            // carries up to 20 emails a second.
            ("TIFFIN_SMTP__CONNECTIONS", sessions.to_string()),
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
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "load",
            "private_key": include_str!("../../tests/fixtures/fcm-test-key.pem"),
            "client_email": "load@tiffin-load.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", self.base),
        });
        let path = self.dir.join("fcm-service-account.json");
        std::fs::write(&path, account.to_string())?;
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
