//! The standalone feeds server: the same HTTP API and fan-out as the Lambda functions, in one
//! process, on the embedded SQLite store by default or on Cassandra and SQS.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use feeds::config::{self, Backends, Defaults};
use feeds::http::{router, Routes};
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig};
use feeds::BoxError;
use tokio::sync::watch;

mod admin;
mod local_trigger;
mod realtime;

#[derive(Parser)]
#[command(
    name = "feeds-server",
    version,
    about = "Activity feeds over HTTP, with fan-out on write"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default command).
    Serve {
        /// Address to listen on [default: FEEDS_BIND, or 127.0.0.1:3000].
        #[arg(long)]
        bind: Option<String>,
    },
    /// Create the Cassandra keyspace and tables (idempotent).
    Migrate,
    /// Print a signed token for a user, for local use.
    MintToken {
        /// The user the token acts for (`sub`).
        sub: String,
        /// Add the `feeds:admin` scope: a service that may act for any user.
        #[arg(long)]
        admin: bool,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
        /// Expiry as an RFC 3339 time, instead of `--hours`.
        #[arg(long)]
        expires: Option<String>,
        /// PEM private key to sign with; the committed development key by default.
        #[arg(long, env = "FEEDS_JWT_PRIVATE_KEY_FILE")]
        key: Option<std::path::PathBuf>,
        #[arg(long, env = "FEEDS_JWT_ISSUER")]
        issuer: Option<String>,
        #[arg(long, env = "FEEDS_JWT_AUDIENCE")]
        audience: Option<String>,
    },
    /// The operator's tools, on the store and queue the settings name (as `serve` reads them).
    #[command(subcommand)]
    Admin(admin::Admin),
    /// Stand in for Lambda's SQS trigger: poll the fan-out queue (FEEDS_QUEUE_URL) and invoke the
    /// fan-out function through a local Lambda Invoke API, as template.yaml maps them.
    LocalTrigger(local_trigger::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve { bind: None }) {
        Command::Serve { bind } => serve(bind).await,
        Command::Migrate => migrate().await,
        Command::MintToken {
            sub,
            admin,
            hours,
            expires,
            key,
            issuer,
            audience,
        } => mint(&sub, admin, hours, expires, key, issuer, audience),
        Command::Admin(command) => admin::run(command).await,
        Command::LocalTrigger(args) => local_trigger::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feeds-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(bind: Option<String>) -> Result<(), BoxError> {
    let settings = config::start(Defaults::EMBEDDED)?;
    let mut backends = Backends::open(&settings).await?;
    let hub = std::sync::Arc::new(realtime::Hub::default());
    backends.fanout = backends.fanout.clone().with_realtime(hub.clone());
    let app = config::app(&settings, &backends)?;
    let verifier = app.verifier.clone();
    let realtime = realtime::router(hub, verifier, backends.store.clone());
    let app = router(app, Routes::All).merge(realtime);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let worker = {
        let (fanout, consumer) = (backends.fanout.clone(), backends.consumer.clone());
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            fanout.work(consumer.as_ref(), stopped).await
        })
    };
    let bind = bind.unwrap_or_else(|| settings.bind.clone());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    tracing::info!(address = %listener.local_addr()?, "feeds server listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal(settings.exit_on_stdin_eof).await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        })
        .await?;
    worker.await?;
    Ok(())
}

/// Ctrl-C, SIGTERM, or (with `FEEDS_EXIT_ON_STDIN_EOF=1`, for supervisors and tests) the end of
/// standard input, so the server never outlives the process that started it.
async fn shutdown_signal(exit_on_stdin_eof: bool) {
    let stdin_closed = async {
        if exit_on_stdin_eof {
            // A plain thread: a blocking task would hold up the runtime's shutdown.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = tx.send(());
            });
            let _ = rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stdin_closed);
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
            _ = &mut stdin_closed => {},
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = ctrl_c => {},
        _ = &mut stdin_closed => {},
    }
}

async fn migrate() -> Result<(), BoxError> {
    let env = Env::process();
    config::init_tracing(&config::LogSettings::read(&env)?);
    let cfg = CassandraConfig::read(&env)?;
    let session = cassandra::connect(&cfg).await?;
    cassandra::migrate(&session, &cfg).await?;
    tracing::info!(keyspace = %cfg.keyspace, "schema is up to date");
    Ok(())
}

fn mint(
    sub: &str,
    admin: bool,
    hours: i64,
    expires: Option<String>,
    key: Option<std::path::PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
) -> Result<(), BoxError> {
    let expires_at = match expires {
        Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .map_err(|e| format!("--expires {text:?}: {e}"))?
            .to_utc(),
        None => chrono::Utc::now() + chrono::Duration::hours(hours),
    };
    let pem = match key {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => feeds::auth::DEV_PRIVATE_KEY_PEM.to_owned(),
    };
    let scopes: &[&str] = if admin { &["feeds:admin"] } else { &[] };
    let token = feeds::auth::mint_token(
        &pem,
        sub,
        scopes,
        expires_at,
        issuer.as_deref(),
        audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}
