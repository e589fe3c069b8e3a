//! The people a run seeds: signing them in, and phone numbers the hub accepts, unique per
//! run.

use crate::hub::{Target, call, client, created};
use anyhow::{Context, bail};
use awc::Client;
use serde_json::json;

/// A person's tokens from `POST /auth/login`.
pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// Signs `login` in over `client`.
pub async fn sign_in(
    client: &Client,
    url: &str,
    login: &str,
    password: &str,
) -> anyhow::Result<Tokens> {
    let (status, body) = call(
        client.post(format!("{url}/api/v1/auth/login")),
        &json!({"login": login, "password": password}),
    )
    .await?;
    if status != 200 {
        bail!("signing in {login}: {status} {body}");
    }
    let token = |k: &str| body[k].as_str().map(str::to_owned).context("tokens");
    Ok(Tokens {
        access: token("access_token")?,
        refresh: token("refresh_token")?,
    })
}

/// A member of a school's kitchen staff, created by the admin and signed in: their access
/// token.
pub async fn kitchen_staff(
    target: &Target,
    school: &str,
    display_name: &str,
    (login, password): (&str, &str),
) -> anyhow::Result<String> {
    let c = client();
    created(
        c.post(format!("{}/api/v1/schools/{school}/users", target.url))
            .bearer_auth(&target.admin_token),
        json!({"role": "kitchen_staff", "display_name": display_name, "email": login, "password": password}),
    )
    .await?;
    Ok(sign_in(&c, &target.url, login, password)
        .await
        .context("staff token")?
        .access)
}

/// Keeps one run's phone numbers apart from an earlier run's on the same hub (numbers are
/// unique): from the run's id, a hex string.
pub fn phone_salt(run_id: &str) -> u32 {
    u32::from_str_radix(&run_id[..4], 16).unwrap_or_default() % 1000
}

/// A US number the hub's numbering plan accepts (a real area code, an exchange of 200-999),
/// unique per person `n` of a run; `salt` keeps runs on one hub apart.
pub fn phone_number(salt: u32, n: usize) -> String {
    const AREAS: [u16; 10] = [201, 202, 203, 205, 206, 207, 208, 209, 210, 212];
    let salt = salt as usize;
    let exchange = 200 + (salt / 10 * 7 + n / 10_000) % 800;
    format!("+1{}{exchange}{:04}", AREAS[salt % 10], n % 10_000)
}
