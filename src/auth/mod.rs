//! Who is calling: the principal of an access token and the role and school checks every
//! handler makes; tokens and passwords in the modules below.

pub mod passwords;
mod screens;
mod tokens;

pub use screens::{
    ScreenKind, ScreensConfig, code_hash, normalise_code, pairing_code, screen_may_call,
};
pub use tokens::{Claims, JwtKeys, random_token, token_hash};

use crate::error::{ApiError, ErrorCode};
use tiffin_actors::domain::Role;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    pub school_id: Option<String>,
    /// When the token stops being valid (Unix seconds); long-lived sockets check it.
    pub expires_at: i64,
    /// When it was signed (Unix seconds).
    pub issued_at: i64,
    /// A paired screen's credential (`user_id` is the screen's id), and what kind of screen.
    pub screen: Option<ScreenKind>,
    /// A station screen's station: it marks only that station's items done.
    pub station_id: Option<String>,
}

/// The subject of an admin token `tiffin token` signs without naming a user: the operator who
/// holds the signing key, not a person in the database.
pub const OPERATOR: &str = "operator";

impl Principal {
    pub fn from_claims(claims: Claims) -> Principal {
        Principal {
            user_id: claims.sub,
            role: claims.role,
            school_id: claims.school,
            expires_at: claims.exp,
            issued_at: claims.iat,
            screen: claims.screen,
            station_id: claims.station,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// District admins see every school; everyone else only their own.
    pub fn require_school(&self, school_id: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.school_id.as_deref() == Some(school_id) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::WrongSchool,
                "this token is not valid for that school",
            ))
        }
    }

    pub fn require_role(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this",
                self.role
            )))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_role(&[Role::Admin])
    }

    pub fn require_school_admin(&self, school_id: &str) -> Result<(), ApiError> {
        self.require_role(&[Role::SchoolAdmin, Role::Admin])?;
        self.require_school(school_id)
    }

    pub fn require_kitchen(&self, school_id: &str) -> Result<(), ApiError> {
        if self.screen.is_some_and(|kind| !kind.runs_orders()) {
            return Err(ApiError::forbidden(
                "a board screen does not see the kitchen",
            ));
        }
        self.require_role(&[Role::KitchenStaff, Role::SchoolAdmin, Role::Admin])?;
        self.require_school(school_id)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn school_scoping() {
        let staff = Principal {
            user_id: "u".into(),
            role: Role::KitchenStaff,
            school_id: Some("a".into()),
            expires_at: i64::MAX,
            issued_at: 0,
            screen: None,
            station_id: None,
        };
        assert!(staff.require_kitchen("a").is_ok());
        assert_eq!(
            staff.require_kitchen("b").map_err(|e| e.code),
            Err(ErrorCode::WrongSchool)
        );
        assert_eq!(
            staff.require_school_admin("a").map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        let admin = Principal {
            user_id: "x".into(),
            role: Role::Admin,
            school_id: None,
            expires_at: i64::MAX,
            issued_at: 0,
            screen: None,
            station_id: None,
        };
        assert!(admin.require_school_admin("b").is_ok());
    }
}
