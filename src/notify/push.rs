//! Push through FCM HTTP v1, one send per active device of the recipient; a device FCM no
//! longer knows is deactivated and not retried.

use super::templates::Templates;
use super::{http_client, retry_after, transport_error};
use crate::config::PushConfig;
use crate::db::Db;
use crate::store;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiffin_actors::ports::{OutboxMessage, SendError, Sender};
use tokio::sync::Mutex;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Tokens are renewed this long before Google says they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// What FCM is told to wait before it may retry a throttled send with no Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The fields of a Firebase service-account JSON file that signing needs.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// A service account's RS256-signed JWT is exchanged for an OAuth2 access token (cached until
/// shortly before it expires), then each of the recipient's active devices gets
/// `POST {base}/v1/projects/{project}/messages:send`.
pub struct FcmSender {
    http: reqwest::Client,
    project_id: String,
    client_email: String,
    key: jsonwebtoken::EncodingKey,
    token_url: String,
    send_url: String,
    token: Mutex<Option<CachedToken>>,
    db: Db,
    templates: Arc<Templates>,
}

/// How one device's send went.
enum DeviceOutcome {
    Delivered,
    /// The token is dead: deactivated, never retried.
    Gone(String),
    Failed(SendError),
}

impl FcmSender {
    pub fn new(
        config: &PushConfig,
        timeout: Duration,
        db: Db,
        templates: Arc<Templates>,
    ) -> Result<FcmSender, String> {
        let file = &config.service_account_file;
        let json = std::fs::read_to_string(file)
            .map_err(|e| format!("push service account {file}: {e}"))?;
        let account: ServiceAccount =
            serde_json::from_str(&json).map_err(|e| format!("push service account {file}: {e}"))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("push service account {file}: private_key: {e}"))?;
        let base = config.base_url.trim_end_matches('/');
        Ok(FcmSender {
            http: http_client(timeout)?,
            send_url: format!("{base}/v1/projects/{}/messages:send", account.project_id),
            token_url: config.token_url.clone().unwrap_or(account.token_uri),
            project_id: account.project_id,
            client_email: account.client_email,
            key,
            token: Mutex::new(None),
            db,
            templates,
        })
    }

    /// The cached access token, or a fresh one. One exchange at a time.
    async fn access_token(&self) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_url,
            iat,
            exp: iat + 3600,
        };
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| SendError::Permanent(format!("signing the FCM token request: {e}")))?;
        let reply = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                SendError::Transient(format!("FCM token exchange: {}", transport_error(&e)))
            })?;
        let status = reply.status();
        if !status.is_success() {
            let body = reply.text().await.unwrap_or_default();
            return Err(SendError::Transient(format!(
                "FCM token exchange answered {status}: {}",
                truncate(&body)
            )));
        }
        let token: TokenReply = reply
            .json()
            .await
            .map_err(|e| SendError::Transient(format!("FCM token reply: {e}")))?;
        let lifetime = Duration::from_secs(token.expires_in).saturating_sub(TOKEN_MARGIN);
        *cached = Some(CachedToken {
            value: token.access_token.clone(),
            renew_at: Instant::now() + lifetime,
        });
        Ok(token.access_token)
    }

    async fn send_to_device(
        &self,
        access_token: &str,
        device_token: &str,
        message: &OutboxMessage,
        title: &str,
        body: &str,
    ) -> DeviceOutcome {
        let payload: serde_json::Value = serde_json::from_str(&message.payload).unwrap_or_default();
        let order_id = payload["order"]["id"].as_str().unwrap_or_default();
        let request = serde_json::json!({
            "message": {
                "token": device_token,
                "notification": {"title": title, "body": body},
                "data": {"kind": message.template, "order_id": order_id, "notification_id": message.id},
                // A resend after a crash replaces the first on the device instead of adding one.
                "android": {
                    "priority": if message.priority >= tiffin_actors::notices::Priority::High { "high" } else { "normal" },
                    "notification": {"tag": message.id},
                },
                "apns": {"headers": {"apns-collapse-id": message.id}},
            }
        });
        let reply = match self
            .http
            .post(&self.send_url)
            .bearer_auth(access_token)
            .json(&request)
            .send()
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                return DeviceOutcome::Failed(SendError::Transient(format!(
                    "FCM: {}",
                    transport_error(&e)
                )));
            }
        };
        let status = reply.status();
        if status.is_success() {
            return DeviceOutcome::Delivered;
        }
        let wait = retry_after(reply.headers());
        let body = reply.text().await.unwrap_or_default();
        let error: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let code = fcm_error_code(&error);
        let text = format!("FCM answered {status} {code}: {}", truncate(&body));
        match (status.as_u16(), code.as_str()) {
            (_, "UNREGISTERED") | (403, "SENDER_ID_MISMATCH") => DeviceOutcome::Gone(text),
            (400, "INVALID_ARGUMENT")
                if error["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("registration token")) =>
            {
                DeviceOutcome::Gone(text)
            }
            (401, _) => {
                // The access token was revoked or expired early: fetch a new one next time.
                *self.token.lock().await = None;
                DeviceOutcome::Failed(SendError::Transient(text))
            }
            (429, _) => DeviceOutcome::Failed(SendError::Throttled {
                reason: text,
                retry_after: wait.unwrap_or(DEFAULT_RETRY_AFTER),
            }),
            (500..=599, _) => DeviceOutcome::Failed(match wait {
                Some(retry_after) => SendError::Throttled {
                    reason: text,
                    retry_after,
                },
                None => SendError::Transient(text),
            }),
            _ => DeviceOutcome::Failed(SendError::Permanent(text)),
        }
    }
}

