//! Who hears what, on which channel, how urgently: the one table of notification rules
//! (`rules`), each recipient's preferences, critical overrides and the SMS fallback
//! (`recipients`), quiet hours and the digest (`timing`). The items are re-exported here,
//! so the server names them `notices::X`.

pub mod recipients;
pub mod rules;
pub mod timing;

pub use recipients::{NotificationIntent, Preference, Recipient, intents};
pub use rules::{Audience, Channel, Kind, Priority, Rule, kind_of_alert, kind_of_transition};
pub use timing::{QuietHours, digest_due, first_attempt_delay};
