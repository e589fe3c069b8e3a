//! The hub under load: one given by URL, or one the tool starts on a database of its own;
//! and the requests the rush sends it.

use anyhow::{Context, bail};
use awc::Client;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tiffin_harness::hub::HubProcess;
pub use tiffin_harness::hub::announced;
use tiffin_harness::reader;

pub struct Target {
    pub url: String,
    pub admin_token: String,
    pub pid: Option<u32>,
}

/// Refuses anything but a loopback address: the tool never loads someone else's server.
pub fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must be http://127.0.0.1:PORT (loopback only)")?;
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    if !["127.0.0.1", "localhost", "[::1]"].contains(&host) {
        bail!("--url must point at this machine (127.0.0.1, localhost or [::1]), not {host}");
    }
    Ok(())
}

/// The database of a hub the tool starts.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A hub the tool started on `backend`; on PostgreSQL a scratch database on `server` (its
/// maintenance database), empty or a copy of a template, which [`OwnHub::stop`] drops.
pub struct OwnHub {
    pub started: StartedHub,
    database: Option<(String, String)>,
}

impl OwnHub {
    pub async fn start(
        bin: &Path,
        backend: Backend,
        (server, template): (&str, Option<&str>),
        mut env: Vec<(String, String)>,
    ) -> anyhow::Result<OwnHub> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let name = format!("tiffin_load_hub_{}", uuid::Uuid::new_v4().simple());
                crate::raw::copy_database(server, &name, template).await?;
                env.push((
                    "TIFFIN_DATABASE_URL".to_owned(),
                    crate::raw::database_url(server, &name),
                ));
                // On PostgreSQL the hub wants its signing key given, not made per process.
                env.push((
                    "TIFFIN_JWT_SECRET".to_owned(),
                    format!("load-{}", uuid::Uuid::new_v4().simple()),
                ));
                Some((server.to_owned(), name))
            }
        };
        match StartedHub::start(bin, env) {
            Ok(started) => Ok(OwnHub { started, database }),
            Err(e) => {
                if let Some((server, name)) = database {
                    let _ = crate::raw::drop_database(&server, &name).await;
                }
                Err(e)
            }
        }
    }

    /// A hub already started on its own SQLite file.
    pub fn sqlite(started: StartedHub) -> OwnHub {
        OwnHub {
            started,
            database: None,
        }
    }

    /// Stops the hub, then drops its scratch database.
    pub async fn stop(self) {
        drop(self.started);
        if let Some((server, name)) = self.database
            && let Err(e) = crate::raw::drop_database(&server, &name).await
        {
            eprintln!("tiffin-load: could not drop {name}: {e:#}");
        }
    }
}

/// A hub the tool started, stopped when dropped.
pub struct StartedHub {
    process: HubProcess,
    dir: PathBuf,
    url: String,
    token: String,
    /// Its `TIFFIN_DATABASE_URL`.
    database_url: String,
}

impl StartedHub {
    pub fn start(bin: &Path, extra_env: Vec<(String, String)>) -> anyhow::Result<StartedHub> {
        if !bin.exists() {
            bail!(
                "no hub binary at {} (cargo build --release, or give --hub-bin or --url)",
                bin.display()
            );
        }
        // The hub runs in a directory of its own: a relative path would be looked up there.
        let bin = std::fs::canonicalize(bin)?;
        let dir =
            std::env::temp_dir().join(format!("tiffin-load-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut env = hub_env(&dir);
        env.extend(extra_env);
        // The last one given is the one the hub sees.
        let database_url = env
            .iter()
            .rev()
            .find(|(k, _)| k == "TIFFIN_DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut command = Command::new(&bin);
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir);
        let process = HubProcess::serve(command, "127.0.0.1:0", Stdio::inherit(), Arc::default())?;
        let url = process.url().to_owned();
        let out = Command::new(&bin)
            .args(["token", "--role", "admin", "--ttl", "86400"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "tiffin token: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(StartedHub {
            process,
            dir,
            url,
            token,
            database_url,
        })
    }

    /// Its database (`sqlite://PATH` or `postgres://...`), for reading what it committed.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            admin_token: self.token.clone(),
            pid: Some(self.process.pid()),
        }
    }
}

