//! What an import may touch: one school or the whole district, the time zone of the schools it
//! creates, the phone region of numbers written without a country code.

use super::parse::Known;
use crate::db::Db;
use crate::store::roster::{Refusal, Scope, imported_schools, sourced_id_of_school};

/// How to import.
#[derive(Debug, Clone)]
pub struct Options {
    /// Count what would change; write nothing.
    pub dry_run: bool,
    /// Only this school (its Tiffin id or its sourcedId); it must have been imported before.
    pub school: Option<String>,
    /// Time zone of the schools the bundle creates (OneRoster has none), e.g. `America/Chicago`.
    pub time_zone: String,
    /// Phone region of the schools the bundle creates (ISO 3166-1), e.g. `US`.
    pub phone_region: String,
}

/// The import's scope and what the reader needs to know beforehand.
pub async fn prepare(db: &Db, options: &Options) -> Result<(Scope, Known), Refusal> {
    let refuse = |why: String| Refusal::Unreadable(why);
    if options.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(refuse(format!(
            "{:?} is not an IANA time zone",
            options.time_zone
        )));
    }
    let region = options.phone_region.trim().to_uppercase();
    if region.parse::<phonenumber::country::Id>().is_err() {
        return Err(refuse(format!("{region:?} is not an ISO 3166-1 country")));
    }
    let schools = imported_schools(db).await.map_err(Refusal::Db)?;
    let school = match &options.school {
        None => None,
        Some(wanted) => {
            let by_sid = schools.get(wanted).map(|(id, _)| id.clone());
            let by_id = sourced_id_of_school(db, wanted)
                .await
                .map_err(Refusal::Db)?
                .map(|_| wanted.clone());
            Some(by_sid.or(by_id).ok_or_else(|| {
                refuse(format!(
                    "no school {wanted} imported from a roster: import the district first"
                ))
            })?)
        }
    };
    let default_region = match &school {
        // An import for one school reads its numbers in the school's region.
        Some(id) => schools
            .values()
            .find(|(sid, _)| sid == id)
            .map_or(region.clone(), |(_, r)| r.clone()),
        None => region,
    };
    let scope = Scope {
        dry_run: options.dry_run,
        school,
        time_zone: options.time_zone.clone(),
    };
    Ok((
        scope,
        Known {
            schools,
            default_region,
        },
    ))
}
