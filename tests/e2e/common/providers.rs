//! Loopback servers that speak the notification providers' real wire formats: FCM HTTP v1
//! (with the OAuth2 JWT-bearer token exchange) and a Twilio-style SMS API. They check auth and
//! payloads the way the real ones do, record what they accept, and fail on demand.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const FCM_PROJECT: &str = "tiffin-test";
pub const FCM_CLIENT_EMAIL: &str = "tiffin-push@tiffin-test.iam.gserviceaccount.com";
pub const SMS_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const SMS_TOKEN: &str = "sms-auth-token-for-tests";
pub const SMS_FROM: &str = "+15005550006";

/// A scripted answer: HTTP status and an optional Retry-After in seconds.
pub type Scripted = (u16, Option<u64>);

/// Runs an actix-web app on a loopback port in its own thread and system; yields the port.
macro_rules! serve {
    ($app:expr) => {{
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new($app)
                    .workers(1)
                    .bind("127.0.0.1:0")
                    .expect("bind provider");
                tx.send(server.addrs()[0].port()).expect("port");
                server.run().await.expect("provider server");
            });
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("provider did not start")
    }};
}

#[derive(Default)]
pub struct FcmState {
    pub token_requests: u32,
    issued: Vec<String>,
    /// Every accepted message, as sent.
    pub delivered: Vec<Value>,
    /// Every send request that reached the server, accepted or not, with when.
    pub send_attempts: Vec<(Instant, String)>,
    /// Devices FCM no longer knows.
    pub unregistered: HashSet<String>,
    /// Devices whose sends fail with 503 (their phone's region is down, say).
    pub failing: HashSet<String>,
    /// Answers for the next sends, before anything else is looked at.
    pub script: VecDeque<Scripted>,
    /// Every send fails with 503.
    pub down: bool,
    /// Sends are accepted and never answered.
    pub hang: bool,
}

pub struct FakeFcm {
    pub port: u16,
    pub state: Arc<Mutex<FcmState>>,
}

impl FakeFcm {
    pub fn start() -> FakeFcm {
        let state = Arc::new(Mutex::new(FcmState::default()));
        let shared = state.clone();
        let port = serve!(move || {
            App::new()
                .app_data(web::Data::from(shared.clone()))
                .route("/token", web::post().to(fcm_token))
                .route(
                    "/v1/projects/{project}/messages:send",
                    web::post().to(fcm_send),
                )
        });
        FakeFcm { port, state }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a service-account JSON file for the hub, as the Firebase console hands out.
    pub fn service_account(&self, dir: &std::path::Path) -> String {
        let token_uri = format!("{}/token", self.base());
        tiffin_harness::fcm::write_service_account(dir, FCM_PROJECT, FCM_CLIENT_EMAIL, &token_uri)
            .expect("write service account")
            .to_string_lossy()
            .into_owned()
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FcmState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn delivered_to(&self, device: &str) -> Vec<Value> {
        self.with(|s| {
            s.delivered
                .iter()
                .filter(|m| m["token"] == device)
                .cloned()
                .collect()
        })
    }

    /// Waits until `device` has got a message of `kind`.
    pub async fn wait_for(&self, device: &str, kind: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self
                .delivered_to(device)
                .into_iter()
                .find(|m| m["data"]["kind"] == kind)
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} push to {device}; delivered: {:?}",
                self.with(|s| s.delivered.clone())
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn google_error(status: u16, code: &str, message: &str, fcm_code: Option<&str>) -> HttpResponse {
    let details: Vec<Value> = fcm_code
        .map(|c| json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}))
        .into_iter()
        .collect();
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "error": {"code": status, "message": message, "status": code, "details": details}
    }))
}

#[derive(serde::Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

#[derive(serde::Deserialize)]
struct Assertion {
    iss: String,
    scope: String,
}

/// Google's OAuth2 token endpoint for a service account's signed JWT.
async fn fcm_token(
    state: web::Data<Mutex<FcmState>>,
    req: HttpRequest,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let refuse = |why: &str| {
        HttpResponse::BadRequest().json(json!({"error": "invalid_grant", "error_description": why}))
    };
    if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return refuse("grant_type");
    }
    let public = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fcm-test-key.pub.pem"
    ))
    .unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    let host = req.connection_info().host().to_owned();
    validation.set_audience(&[format!("http://{host}/token")]);
    let claims = match jsonwebtoken::decode::<Assertion>(&form.assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return refuse(&format!("bad assertion: {e}")),
    };
    if claims.iss != FCM_CLIENT_EMAIL
        || claims.scope != "https://www.googleapis.com/auth/firebase.messaging"
    {
        return refuse("iss or scope");
    }
    let mut s = state.lock().unwrap();
    s.token_requests += 1;
    let token = format!("ya29.test-{}", s.token_requests);
    s.issued.push(token.clone());
    HttpResponse::Ok()
        .json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

