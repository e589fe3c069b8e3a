//! Stations: which items of an order a station makes, marking one done, and when every
//! station is done.

use super::machine::{OrderCommand, OrderState};
use super::orders::OrderSummary;

/// The event of an item marked done at its station (the order's state stays).
pub const ITEM_DONE: &str = "order.item_done";

/// Why an item cannot be marked done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("the order has no line {0}")]
    NoSuchLine(usize),
    #[error("line {0} is done already")]
    AlreadyDone(usize),
    #[error("items are marked done while the order is confirmed or preparing, not {0}")]
    NotInKitchen(OrderState),
    #[error("line {0} is another station's")]
    OtherStation(usize),
}

/// Whether line `line` of `order` is made at `station`, where the one marking it is a
/// station (a station screen); anyone else may mark any line.
pub fn made_at(order: &OrderSummary, line: usize, station: Option<&str>) -> Result<(), ItemError> {
    let Some(station) = station else {
        return Ok(());
    };
    match order.items.get(line) {
        Some(item) if item.station_id.as_deref() != Some(station) => {
            Err(ItemError::OtherStation(line))
        }
        _ => Ok(()),
    }
}

/// Marks line `line` of `order` done, if the rules allow it.
pub fn mark_done(order: &mut OrderSummary, line: usize) -> Result<(), ItemError> {
    if !matches!(order.state, OrderState::Confirmed | OrderState::Preparing) {
        return Err(ItemError::NotInKitchen(order.state));
    }
    let item = order
        .items
        .get_mut(line)
        .ok_or(ItemError::NoSuchLine(line))?;
    if item.done {
        return Err(ItemError::AlreadyDone(line));
    }
    item.done = true;
    Ok(())
}

/// Every item made at a station is done (and there is at least one): nothing is left for
/// the stations. Items of meals with no station are not the stations' to do.
pub fn stations_done(order: &OrderSummary) -> bool {
    let mut at_stations = order.items.iter().filter(|i| i.station_id.is_some());
    let mut any = false;
    at_stations.all(|i| {
        any = true;
        i.done
    }) && any
}

/// The steps the hub takes by itself to make an order whose stations are done ready
/// (where the school says so): none unless every station is done.
pub fn steps_to_ready(order: &OrderSummary) -> &'static [OrderCommand] {
    if !stations_done(order) {
        return &[];
    }
    match order.state {
        OrderState::Confirmed => &[OrderCommand::Start, OrderCommand::Ready],
        OrderState::Preparing => &[OrderCommand::Ready],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::orders::OrderLine;
    use chrono::Utc;

    fn line(station: Option<&str>) -> OrderLine {
        OrderLine {
            meal_id: "m".into(),
            name: "Soup".into(),
            quantity: 1,
            unit_price_cents: 300,
            station_id: station.map(str::to_owned),
            done: false,
        }
    }

    fn order(state: OrderState, items: Vec<OrderLine>) -> OrderSummary {
        OrderSummary {
            id: "o".into(),
            school_id: "s".into(),
            student_id: "st".into(),
            student_name: "Ada".into(),
            state,
            version: 2,
            items,
            total_cents: 300,
            placed_at: Utc::now(),
            updated_at: Utc::now(),
            counter: None,
            pickup_code: None,
            wave: None,
            ready_at: None,
            alerts: Vec::new(),
            allergy_override: None,
        }
    }

    #[test]
    fn items_are_done_once_and_only_in_the_kitchen() {
        let mut o = order(
            OrderState::Preparing,
            vec![line(Some("grill")), line(Some("salad"))],
        );
        assert_eq!(mark_done(&mut o, 2), Err(ItemError::NoSuchLine(2)));
        mark_done(&mut o, 0).unwrap();
        assert_eq!(mark_done(&mut o, 0), Err(ItemError::AlreadyDone(0)));
        assert!(!stations_done(&o));
        assert_eq!(steps_to_ready(&o), &[] as &[OrderCommand]);
        mark_done(&mut o, 1).unwrap();
        assert!(stations_done(&o));
        assert_eq!(steps_to_ready(&o), &[OrderCommand::Ready]);
        o.state = OrderState::Confirmed;
        assert_eq!(
            steps_to_ready(&o),
            &[OrderCommand::Start, OrderCommand::Ready]
        );
        for state in [OrderState::Placed, OrderState::Ready, OrderState::PickedUp] {
            let mut o = order(state, vec![line(Some("grill"))]);
            assert_eq!(mark_done(&mut o, 0), Err(ItemError::NotInKitchen(state)));
            o.items[0].done = true;
            assert_eq!(steps_to_ready(&o), &[] as &[OrderCommand]);
        }
    }

    #[test]
    fn a_station_marks_only_its_own_lines() {
        let o = order(OrderState::Preparing, vec![line(Some("grill")), line(None)]);
        assert_eq!(made_at(&o, 0, Some("grill")), Ok(()));
        assert_eq!(made_at(&o, 0, None), Ok(()));
        assert_eq!(
            made_at(&o, 0, Some("salad")),
            Err(ItemError::OtherStation(0))
        );
        assert_eq!(
            made_at(&o, 1, Some("grill")),
            Err(ItemError::OtherStation(1))
        );
    }

    #[test]
    fn items_without_a_station_do_not_count() {
        let o = order(OrderState::Preparing, vec![line(None)]);
        assert!(!stations_done(&o), "no station work: nothing to be done");
        let mut o = order(OrderState::Preparing, vec![line(None), line(Some("grill"))]);
        mark_done(&mut o, 1).unwrap();
        assert!(stations_done(&o));
    }
}
