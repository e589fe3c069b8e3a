//! One line of a bundle's file to a staged row: what each OneRoster field must be. Problems
//! that refuse the line whoever it is (an unknown role, no sourcedId) are `Err`; problems of a
//! person Tiffin imports (a bad phone number) ride on the row, since a 1.2 bundle says who is
//! a student only in roles.csv.

use crate::store::roster::{AllergyStage, CardStage, OrgStage, RoleStage, UserStage};
use std::collections::HashMap;

/// Roles of OneRoster 1.1 and 1.2 that Tiffin does not import (staff).
const STAFF: [&str; 9] = [
    "teacher",
    "aide",
    "administrator",
    "proctor",
    "counselor",
    "districtadministrator",
    "principal",
    "siteadministrator",
    "systemadministrator",
];

/// A OneRoster role as Tiffin's: (`student` | `guardian` | `other`, the guardian's
/// relationship).
pub fn role(v: &str) -> Result<(&'static str, Option<String>), String> {
    let lower = v.trim().to_ascii_lowercase();
    match lower.as_str() {
        "student" => Ok(("student", None)),
        "parent" | "guardian" | "relative" => Ok(("guardian", Some(lower))),
        other if STAFF.contains(&other) => Ok(("other", None)),
        _ => Err(format!("unknown role {v:?}")),
    }
}

/// `status`: empty or `active`, or `tobedeleted` (a delta's removal).
pub fn deleted(status: &str) -> Result<bool, String> {
    match status.trim().to_ascii_lowercase().as_str() {
        "" | "active" => Ok(false),
        "tobedeleted" => Ok(true),
        _ => Err(format!("unknown status {status:?} (active or tobedeleted)")),
    }
}

fn sourced_id(field: &str, v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        Err(format!("{field} is empty"))
    } else if v.len() > 255 {
        Err(format!("{field} is longer than 255 characters"))
    } else {
        Ok(v.to_owned())
    }
}

/// A list field (`orgSourcedIds`, `agentSourcedIds`): comma-separated sourcedIds.
pub fn list(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in v.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    out
}

pub fn org(
    line: i64,
    sid: &str,
    name: &str,
    status: &str,
    known: Option<&(String, String)>,
    default_region: &str,
) -> Result<Option<OrgStage>, String> {
    let sourced_id = sourced_id("sourcedId", sid)?;
    if deleted(status)? {
        // Schools are not removed by a roster: their orders and menus stay.
        return Ok(None);
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 120 {
        return Err("name must have 1 to 120 characters".into());
    }
    let (school_id, phone_region) = match known {
        Some((id, region)) => (id.clone(), region.clone()),
        None => (crate::db::new_id(), default_region.to_owned()),
    };
    Ok(Some(OrgStage {
        line,
        sourced_id,
        name: name.to_owned(),
        school_id,
        phone_region,
    }))
}

/// The fields of a users.csv line, by OneRoster column.
#[derive(Default)]
pub struct UserFields<'a> {
    pub sourced_id: &'a str,
    pub status: &'a str,
    pub enabled_user: &'a str,
    /// `None`: the file has no role column (1.2: roles.csv says).
    pub role: Option<&'a str>,
    /// orgSourcedIds (1.1) or primaryOrgSourcedId (1.2).
    pub orgs: &'a str,
    pub given_name: &'a str,
    pub preferred_given_name: &'a str,
    pub family_name: &'a str,
    pub email: &'a str,
    pub sms: &'a str,
    pub phone: &'a str,
}

/// A person and the sourcedIds of their agents. `regions`: each school's sourcedId and its
/// phone region, for numbers written without a country code.
pub fn user(
    line: i64,
    f: &UserFields<'_>,
    regions: &HashMap<String, String>,
    default_region: &str,
) -> Result<UserStage, String> {
    let sourced_id = sourced_id("sourcedId", f.sourced_id)?;
    let deleted = deleted(f.status)?;
    let active = match f.enabled_user.trim().to_ascii_lowercase().as_str() {
        "" | "true" => true,
        "false" => false,
        other => return Err(format!("enabledUser {other:?} is neither true nor false")),
    };
    let (role, relationship) = match f.role {
        Some(r) => {
            let (role, relationship) = role(r)?;
            (Some(role.to_owned()), relationship)
        }
        None => (None, None),
    };
    let orgs = list(f.orgs);
    let org = orgs
        .iter()
        .find(|o| regions.contains_key(*o))
        .or(orgs.first())
        .cloned();
    let region = org
        .as_ref()
        .and_then(|o| regions.get(o))
        .map_or(default_region, String::as_str);
    let given = if f.preferred_given_name.trim().is_empty() {
        f.given_name.trim()
    } else {
        f.preferred_given_name.trim()
    };
    let display_name = format!("{given} {}", f.family_name.trim())
        .trim()
        .to_owned();
    let mut problem = None;
    if display_name.is_empty() || display_name.chars().count() > 120 {
        problem = Some("givenName and familyName must make a name of 1 to 120 characters".into());
    }
    let email = match f.email.trim() {
        "" => None,
        e => crate::contact::email(e)
            .map_err(|m| problem.get_or_insert(m).clone())
            .ok(),
    };
    let number = if f.sms.trim().is_empty() {
        f.phone
    } else {
        f.sms
    };
    let phone = match number.trim() {
        "" => None,
        p => crate::contact::phone(p, Some(region))
            .map_err(|m| problem.get_or_insert(m).clone())
            .ok(),
    };
    Ok(UserStage {
        line,
        sourced_id,
        role,
        relationship,
        display_name,
        email,
        phone,
        org,
        active,
        deleted,
        problem,
        new_id: crate::db::new_id(),
        school_id: None,
    })
}

