//! What a new order is checked against: its lines priced from the menu, and the student's
//! allergies.

use crate::db::models::MealRow;
use tiffin_actors::domain::{OrderLine, allergy_conflicts};
use tiffin_actors::ports::{CommandError, NewOrder};

pub(super) const MAX_ITEM_QUANTITY: i32 = 20;

pub(super) const MAX_ITEMS: usize = 20;

/// Refuses a meal with an allergen the student is allergic to, unless staff recorded an
/// override; returns the reason to record with the order.
pub(super) fn allergy_check(
    new: &NewOrder,
    menu: &[MealRow],
    allergies: &str,
) -> Result<Option<String>, CommandError> {
    let allergies: Vec<&str> = allergies.split(',').collect();
    let mut overridden = Vec::new();
    for item in &new.items {
        let Some(meal) = menu.iter().find(|m| m.id == item.meal_id) else {
            continue;
        };
        let allergens: Vec<&str> = meal.allergens.split(',').collect();
        for allergen in allergy_conflicts(&allergies, &allergens) {
            if new.allergy_override.is_none() {
                return Err(CommandError::AllergyConflict {
                    meal: meal.name.clone(),
                    allergen,
                });
            }
            overridden.push(format!("{} ({allergen})", meal.name));
        }
    }
    Ok(match (&new.allergy_override, overridden.is_empty()) {
        (Some(why), false) => Some(format!(
            "allergy override for {}: {why}",
            overridden.join(", ")
        )),
        _ => None,
    })
}

/// Prices and names come from the menu, never from the request.
pub(super) fn order_lines(
    new: &NewOrder,
    menu: &[MealRow],
) -> Result<Vec<OrderLine>, CommandError> {
    if new.items.is_empty() {
        return Err(CommandError::EmptyOrder);
    }
    if new.items.len() > MAX_ITEMS {
        return Err(CommandError::InvalidItem(format!(
            "at most {MAX_ITEMS} lines per order"
        )));
    }
    new.items
        .iter()
        .map(|item| {
            let meal = menu
                .iter()
                .find(|m| m.id == item.meal_id)
                .ok_or_else(|| CommandError::UnknownMeal(item.meal_id.clone()))?;
            if !meal.available {
                return Err(CommandError::MealUnavailable(meal.id.clone()));
            }
            if !(1..=MAX_ITEM_QUANTITY).contains(&item.quantity) {
                return Err(CommandError::InvalidItem(format!(
                    "quantity must be between 1 and {MAX_ITEM_QUANTITY}"
                )));
            }
            Ok(OrderLine {
                meal_id: meal.id.clone(),
                name: meal.name.clone(),
                quantity: item.quantity,
                unit_price_cents: meal.price_cents,
                station_id: meal.station_id.clone(),
                done: false,
            })
        })
        .collect()
}
