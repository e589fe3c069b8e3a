//! `tiffin`: run the hub, migrate, seed the demo school, or mint a token.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tiffin::auth::JwtKeys;
use tiffin::config::{Config, MAX_ACCESS_TOKEN_TTL_SECS};
use tiffin::server;
use tiffin_actors::domain::Role;
use tracing_subscriber::EnvFilter;

/// Requests and frames allocate and free small buffers across worker threads: glibc's malloc
/// was about 10% of the HTTP path's CPU. Built without transparent huge pages, which made
/// idle sockets half as costly again (BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tiffin",
    version,
    about = "Real-time dispatch and notification hub for school kitchens"
)]
struct Cli {
    /// TOML configuration file; every setting also has a TIFFIN_* environment variable.
    #[arg(long, global = true, env = "TIFFIN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Seed the demo school (if absent) and print its sign-ins.
    Demo,
    /// Set a new random password for a sign-in (email or phone) and print it.
    Password {
        /// The person's email or phone number.
        login: String,
    },
    /// Import a district's roster (OneRoster 1.1 or 1.2 CSV bundle).
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
    /// Print a signed access token for the configured secret.
    Token {
        /// student, guardian, teacher, kitchen_staff, school_admin or admin.
        #[arg(long)]
        role: String,
        /// The school the token is valid for (not needed for admin).
        #[arg(long)]
        school: Option<String>,
        /// The user id (a UUID) the token names; an admin token without one names the operator.
        #[arg(long)]
        user: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 900, allow_negative_numbers = true)]
        ttl: i64,
    },
}

#[derive(Subcommand)]
enum RosterCommand {
    /// Import a bundle: a folder or a .zip of manifest.csv, orgs.csv, users.csv (roles.csv in
    /// 1.2), and Tiffin's cards.csv and allergies.csv. All or nothing.
    Import {
        /// The bundle: a folder or a .zip.
        path: PathBuf,
        /// Count what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this school (its id or sourcedId), imported before.
        #[arg(long)]
        school: Option<String>,
        /// Time zone of schools the bundle creates (OneRoster has none).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// Country whose numbering plan reads phone numbers of new schools written without +.
        #[arg(long, default_value = "US")]
        phone_region: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiffin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref()).map_err(anyhow::Error::msg)?;
    init_logs(&config);
    match cli.command.unwrap_or(Command::Serve { bind: None }) {
        Command::Serve { bind } => {
            if let Some(bind) = bind {
                config.bind = bind;
            }
            server::serve(config).await
        }
        Command::Migrate => {
            server::prepare_database(&config).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Demo => {
            let (_, db) = server::prepare_database(&config).await?;
            match server::ensure_demo(&db).await? {
                Some(demo) if demo.fresh => {
                    println!("Demo school: {}", demo.school_id);
                    server::print_sign_ins(&mut std::io::stdout().lock(), &demo.sign_ins)?;
                }
                Some(demo) => println!(
                    "Demo school: {} (seeded before; `tiffin password LOGIN` sets a new password)",
                    demo.school_id
                ),
                None => println!("the database already has schools; no demo seeded"),
            }
            Ok(())
        }
        Command::Password { login } => {
            let (_, db) = server::prepare_database(&config).await?;
            let login = login.trim().to_lowercase();
            let user = tiffin::store::people::user_by_login(&db, &login)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no one signs in as {login}"))?;
            let password = tiffin::seed::random_password();
            let hash = tiffin::auth::passwords::hash_password(password.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            tiffin::store::people::set_password(&db, &user.id, &hash).await?;
            println!("{password}");
            Ok(())
        }
        Command::Roster {
            command:
                RosterCommand::Import {
                    path,
                    dry_run,
                    school,
                    time_zone,
                    phone_region,
                    json,
                },
        } => {
            let (_, db) = server::prepare_database(&config).await?;
            let options = tiffin::roster::Options {
                dry_run,
                school,
                time_zone,
                phone_region,
            };
            tiffin::roster::cli::import(&db, &path, &options, json).await
        }
        Command::Token {
            role,
            school,
            user,
            ttl,
        } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role {role}"))?;
            if role != Role::Admin && school.is_none() {
                anyhow::bail!("--school is required for role {role}");
            }
            let uuid = |what: &str, v: &str| {
                uuid::Uuid::parse_str(v)
                    .map(|_| ())
                    .map_err(|_| anyhow::anyhow!("--{what} must be a UUID, got {v:?}"))
            };
            if let Some(school) = &school {
                uuid("school", school)?;
            }
            match &user {
                Some(user) => uuid("user", user)?,
                None if role == Role::Admin => {}
                None => anyhow::bail!("--user is required for role {role}"),
            }
            // As long as a signed-in token may live; negative: already expired (for tests).
            if ttl == 0 || ttl.abs() > MAX_ACCESS_TOKEN_TTL_SECS {
                anyhow::bail!(
                    "--ttl must be 1 to {MAX_ACCESS_TOKEN_TTL_SECS} seconds (negative: already expired), got {ttl}"
                );
            }
            let user = user.unwrap_or_else(|| tiffin::auth::OPERATOR.to_owned());
            let url =
                tiffin::db::DatabaseUrl::parse(&config.database_url).map_err(anyhow::Error::msg)?;
            let keys = JwtKeys::new(&server::jwt_secret(&config, &url)?);
            let token = keys
                .issue(&user, role, school.as_deref(), ttl)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            println!("{token}");
            Ok(())
        }
    }
}