/// A roles.csv line (1.2); `None` for a role Tiffin does not import or one being removed.
pub fn role_line(
    line: i64,
    user_sid: &str,
    role_name: &str,
    role_type: &str,
    org: &str,
    status: &str,
) -> Result<Option<RoleStage>, String> {
    let user_sid = sourced_id("userSourcedId", user_sid)?;
    let (role, relationship) = role(role_name)?;
    if deleted(status)? || role == "other" {
        return Ok(None);
    }
    let org = org.trim();
    Ok(Some(RoleStage {
        line,
        user_sid,
        role: role.to_owned(),
        relationship,
        org: (!org.is_empty()).then(|| org.to_owned()),
        is_primary: !role_type.trim().eq_ignore_ascii_case("secondary"),
    }))
}

/// A cards.csv line (Tiffin's): `sourcedId,cardUid`.
pub fn card(line: i64, sid: &str, uid: &str) -> Result<CardStage, String> {
    let sourced_id = sourced_id("sourcedId", sid)?;
    let card_uid = crate::rfid::normalise_uid(uid);
    if card_uid.is_empty() || card_uid.len() > 64 {
        return Err("cardUid must have 1 to 64 letters or digits".into());
    }
    Ok(CardStage {
        line,
        sourced_id,
        card_uid,
        new_id: crate::db::new_id(),
    })
}

/// An allergies.csv line (Tiffin's): `sourcedId,allergens`, the allergens separated by `;`
/// (an empty field: none).
pub fn allergies(line: i64, sid: &str, allergens: &str) -> Result<AllergyStage, String> {
    let sourced_id = sourced_id("sourcedId", sid)?;
    let mut list: Vec<String> = Vec::new();
    for a in allergens.split([';', ',']).map(str::trim) {
        if a.is_empty() {
            continue;
        }
        if a.chars().count() > 40 {
            return Err(format!("allergen {a:?} is longer than 40 characters"));
        }
        list.push(a.to_lowercase());
    }
    list.sort();
    list.dedup();
    Ok(AllergyStage {
        line,
        sourced_id,
        allergies: list.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_of_both_versions_map_to_tiffins() {
        assert_eq!(role("student").unwrap(), ("student", None));
        assert_eq!(role("Parent").unwrap(), ("guardian", Some("parent".into())));
        assert_eq!(role("relative").unwrap().0, "guardian");
        assert_eq!(role("districtAdministrator").unwrap().0, "other");
        assert!(role("wizard").is_err());
    }

    #[test]
    fn a_person_with_bad_contacts_carries_the_problem() {
        let regions = HashMap::from([("s1".to_owned(), "US".to_owned())]);
        let f = UserFields {
            sourced_id: "u1",
            role: Some("parent"),
            orgs: "district, s1",
            given_name: "Ana",
            family_name: "Ruiz",
            email: "Ana@Example.Test",
            sms: "(415) 555-2671",
            ..UserFields::default()
        };
        let u = user(2, &f, &regions, "GB").unwrap();
        assert_eq!(u.org.as_deref(), Some("s1"));
        assert_eq!(u.phone.as_deref(), Some("+14155552671"));
        assert_eq!(u.email.as_deref(), Some("ana@example.test"));
        assert_eq!(u.relationship.as_deref(), Some("parent"));
        assert!(u.problem.is_none());
        let bad = UserFields { sms: "12", ..f };
        let u = user(3, &bad, &regions, "GB").unwrap();
        assert!(u.problem.unwrap().contains("phone number"));
        let nobody = UserFields {
            sourced_id: " ",
            ..UserFields::default()
        };
        assert!(user(4, &nobody, &regions, "US").is_err());
    }

    #[test]
    fn allergens_and_cards_are_stored_as_the_api_stores_them() {
        assert_eq!(
            allergies(2, "u1", "Peanut; milk;peanut").unwrap().allergies,
            "milk,peanut"
        );
        assert_eq!(allergies(2, "u1", "").unwrap().allergies, "");
        assert_eq!(card(2, "u1", "04:a2:bc").unwrap().card_uid, "04A2BC");
        assert!(card(2, "u1", "::").is_err());
        assert_eq!(list("a, b,,a"), vec!["a", "b"]);
    }
}