/// `POST /v1/projects/{project}/messages:send`.
async fn fcm_send(
    state: web::Data<Mutex<FcmState>>,
    req: HttpRequest,
    project: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    let hang = state.lock().unwrap().hang;
    if hang {
        state
            .lock()
            .unwrap()
            .send_attempts
            .push((Instant::now(), "(hung)".into()));
        actix_web::rt::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut s = state.lock().unwrap();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !s.issued.contains(&bearer) {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        );
    }
    if *project != FCM_PROJECT {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "wrong project",
            Some("SENDER_ID_MISMATCH"),
        );
    }
    let message = &body["message"];
    let device = message["token"].as_str().unwrap_or_default().to_owned();
    let well_formed = !device.is_empty()
        && message["notification"]["title"].is_string()
        && message["notification"]["body"].is_string()
        && message["data"]
            .as_object()
            .is_some_and(|d| d.values().all(Value::is_string));
    if !well_formed {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            &format!("Invalid message: {message}"),
            Some("INVALID_ARGUMENT"),
        );
    }
    s.send_attempts.push((Instant::now(), device.clone()));
    if let Some((status, retry_after)) = s.script.pop_front() {
        let mut reply = google_error(status, "UNAVAILABLE", "scripted failure", None);
        if let Some(secs) = retry_after {
            reply.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(secs),
            );
        }
        return reply;
    }
    if s.down || s.failing.contains(&device) {
        return google_error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            None,
        );
    }
    if s.unregistered.contains(&device) {
        return google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        );
    }
    s.delivered.push(message.clone());
    let name = format!("projects/{FCM_PROJECT}/messages/{}", s.delivered.len());
    HttpResponse::Ok().json(json!({"name": name}))
}

#[derive(Default)]
pub struct SmsState {
    /// Accepted messages: (To, From, Body).
    pub delivered: Vec<(String, String, String)>,
    /// Every request that got past auth, with its To.
    pub attempts: Vec<String>,
    /// Numbers the carrier says are invalid (error 21211).
    pub invalid: HashSet<String>,
    pub down: bool,
}

pub struct FakeSms {
    pub port: u16,
    pub state: Arc<Mutex<SmsState>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SmsForm {
    to: String,
    from: String,
    body: String,
}

impl FakeSms {
    pub fn start() -> FakeSms {
        let state = Arc::new(Mutex::new(SmsState::default()));
        let shared = state.clone();
        let port = serve!(move || {
            App::new().app_data(web::Data::from(shared.clone())).route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                web::post().to(sms_send),
            )
        });
        FakeSms { port, state }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut SmsState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn to(&self, number: &str) -> Vec<String> {
        self.with(|s| {
            s.delivered
                .iter()
                .filter(|(to, ..)| to == number)
                .map(|(.., body)| body.clone())
                .collect()
        })
    }

    pub async fn wait_for(&self, number: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(body) = self.to(number).into_iter().find(|b| b.contains(text)) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no SMS with {text:?} to {number}; delivered: {:?}",
                self.with(|s| s.delivered.clone())
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

async fn sms_send(
    state: web::Data<Mutex<SmsState>>,
    req: HttpRequest,
    sid: web::Path<String>,
    form: web::Form<SmsForm>,
) -> HttpResponse {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SMS_SID}:{SMS_TOKEN}"))
    );
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) || *sid != SMS_SID {
        return twilio_error(401, 20003, "Authenticate");
    }
    let mut s = state.lock().unwrap();
    s.attempts.push(form.to.clone());
    if s.down {
        return twilio_error(503, 20500, "Service unavailable");
    }
    if s.invalid.contains(&form.to) {
        return twilio_error(
            400,
            21211,
            &format!("The 'To' number {} is not a valid phone number.", form.to),
        );
    }
    if form.from != SMS_FROM || form.body.is_empty() {
        return twilio_error(400, 21212, "The 'From' number is not valid.");
    }
    s.delivered
        .push((form.to.clone(), form.from.clone(), form.body.clone()));
    let sid = format!("SM{:032x}", s.delivered.len());
    HttpResponse::Created().json(json!({
        "sid": sid, "status": "queued", "to": form.to, "from": form.from, "body": form.body,
    }))
}

/// Hub settings for both providers.
pub fn provider_env(fcm: &FakeFcm, sms: &FakeSms, dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "TIFFIN_PUSH__SERVICE_ACCOUNT_FILE".into(),
            fcm.service_account(dir),
        ),
        ("TIFFIN_PUSH__BASE_URL".into(), fcm.base()),
        ("TIFFIN_SMS__BASE_URL".into(), sms.base()),
        ("TIFFIN_SMS__ACCOUNT_SID".into(), SMS_SID.into()),
        ("TIFFIN_SMS__AUTH_TOKEN".into(), SMS_TOKEN.into()),
        ("TIFFIN_SMS__FROM".into(), SMS_FROM.into()),
    ]
}

/// A TCP proxy in front of a provider that can reset every connection, new and established,
/// as a provider's failing load balancer does.
pub struct ResettingProxy {
    pub port: u16,
    resetting: tokio::sync::watch::Sender<bool>,
    /// Connections cut with a reset so far.
    pub resets: Arc<std::sync::atomic::AtomicUsize>,
}

impl ResettingProxy {
    pub fn start(target_port: u16) -> ResettingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (resetting, watch) = tokio::sync::watch::channel(false);
        let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = resets.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let (mut watch, counted) = (watch.clone(), counted.clone());
                    tokio::spawn(async move {
                        let reset = |stream: tokio::net::TcpStream| {
                            let _ = stream.set_zero_linger();
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        };
                        if *watch.borrow() {
                            return reset(inbound);
                        }
                        let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                        else {
                            return;
                        };
                        let cut = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                            _ = watch.wait_for(|on| *on) => true,
                        };
                        if cut {
                            reset(inbound);
                        }
                    });
                }
            });
        });
        ResettingProxy {
            port,
            resetting,
            resets,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on every connection is reset (or, `false`, passed through again).
    pub fn reset_all(&self, on: bool) {
        self.resetting.send_replace(on);
    }
}
