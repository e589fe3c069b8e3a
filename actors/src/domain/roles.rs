//! Who a person is to the hub.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Who a person is to the hub. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Student,
    Guardian,
    Teacher,
    KitchenStaff,
    SchoolAdmin,
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Student,
        Role::Guardian,
        Role::Teacher,
        Role::KitchenStaff,
        Role::SchoolAdmin,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Guardian => "guardian",
            Role::Teacher => "teacher",
            Role::KitchenStaff => "kitchen_staff",
            Role::SchoolAdmin => "school_admin",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Staff who run a kitchen's orders.
    pub fn is_kitchen_staff(self) -> bool {
        matches!(self, Role::KitchenStaff | Role::SchoolAdmin | Role::Admin)
    }

    /// Staff who may configure a school.
    pub fn is_school_admin(self) -> bool {
        matches!(self, Role::SchoolAdmin | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
