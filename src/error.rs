//! The one table of error codes: every error body is
//! `{"error": {"code": "...", "message": "..."}}` with the status beside its code.

use crate::db::DbError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tiffin_actors::domain::{ItemError, TransitionError, WaveError};
use tiffin_actors::ports::CommandError;
use utoipa::ToSchema;

/// Stable, machine-readable error codes, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidBody,
    InvalidText,
    BodyTooLarge,
    UnsupportedMediaType,
    InvalidId,
    InvalidQuery,
    ValidationFailed,
    IdempotencyKeyInvalid,
    WebsocketUpgradeRequired,
    IdempotencyKeyReused,
    Unauthenticated,
    TokenExpired,
    InvalidCredentials,
    RefreshTokenInvalid,
    Forbidden,
    WrongSchool,
    NotFound,
    RouteNotFound,
    MethodNotAllowed,
    Duplicate,
    VersionConflict,
    RecallWindowPassed,
    OrderingClosed,
    CancelDeadlinePassed,
    UnknownWindow,
    InvalidTransition,
    TransitionNotPermitted,
    UnknownMeal,
    MealUnavailable,
    AllergyConflict,
    EmptyOrder,
    NotDead,
    AllergyAckRequired,
    NoReadyOrder,
    CodeInvalid,
    CodeExpired,
    CodeLocked,
    CodeUsed,
    UnknownStation,
    StationRequired,
    ItemAlreadyDone,
    OrderNotInKitchen,
    PairingCodeInvalid,
    PairingCodeExpired,
    PairingCodeUsed,
    SignInCodeInvalid,
    SignInCodeExpired,
    ScreenRevoked,
    RateLimited,
    ReaderUnauthenticated,
    SignatureInvalid,
    SignatureExpired,
    SignatureReplayed,
    RosterUnreadable,
    RosterInvalid,
    DatabaseUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 58] = [
        ErrorCode::MalformedJson,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidText,
        ErrorCode::BodyTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidId,
        ErrorCode::InvalidQuery,
        ErrorCode::ValidationFailed,
        ErrorCode::IdempotencyKeyInvalid,
        ErrorCode::WebsocketUpgradeRequired,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::Unauthenticated,
        ErrorCode::TokenExpired,
        ErrorCode::InvalidCredentials,
        ErrorCode::RefreshTokenInvalid,
        ErrorCode::Forbidden,
        ErrorCode::WrongSchool,
        ErrorCode::NotFound,
        ErrorCode::RouteNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Duplicate,
        ErrorCode::VersionConflict,
        ErrorCode::RecallWindowPassed,
        ErrorCode::OrderingClosed,
        ErrorCode::CancelDeadlinePassed,
        ErrorCode::UnknownWindow,
        ErrorCode::InvalidTransition,
        ErrorCode::TransitionNotPermitted,
        ErrorCode::UnknownMeal,
        ErrorCode::MealUnavailable,
        ErrorCode::AllergyConflict,
        ErrorCode::EmptyOrder,
        ErrorCode::NotDead,
        ErrorCode::AllergyAckRequired,
        ErrorCode::NoReadyOrder,
        ErrorCode::CodeInvalid,
        ErrorCode::CodeExpired,
        ErrorCode::CodeLocked,
        ErrorCode::CodeUsed,
        ErrorCode::UnknownStation,
        ErrorCode::StationRequired,
        ErrorCode::ItemAlreadyDone,
        ErrorCode::OrderNotInKitchen,
        ErrorCode::PairingCodeInvalid,
        ErrorCode::PairingCodeExpired,
        ErrorCode::PairingCodeUsed,
        ErrorCode::SignInCodeInvalid,
        ErrorCode::SignInCodeExpired,
        ErrorCode::ScreenRevoked,
        ErrorCode::RateLimited,
        ErrorCode::ReaderUnauthenticated,
        ErrorCode::SignatureInvalid,
        ErrorCode::SignatureExpired,
        ErrorCode::SignatureReplayed,
        ErrorCode::RosterUnreadable,
        ErrorCode::RosterInvalid,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::Internal,
    ];

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson
            | InvalidId
            | InvalidQuery
            | IdempotencyKeyInvalid
            | WebsocketUpgradeRequired => StatusCode::BAD_REQUEST,
            InvalidBody | InvalidText | ValidationFailed | IdempotencyKeyReused | UnknownMeal
            | EmptyOrder | AllergyConflict | UnknownWindow | AllergyAckRequired | CodeInvalid
            | UnknownStation | StationRequired | RosterUnreadable | RosterInvalid
            | PairingCodeInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Unauthenticated
            | TokenExpired
            | InvalidCredentials
            | RefreshTokenInvalid
            | ReaderUnauthenticated
            | SignatureInvalid
            | SignatureExpired
            | SignatureReplayed
            | SignInCodeInvalid
            | SignInCodeExpired
            | ScreenRevoked => StatusCode::UNAUTHORIZED,
            Forbidden | WrongSchool | TransitionNotPermitted => StatusCode::FORBIDDEN,
            NotFound | RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Duplicate | VersionConflict | RecallWindowPassed | InvalidTransition
            | MealUnavailable | OrderingClosed | CancelDeadlinePassed | NotDead | NoReadyOrder
            | CodeExpired | CodeLocked | CodeUsed | ItemAlreadyDone | OrderNotInKitchen
            | PairingCodeExpired | PairingCodeUsed => StatusCode::CONFLICT,
            DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "internal".into())
    }
}

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The body's field at fault, as a path (`items[0].quantity`).
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// The body's field at fault, as a path (`items[0].quantity`), where one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::ValidationFailed, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        // The detail goes to the log, not to the client.
        tracing::error!(error = %message, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self.retry_after {
            Some(secs) => {
                response.insert_header(("Retry-After", secs.to_string()));
            }
            None if self.code == ErrorCode::DatabaseUnavailable => {
                response.insert_header(("Retry-After", "2"));
            }
            None => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                field: self.field.clone(),
            },
        })
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::NotFound => ApiError::new(ErrorCode::NotFound, "not found"),
            DbError::Duplicate(m) => ApiError::new(ErrorCode::Duplicate, dup_message(&m)),
            DbError::MissingReference(_) => {
                ApiError::validation("the request refers to something that does not exist")
            }
            DbError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ApiError::new(
                    ErrorCode::DatabaseUnavailable,
                    "database unavailable; retry shortly",
                )
            }
            DbError::Other(m) => ApiError::internal(m),
        }
    }
}

