//! How a person's email address and phone number are checked and stored, wherever they come
//! from (the users API, a roster import): one rule, so sign-in and delivery match.

/// Lower case and trimmed; something@domain.tld at most 254 characters.
pub fn email(v: &str) -> Result<String, String> {
    let v = v.trim().to_lowercase();
    let valid = v.len() <= 254
        && v.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if valid {
        Ok(v)
    } else {
        Err(format!("{v:?} is not an email address"))
    }
}

/// Phone numbers are stored in E.164 (`+` and digits), so sign-in and SMS match however they
/// were written. Written without `+`, a number is read in `region`'s numbering plan; one that
/// plan says cannot be dialled is refused.
pub fn phone(v: &str, region: Option<&str>) -> Result<String, String> {
    let region = region.and_then(|r| r.parse::<phonenumber::country::Id>().ok());
    phonenumber::parse(region, v.trim())
        .ok()
        .filter(phonenumber::PhoneNumber::is_valid)
        .map(|n| n.format().mode(phonenumber::Mode::E164).to_string())
        .ok_or_else(|| {
            format!(
                "{v:?} is not a phone number that can be dialled: write +<country><number>, or a \
                 number of the school's phone_region"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones_are_stored_one_way() {
        assert_eq!(email(" Ana@School.Test ").unwrap(), "ana@school.test");
        assert!(email("ana@").is_err());
        assert!(email("ana@.test").is_err());
        assert_eq!(phone("(415) 555-2671", Some("US")).unwrap(), "+14155552671");
        assert_eq!(
            phone("+44 20 7946 0958", Some("US")).unwrap(),
            "+442079460958"
        );
        assert!(phone("12", Some("US")).is_err());
    }
}