/// A fresh SQLite hub with the per-client limits off: every simulated client and reader
/// comes from this one address, far faster than real ones.
fn hub_env(dir: &Path) -> Vec<(String, String)> {
    [
        (
            "TIFFIN_DATABASE_URL",
            format!("sqlite://{}", dir.join("load.db").display()),
        ),
        ("TIFFIN_SEED_DEMO", "false".into()),
        ("TIFFIN_LIMITS__PER_IP__PER_MINUTE", "0".into()),
        ("TIFFIN_LIMITS__PER_USER__PER_MINUTE", "0".into()),
        ("TIFFIN_LIMITS__PER_READER__PER_MINUTE", "0".into()),
        // Seeded sign-ins last the run: district profiles outlast the 15-minute default.
        ("TIFFIN_ACCESS_TOKEN_TTL_SECS", (24 * 3600).to_string()),
        // A lunch rush, not an evening: a digest queued mid-run (a run at the schools' evening)
        // would be an email that no order of the run accounts for.
        ("TIFFIN_DIGEST__ENABLED", "false".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Drop for StartedHub {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A school in `time_zone` with one meal on its menu: (school id, meal id).
pub async fn school_with_meal(
    target: &Target,
    name: String,
    time_zone: &str,
    meal: (&str, i64),
) -> anyhow::Result<(String, String)> {
    let c = client();
    let school = created(
        c.post(format!("{}/api/v1/schools", target.url))
            .bearer_auth(&target.admin_token),
        serde_json::json!({"name": name, "time_zone": time_zone}),
    )
    .await
    .context("creating a school (is the admin token right?)")?;
    let id = school["id"].as_str().context("school id")?.to_owned();
    let meal_id = add_meal(target, &id, meal).await?;
    Ok((id, meal_id))
}

/// Puts a meal (name, price in cents) on the school's menu: its id.
pub async fn add_meal(
    target: &Target,
    school_id: &str,
    meal: (&str, i64),
) -> anyhow::Result<String> {
    let made = created(
        client()
            .post(format!("{}/api/v1/schools/{school_id}/meals", target.url))
            .bearer_auth(&target.admin_token),
        serde_json::json!({"name": meal.0, "price_cents": meal.1}),
    )
    .await?;
    Ok(made["id"].as_str().context("meal id")?.to_owned())
}

/// A read the set-up needs, as the admin: its JSON body.
pub async fn admin_get(target: &Target, path: &str) -> anyhow::Result<Value> {
    let sent = client()
        .get(format!("{}{path}", target.url))
        .bearer_auth(&target.admin_token)
        .send()
        .await;
    let (status, value) = reply(sent).await?;
    if status != 200 {
        bail!("GET {path} failed with {status}: {value}");
    }
    Ok(value)
}

/// Opens counter 1 of the school: its id.
pub async fn open_counter(target: &Target, school_id: &str) -> anyhow::Result<String> {
    let counter = created(
        client()
            .post(format!(
                "{}/api/v1/schools/{school_id}/counters",
                target.url
            ))
            .bearer_auth(&target.admin_token),
        serde_json::json!({"number": 1, "is_open": true}),
    )
    .await?;
    Ok(counter["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("counter id"))?
        .to_owned())
}

/// Adds a reader at the counter: its (id, secret), as a reader signs with.
pub async fn add_reader(
    target: &Target,
    school_id: &str,
    counter_id: &str,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let reader = created(
        client()
            .post(format!("{}/api/v1/schools/{school_id}/readers", target.url))
            .bearer_auth(&target.admin_token),
        serde_json::json!({"name": name, "counter_id": counter_id}),
    )
    .await?;
    let field = |name: &str| {
        reader[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("reader {name}"))
    };
    Ok((field("id")?, field("secret")?))
}

pub fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).finish()
}

/// A client whose at most `connections` connections stay open between requests (a device
/// that keeps its connection, not one a request).
pub fn kept_alive_client(connections: usize) -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().limit(connections))
        .finish()
}

/// A response's status and JSON body (null if it has none).
pub async fn reply<S>(
    sent: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
) -> anyhow::Result<(u16, Value)>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let mut res = sent.map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = res
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

pub async fn call(req: awc::ClientRequest, body: &Value) -> anyhow::Result<(u16, Value)> {
    reply(req.send_json(body).await).await
}

/// A set-up request that must succeed.
pub async fn created(req: awc::ClientRequest, body: Value) -> anyhow::Result<Value> {
    let (status, value) = call(req, &body).await?;
    if status != 201 && status != 200 {
        bail!("set-up request failed with {status}: {value}");
    }
    Ok(value)
}

/// The error code of a refusal, or the transport failure.
pub fn code_of(outcome: &anyhow::Result<(u16, Value)>) -> String {
    match outcome {
        Ok((status, body)) => format!(
            "{status} {}",
            body["error"]["code"].as_str().unwrap_or("unknown")
        ),
        Err(e) => format!("transport: {e}"),
    }
}

/// A signed reader request: hex HMAC-SHA256 of `{ms}\n{METHOD}\n{path}\n{body}`.
pub async fn reader_post(
    url: &str,
    reader: &(String, String),
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    reader_post_on(&client(), url, reader, path, body).await
}

/// [`reader_post`] over a client of the caller's (its pooled connections).
pub async fn reader_post_on(
    client: &Client,
    url: &str,
    reader: &(String, String),
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let body = body.to_string();
    let timestamp = chrono::Utc::now().timestamp_millis();
    let signature = reader::signature(&reader.1, timestamp, path, body.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = format!("{url}{path}");
    let sent = reader::signed_request(client, &url, &reader.0, timestamp, &signature)
        .send_body(body)
        .await;
    reply(sent).await
}

/// The hub's CPU seconds so far and its peak resident memory in MiB (Linux /proc).
pub fn usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime 13th.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let peak_kib = memory_kib(pid, "VmHWM")?;
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, peak_kib / 1024.0))
}

