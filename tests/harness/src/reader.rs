//! A card reader's signed requests: hex HMAC-SHA256 of `{timestamp}\n{METHOD}\n{path}\n{body}`
//! in `X-Signature`, with `X-Reader-Id` and `X-Timestamp` (milliseconds).

use hmac::Mac;

/// The signature of a reader's POST of `body` to `path` at `timestamp` (ms), with `secret`.
pub fn signature(
    secret: &str,
    timestamp: i64,
    path: &str,
    body: &[u8],
) -> Result<String, hmac::digest::InvalidLength> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(format!("{timestamp}\nPOST\n{path}\n").as_bytes());
    mac.update(body);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// A reader's POST to `url`, signed with `signature` over `timestamp`.
pub fn signed_request(
    client: &awc::Client,
    url: &str,
    reader_id: &str,
    timestamp: i64,
    signature: &str,
) -> awc::ClientRequest {
    client
        .post(url)
        .insert_header(("X-Reader-Id", reader_id))
        .insert_header(("X-Timestamp", timestamp.to_string()))
        .insert_header(("X-Signature", signature))
        .insert_header(("Content-Type", "application/json"))
}
