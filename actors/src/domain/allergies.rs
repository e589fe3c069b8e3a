//! Allergies: which of a meal's allergens a student is allergic to.

/// The allergens of a meal that a student is allergic to (both lists lower case).
pub fn allergy_conflicts(allergies: &[&str], allergens: &[&str]) -> Vec<String> {
    let mut hits: Vec<String> = allergens
        .iter()
        .filter(|a| !a.is_empty() && allergies.contains(a))
        .map(|a| (*a).to_owned())
        .collect();
    hits.sort();
    hits.dedup();
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allergy_conflicts_are_the_shared_allergens() {
        assert_eq!(
            allergy_conflicts(&["peanuts", "milk"], &["gluten", "milk", "peanuts"]),
            ["milk", "peanuts"]
        );
        assert!(allergy_conflicts(&["peanuts"], &["gluten", ""]).is_empty());
        assert!(allergy_conflicts(&[""], &[""]).is_empty());
    }
}