/// A memory figure of a process from /proc/<pid>/status, in KiB (`VmRSS`: now; `VmHWM`: peak).
pub fn memory_kib(pid: u32, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What the hub's operations have cost the database so far, per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trips {
    pub statements: f64,
    pub round_trips: f64,
    pub operations: f64,
}

/// The hub's statement and round-trip counts so far, per operation, read from
/// `db_statements_total`, `db_round_trips_total` and `db_operations_total` in `/metrics`.
/// Empty if the hub does not say.
pub async fn round_trips(url: &str) -> std::collections::BTreeMap<String, Trips> {
    parse_round_trips(&metrics_page(url).await)
}

/// The hub's `/metrics` page; empty if it does not answer.
pub async fn metrics_page(url: &str) -> String {
    let Ok(mut response) = client().get(format!("{url}/metrics")).send().await else {
        return String::new();
    };
    match response.body().limit(8 << 20).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(_) => String::new(),
    }
}

/// A metric's value on a `/metrics` page, by its full name with labels.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The statement, round-trip and operation counts of a Prometheus text page, per `op` label.
fn parse_round_trips(page: &str) -> std::collections::BTreeMap<String, Trips> {
    let mut counts = std::collections::BTreeMap::new();
    for line in page.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (field, labels): (fn(&mut Trips) -> &mut f64, _) = match name.split_once('{') {
            Some(("db_statements_total", labels)) => (|t| &mut t.statements, labels),
            Some(("db_round_trips_total", labels)) => (|t| &mut t.round_trips, labels),
            Some(("db_operations_total", labels)) => (|t| &mut t.operations, labels),
            _ => continue,
        };
        let Some(op) = labels
            .strip_prefix("op=\"")
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        *field(counts.entry(op.to_owned()).or_default()) = value;
    }
    counts
}

/// Statements and round trips per operation between two readings of [`round_trips`], as the
/// report shows them.
pub fn round_trips_between(
    before: &std::collections::BTreeMap<String, Trips>,
    after: &std::collections::BTreeMap<String, Trips>,
) -> Value {
    let per_op: serde_json::Map<String, Value> = after
        .iter()
        .filter_map(|(op, now)| {
            let then = before.get(op).copied().unwrap_or_default();
            let ops = now.operations - then.operations;
            (ops > 0.0).then(|| {
                (
                    op.clone(),
                    serde_json::json!({
                        "operations": ops,
                        "statements_per_operation": (now.statements - then.statements) / ops,
                        "round_trips_per_operation": (now.round_trips - then.round_trips) / ops,
                    }),
                )
            })
        })
        .collect();
    Value::Object(per_op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(ensure_loopback("http://127.0.0.1:8080").is_ok());
        assert!(ensure_loopback("http://localhost:80/").is_ok());
        assert!(ensure_loopback("http://[::1]:8080").is_ok());
        assert!(ensure_loopback("http://10.0.0.5:8080").is_err());
        assert!(ensure_loopback("http://example.com").is_err());
        assert!(ensure_loopback("https://127.0.0.1:8080").is_err());
    }

    #[test]
    fn reads_this_process_usage() {
        let (cpu, rss) = usage(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 1.0, "{cpu} {rss}");
    }

    #[test]
    fn statements_per_operation_between_two_scrapes() {
        let page = |order_sum: f64, order_count: f64| {
            format!(
                "# TYPE db_statements_total counter\n\
                 db_statements_total{{op=\"order\"}} {order_sum}\n\
                 db_round_trips_total{{op=\"order\"}} {}\n\
                 db_operations_total{{op=\"order\"}} {order_count}\n\
                 db_statements_total{{op=\"scan\"}} 40\n\
                 db_operations_total{{op=\"scan\"}} 4\n\
                 http_requests_total{{route=\"/\"}} 9\n",
                order_sum / 2.0
            )
        };
        let before = parse_round_trips(&page(10.0, 5.0));
        let order = Trips {
            statements: 10.0,
            round_trips: 5.0,
            operations: 5.0,
        };
        assert_eq!(before.get("order"), Some(&order));
        let after = parse_round_trips(&page(40.0, 105.0));
        let between = round_trips_between(&before, &after);
        assert_eq!(between["order"]["operations"], 100.0);
        assert_eq!(between["order"]["statements_per_operation"], 0.3);
        assert_eq!(between["order"]["round_trips_per_operation"], 0.15);
        // No scans between the two: not reported.
        assert!(between.get("scan").is_none(), "{between}");
    }
}
