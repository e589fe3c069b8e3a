//! What Tiffin's end-to-end tests and its load tool share: a hub process started from the
//! built binary, a real SMTP server on loopback, a card reader's request signing, and a
//! Firebase service account with the test key.

pub mod fcm;
pub mod hub;
pub mod reader;
pub mod smtp;
