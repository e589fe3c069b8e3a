//! A Firebase service account for the hub whose key is the test key in tests/fixtures (it
//! grants nothing) and whose token endpoint is a loopback server.

use std::path::{Path, PathBuf};

/// The private half of the test key (tests/fixtures/README.md says where it came from).
pub const TEST_KEY_PEM: &str = include_str!("../../fixtures/fcm-test-key.pem");

/// Writes `fcm-service-account.json` into `dir`, as the Firebase console hands one out, for
/// `project_id` with its token endpoint at `token_uri`; returns its path.
pub fn write_service_account(
    dir: &Path,
    project_id: &str,
    client_email: &str,
    token_uri: &str,
) -> std::io::Result<PathBuf> {
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "test",
        "private_key": TEST_KEY_PEM,
        "client_email": client_email,
        "client_id": "1",
        "token_uri": token_uri,
    });
    let path = dir.join("fcm-service-account.json");
    std::fs::write(&path, account.to_string())?;
    Ok(path)
}