fn dup_message(db_message: &str) -> String {
    for field in ["email", "phone", "number", "card_uid", "token"] {
        if db_message.contains(field) {
            return format!("{field} is already in use");
        }
    }
    "already exists".into()
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        let message = e.to_string();
        let code = match e {
            CommandError::Rule(TransitionError::InvalidTransition { .. }) => {
                ErrorCode::InvalidTransition
            }
            CommandError::Rule(TransitionError::NotPermitted { .. }) => {
                ErrorCode::TransitionNotPermitted
            }
            CommandError::OrderNotFound
            | CommandError::SchoolNotFound
            | CommandError::StudentNotFound => ErrorCode::NotFound,
            CommandError::PlacerInactive => ErrorCode::Forbidden,
            CommandError::VersionConflict | CommandError::ScanClaimLost => {
                ErrorCode::VersionConflict
            }
            CommandError::RecallWindowPassed(_) => ErrorCode::RecallWindowPassed,
            CommandError::Wave(WaveError::UnknownWave(_)) => ErrorCode::UnknownWindow,
            CommandError::Wave(_) => ErrorCode::OrderingClosed,
            CommandError::CancelDeadlinePassed => ErrorCode::CancelDeadlinePassed,
            CommandError::UnknownMeal(_) => ErrorCode::UnknownMeal,
            CommandError::MealUnavailable(_) => ErrorCode::MealUnavailable,
            CommandError::AllergyConflict { .. } => ErrorCode::AllergyConflict,
            CommandError::EmptyOrder => ErrorCode::EmptyOrder,
            CommandError::InvalidItem(_) => ErrorCode::ValidationFailed,
            CommandError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            CommandError::Item(ItemError::NoSuchLine(_)) => ErrorCode::NotFound,
            CommandError::Item(ItemError::AlreadyDone(_)) => ErrorCode::ItemAlreadyDone,
            CommandError::Item(ItemError::NotInKitchen(_)) => ErrorCode::OrderNotInKitchen,
            CommandError::Item(ItemError::OtherStation(_)) => ErrorCode::Forbidden,
            CommandError::Unavailable(m) => {
                return DbError::Unavailable(m).into();
            }
            CommandError::Internal(m) => return ApiError::internal(m),
        };
        ApiError::new(code, message)
    }
}

/// An actor that went away mid-command (a kitchen restarting after its load failed on a cut
/// connection drops the commands it held) or did not answer in time: the command may not
/// have run, and a retry with the same idempotency key is safe, so `503` with `Retry-After`.
impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> ApiError {
        tracing::warn!(error = %e, "actor unavailable");
        ApiError::new(
            ErrorCode::DatabaseUnavailable,
            "the kitchen is restarting; retry shortly",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_gone_mid_command_is_a_503_to_retry() {
        for gone in [actix::MailboxError::Closed, actix::MailboxError::Timeout] {
            let response = ApiError::from(gone).error_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(response.headers().contains_key("retry-after"));
        }
    }

    #[test]
    fn codes_are_unique_snake_case_and_have_a_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.as_str();
            assert!(seen.insert(name.clone()), "duplicate {name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        assert_eq!(ErrorCode::VersionConflict.as_str(), "version_conflict");
        assert_eq!(ErrorCode::WrongSchool.status(), StatusCode::FORBIDDEN);
    }
}
