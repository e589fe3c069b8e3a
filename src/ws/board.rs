//! The pickup board: a kitchen's frames reduced to what a public screen may show.

use tiffin_actors::bus::Frame;

/// "Ada Lovelace" -> "Ada L.": enough to call a name at a counter, no more.
fn first_name_and_initial(name: &str) -> String {
    let mut parts = name.split_whitespace();
    let first = parts.next().unwrap_or_default();
    match parts.last().and_then(|last| last.chars().next()) {
        Some(initial) => format!("{first} {initial}."),
        None => first.to_owned(),
    }
}

fn board_entry(order: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "pickup_code": order["pickup_code"],
        "name": first_name_and_initial(order["student_name"].as_str().unwrap_or_default()),
        "counter": order["counter"]["number"],
    })
}

/// A kitchen frame as the pickup board sees it, or `None` if the board does not change:
/// `board.ready` when a meal is waiting (or moved counters), `board.gone` when it left.
pub(super) fn board_frame(topic: &str, frame: &Frame) -> Option<Frame> {
    let ready = |o: &serde_json::Value| o["state"] == "ready";
    let (kind, data) = if frame.kind == "snapshot" {
        let waiting: Vec<_> = frame.data["orders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| ready(o))
            .map(board_entry)
            .collect();
        let reason = frame.data["reason"].clone();
        (
            "snapshot",
            serde_json::json!({"reason": reason, "ready": waiting}),
        )
    } else {
        let order = &frame.data["order"];
        let was_ready = frame.data["from"] == "ready";
        match frame.kind.as_str() {
            "order.ready" | "order.counter_changed" => ("board.ready", board_entry(order)),
            _ if was_ready && !ready(order) => ("board.gone", board_entry(order)),
            _ => return None,
        }
    };
    Some(Frame {
        topic: topic.to_owned(),
        seq: frame.seq,
        kind: kind.to_owned(),
        data,
        at: frame.at,
        transient: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn boards_show_a_first_name_and_an_initial() {
        assert_eq!(first_name_and_initial("Ada Lovelace"), "Ada L.");
        assert_eq!(
            first_name_and_initial("  Grace  Brewster Hopper "),
            "Grace H."
        );
        assert_eq!(first_name_and_initial("Ada"), "Ada");
        assert_eq!(first_name_and_initial(""), "");
    }

    fn kitchen_frame(kind: &str, from: &str, state: &str) -> Frame {
        Frame {
            topic: "kitchen:s".into(),
            seq: 7,
            kind: kind.into(),
            data: serde_json::json!({"from": from, "order": {
                "id": "o", "student_id": "st", "student_name": "Ada Lovelace", "state": state,
                "pickup_code": "AC34", "counter": {"id": "c", "number": 2, "name": "Counter 2"},
                "items": [{"name": "Soup"}]}}),
            at: Utc::now(),
            transient: false,
        }
    }

    #[test]
    fn the_board_sees_meals_arrive_and_leave_and_nothing_private() {
        let ready = board_frame(
            "board:s",
            &kitchen_frame("order.ready", "preparing", "ready"),
        )
        .unwrap();
        assert_eq!(ready.kind, "board.ready");
        assert_eq!(ready.seq, 7);
        assert_eq!(
            ready.data,
            serde_json::json!({"pickup_code": "AC34", "name": "Ada L.", "counter": 2})
        );
        let gone = board_frame(
            "board:s",
            &kitchen_frame("order.picked_up", "ready", "picked_up"),
        )
        .unwrap();
        assert_eq!(gone.kind, "board.gone");
        let recalled = board_frame(
            "board:s",
            &kitchen_frame("order.preparing", "ready", "preparing"),
        );
        assert_eq!(recalled.map(|f| f.kind), Some("board.gone".into()));
        for (kind, from, state) in [
            ("order.confirmed", "placed", "confirmed"),
            ("order.pickup_reminder", "ready", "ready"),
        ] {
            assert!(board_frame("board:s", &kitchen_frame(kind, from, state)).is_none());
        }
    }
}
