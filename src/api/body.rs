//! Request bodies, read once at the edge: size, media type, JSON syntax, text without control
//! characters, and type errors that name the field path (`items[0].quantity`).

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, mime, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON body (`Content-Type: application/json`), decoded by [`decode`].
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let body = read(req, payload);
        Box::pin(async move {
            if !json {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send JSON with Content-Type: application/json",
                ));
            }
            decode(&body.await?).map(Json)
        })
    }
}

/// A JSON body that may be absent or `null` (then `T::default()`), checked as [`Json`].
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read(req, payload);
        Box::pin(async move { optional(&body.await?).map(OptionalJson) })
    }
}

/// An optional body: none at all, or `null`, is `T::default()`; anything else is JSON as
/// [`decode`] reads it (whitespace alone is not JSON).
fn optional<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    decode::<Option<T>>(body).map(Option::unwrap_or_default)
}

fn is_json(req: &HttpRequest) -> bool {
    matches!(req.mime_type(), Ok(Some(mime))
        if mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
}

/// The whole body, refused once it passes the configured limit.
fn read(
    req: &HttpRequest,
    payload: &mut Payload,
) -> LocalBoxFuture<'static, Result<web::BytesMut, ApiError>> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(64 * 1024, |s| s.config.max_body_bytes);
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        let too_large = || ApiError::new(ErrorCode::BodyTooLarge, "request body too large");
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(ErrorCode::MalformedJson, format!("unreadable body: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    })
}

/// Decodes a JSON body: `malformed_json` for bad syntax, `invalid_text` for a string with a
/// control character, `invalid_body` for a wrong type or a missing or unknown field, each
/// naming the field path.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Every body is an object; serde would also read a struct from an array, by position.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "invalid body: expected a JSON object, got an array",
        ));
    }
    if may_hold_controls(body) {
        let value: Value = serde_json::from_slice(body).map_err(malformed)?;
        if let Some(field) = control_text(&value, &mut String::new()) {
            return Err(ApiError::new(
                ErrorCode::InvalidText,
                format!("{field} contains a control character"),
            )
            .with_field(field));
        }
        return serde_path_to_error::deserialize(value).map_err(invalid);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(malformed)?;
    Ok(value)
}

/// JSON refuses C0 controls raw in strings, so they arrive escaped (`\u0000`); DEL and the C1
/// controls may also arrive raw. A body with none of these is decoded straight from its bytes.
fn may_hold_controls(body: &[u8]) -> bool {
    body.windows(2)
        .any(|w| w == b"\\u" || w[0] == 0x7f || (w[0] == 0xc2 && (0x80..0xa0).contains(&w[1])))
        || body.last() == Some(&0x7f)
}

fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
}

fn invalid(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {inner}"));
    }
    // serde_json ends its message with the position; the path says more.
    let message = inner.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => &message,
    };
    let path = e.path().to_string();
    if path == "." {
        return ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {message}"));
    }
    ApiError::new(ErrorCode::InvalidBody, format!("{path}: {message}")).with_field(path)
}

/// Text may hold tabs and line breaks, nothing else below U+0020, nor DEL or the C1 controls:
/// PostgreSQL refuses NUL, and the others are never meant in a name, reason or login.
fn is_refused(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// The path of the first string (or key) holding a refused character.
fn control_text(value: &Value, path: &mut String) -> Option<String> {
    match value {
        Value::String(s) => s.chars().any(is_refused).then(|| path.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = control_text(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let found = if key.chars().any(is_refused) {
                Some(path.clone())
            } else {
                control_text(item, path)
            };
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Order {
        #[allow(dead_code)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        quantity: i32,
        #[allow(dead_code)]
        note: Option<String>,
    }

    fn refusal(body: &str) -> (ErrorCode, Option<String>, String) {
        match decode::<Order>(body.as_bytes()) {
            Ok(order) => panic!("accepted {order:?}"),
            Err(e) => (e.code, e.field, e.message),
        }
    }

    #[test]
    fn type_errors_name_the_field_path_without_a_position() {
        let (code, field, message) = refusal(r#"{"items":[{"quantity":1},{"quantity":"two"}]}"#);
        assert_eq!(code, ErrorCode::InvalidBody);
        assert_eq!(field.as_deref(), Some("items[1].quantity"));
        assert!(
            message.starts_with("items[1].quantity: invalid type"),
            "{message}"
        );
        assert!(!message.contains("line"), "{message}");
        let (_, field, _) = refusal(r#"{"items":[{"quantity":1,"tip":2}]}"#);
        assert_eq!(field.as_deref(), Some("items[0].tip"));
        let (code, field, _) = refusal(r#"{"items":[{"quantity":1}]"#);
        assert_eq!((code, field), (ErrorCode::MalformedJson, None));
        let (code, _, _) = refusal(r#"{"items":[]} x"#);
        assert_eq!(code, ErrorCode::MalformedJson);
        // serde reads a struct from an array by position; a body is an object.
        let (code, _, message) = refusal(r#"[[]]"#);
        assert_eq!(code, ErrorCode::InvalidBody, "{message}");
    }

    #[test]
    fn an_optional_body_is_none_or_null_or_json_not_whitespace() {
        type Map = std::collections::BTreeMap<String, i32>;
        let read = |body: &str| optional::<Map>(body.as_bytes()).map_err(|e| e.code);
        assert_eq!(read(""), Ok(Map::new()));
        assert_eq!(read("null"), Ok(Map::new()));
        assert_eq!(read(r#" {"a":1} "#), Ok(Map::from([("a".to_owned(), 1)])));
        assert_eq!(read("\n"), Err(ErrorCode::MalformedJson));
    }

    #[test]
    fn control_characters_are_refused_with_their_path() {
        for bad in ["\\u0000", "\\u001b", "\\u007f", "\\u0085", "a\\u0000b"] {
            let body = format!(r#"{{"items":[{{"quantity":1,"note":"{bad}"}}]}}"#);
            let (code, field, _) = refusal(&body);
            assert_eq!(code, ErrorCode::InvalidText, "{bad}");
            assert_eq!(field.as_deref(), Some("items[0].note"), "{bad}");
        }
        for raw in ["\u{7f}", "\u{85}", "a\u{9f}"] {
            let body = format!(r#"{{"items":[{{"quantity":1,"note":"{raw}"}}]}}"#);
            assert_eq!(refusal(&body).0, ErrorCode::InvalidText, "{raw:?}");
        }
        let (code, field, _) = refusal(r#"{"items":[],"k\u0000":1}"#);
        assert_eq!(
            (code, field.as_deref()),
            (ErrorCode::InvalidText, Some("k\0"))
        );
    }

    #[test]
    fn escapes_that_are_not_controls_and_line_breaks_pass() {
        let body = r#"{"items":[{"quantity":2,"note":"caf\u00e9\nno nuts\t\u2603"}]}"#;
        assert!(decode::<Order>(body.as_bytes()).is_ok());
        assert!(decode::<Order>(br#"{"items":[]}"#).is_ok());
    }
}
