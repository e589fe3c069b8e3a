//! Screen credentials: what kind of screen a token belongs to, the pairing codes a new screen
//! shows, and the few operations a screen may call.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a paired screen is for; it limits what its credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScreenKind {
    /// The kitchen dashboard: every order of the school, bump and recall.
    Kitchen,
    /// One station of the kitchen (paired with its `station_id`): that station's items of
    /// the live orders, marked done there. It moves no order.
    Station,
    /// The expo: every live order with each station's progress; orders bumped to ready here.
    Expo,
    /// The public now-serving board: pickup codes and first names only.
    Board,
}

impl ScreenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScreenKind::Kitchen => "kitchen",
            ScreenKind::Station => "station",
            ScreenKind::Expo => "expo",
            ScreenKind::Board => "board",
        }
    }

    pub fn parse(s: &str) -> Option<ScreenKind> {
        [
            ScreenKind::Kitchen,
            ScreenKind::Station,
            ScreenKind::Expo,
            ScreenKind::Board,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// Whether it shows the kitchen's orders.
    pub fn runs_orders(self) -> bool {
        !matches!(self, ScreenKind::Board)
    }

    /// The operations (method and route pattern) it may call besides reading its school.
    fn routes(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ScreenKind::Kitchen | ScreenKind::Expo => &KITCHEN_SCREEN_ROUTES,
            ScreenKind::Station => &STATION_SCREEN_ROUTES,
            ScreenKind::Board => &[],
        }
    }
}

/// The operations (method and route pattern) a kitchen or expo screen's credential may call;
/// every other is refused (`403`) whatever the token's role. The socket is checked by its
/// topics. Not cancel: a cancellation is answered for by a person signed in, not a shared
/// screen.
const KITCHEN_SCREEN_ROUTES: [(&str, &str); 10] = [
    ("GET", "/api/v1/schools/{school_id}/kitchen/summary"),
    ("GET", "/api/v1/schools/{school_id}/orders/live"),
    ("GET", "/api/v1/schools/{school_id}/stations"),
    ("POST", "/api/v1/orders/{order_id}/items/{line}/done"),
    ("POST", "/api/v1/orders/{order_id}/confirm"),
    ("POST", "/api/v1/orders/{order_id}/start"),
    ("POST", "/api/v1/orders/{order_id}/ready"),
    ("POST", "/api/v1/orders/{order_id}/pickup"),
    ("POST", "/api/v1/orders/{order_id}/recall"),
    ("POST", "/api/v1/orders/{order_id}/bump"),
];

/// A station screen reads the live orders and the stations, and marks items done.
const STATION_SCREEN_ROUTES: [(&str, &str); 3] = [
    ("GET", "/api/v1/schools/{school_id}/orders/live"),
    ("GET", "/api/v1/schools/{school_id}/stations"),
    ("POST", "/api/v1/orders/{order_id}/items/{line}/done"),
];

/// Whether a screen of `kind` may call `method` on the route `pattern`. Every screen may read
/// its school (the name in its header).
pub fn screen_may_call(kind: ScreenKind, method: &str, pattern: &str) -> bool {
    let school = ("GET", "/api/v1/schools/{school_id}");
    (method, pattern) == school
        || kind
            .routes()
            .iter()
            .any(|&(m, p)| m == method && p == pattern)
}

/// Letters and digits nobody misreads on a screen across a kitchen (no 0/O/Q, 1/I/L, 5/S, 2/Z).
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPRTUVWXY346789";
pub const CODE_LENGTH: usize = 8;

/// A fresh pairing code, shown as `ABCD-EFGH`.
pub fn pairing_code() -> String {
    let mut code = String::with_capacity(CODE_LENGTH + 1);
    for i in 0..CODE_LENGTH {
        if i == CODE_LENGTH / 2 {
            code.push('-');
        }
        let pick = rand::random_range(0..CODE_ALPHABET.len());
        code.push(char::from(CODE_ALPHABET[pick]));
    }
    code
}

/// A code as typed (any case, spaces and dashes ignored), if it can be one.
pub fn normalise_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = code.len() == CODE_LENGTH && code.bytes().all(|b| CODE_ALPHABET.contains(&b));
    valid.then_some(code)
}

/// What the database keeps of a code (normalised) or a pairing secret.
pub fn code_hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// Screens' settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScreensConfig {
    /// How long a screen's access token lasts; the page renews it well before.
    pub access_token_ttl_secs: i64,
    /// How long a pairing code may wait to be entered.
    pub pairing_code_ttl_secs: i64,
}

impl Default for ScreensConfig {
    fn default() -> ScreensConfig {
        ScreensConfig {
            access_token_ttl_secs: 15 * 60,
            pairing_code_ttl_secs: 10 * 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_whatever_the_typing() {
        for _ in 0..100 {
            let code = pairing_code();
            assert_eq!(code.len(), CODE_LENGTH + 1);
            let typed = code.to_lowercase().replace('-', " ");
            assert_eq!(normalise_code(&typed), Some(code.replace('-', "")));
        }
        assert_eq!(normalise_code("ABCD-EFG"), None);
        assert_eq!(
            normalise_code("ABCD-EFG0"),
            None,
            "0 is not in the alphabet"
        );
        assert_eq!(
            normalise_code("ABCD-EFGI"),
            None,
            "I is not in the alphabet"
        );
    }

    #[test]
    fn a_board_screen_calls_almost_nothing() {
        let summary = "/api/v1/schools/{school_id}/kitchen/summary";
        assert!(screen_may_call(ScreenKind::Kitchen, "GET", summary));
        assert!(screen_may_call(ScreenKind::Expo, "GET", summary));
        assert!(!screen_may_call(ScreenKind::Station, "GET", summary));
        assert!(!screen_may_call(ScreenKind::Board, "GET", summary));
        let place = "/api/v1/schools/{school_id}/orders";
        assert!(!screen_may_call(ScreenKind::Kitchen, "POST", place));
        let cancel = "/api/v1/orders/{order_id}/cancel";
        assert!(!screen_may_call(ScreenKind::Kitchen, "POST", cancel));
        let done = "/api/v1/orders/{order_id}/items/{line}/done";
        assert!(screen_may_call(ScreenKind::Station, "POST", done));
        assert!(!screen_may_call(ScreenKind::Board, "POST", done));
        let bump = "/api/v1/orders/{order_id}/bump";
        assert!(screen_may_call(ScreenKind::Expo, "POST", bump));
        assert!(!screen_may_call(ScreenKind::Station, "POST", bump));
        let school = "/api/v1/schools/{school_id}";
        assert!(screen_may_call(ScreenKind::Board, "GET", school));
    }
}