/// `errorCode` of the `FcmError` detail, else the status (`NOT_FOUND`, `UNAVAILABLE`…).
fn fcm_error_code(error: &serde_json::Value) -> String {
    let detail = error["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorCode"].as_str());
    detail
        .or_else(|| error["error"]["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn truncate(body: &str) -> &str {
    let end = body.char_indices().nth(300).map_or(body.len(), |(i, _)| i);
    &body[..end]
}

#[async_trait]
impl Sender for FcmSender {
    async fn send(&self, message: &OutboxMessage) -> Result<(), SendError> {
        let devices = store::devices::active_device_tokens(&self.db, &message.recipient_id)
            .await
            .map_err(|e| SendError::Transient(format!("device tokens: {e}")))?;
        if devices.is_empty() {
            return Err(SendError::Permanent("no active device".into()));
        }
        let (title, body) = self
            .templates
            .render_short(message)
            .map_err(SendError::Permanent)?;
        let access_token = self.access_token().await?;
        let mut delivered = false;
        let mut failure = None;
        for device in &devices {
            match self
                .send_to_device(&access_token, &device.token, message, &title, &body)
                .await
            {
                DeviceOutcome::Delivered => delivered = true,
                DeviceOutcome::Gone(reason) => {
                    tracing::info!(device = %device.id, project = %self.project_id, reason = %reason, "device token deactivated");
                    if let Err(e) =
                        store::devices::deactivate_device_token(&self.db, &device.id).await
                    {
                        tracing::warn!(device = %device.id, error = %e, "could not deactivate device token");
                    }
                    failure.get_or_insert(SendError::Permanent(reason));
                }
                // A retryable failure outranks a permanent one: someone may still get it.
                DeviceOutcome::Failed(e) => match (&failure, &e) {
                    (Some(SendError::Transient(_) | SendError::Throttled { .. }), _) => {}
                    _ => failure = Some(e),
                },
            }
        }
        match (delivered, failure) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(SendError::Permanent("no device accepted".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fcm_error_code;
    use serde_json::json;

    #[test]
    fn error_codes_come_from_the_fcm_detail_or_the_status() {
        let unregistered = json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
        assert_eq!(fcm_error_code(&unregistered), "UNREGISTERED");
        let unavailable = json!({"error": {"code": 503, "status": "UNAVAILABLE"}});
        assert_eq!(fcm_error_code(&unavailable), "UNAVAILABLE");
        assert_eq!(fcm_error_code(&json!("not json")), "");
    }
}
