//! Configuration from the environment, and the one place clients are built from it.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::Grouping;
use crate::auth::{AuthConfig, Verifier};
use crate::cursor::CursorCodec;
use crate::fanout::{Fanout, FanoutSettings};
use crate::http::App;
use crate::queue::embedded::EmbeddedQueue;
#[cfg(feature = "aws")]
use crate::queue::sqs::{SqsConfig, SqsQueue};
use crate::queue::Queue;
use crate::settings::Env;
#[cfg(feature = "aws")]
use crate::store::cassandra::{self, CassandraConfig, CassandraStore};
use crate::store::sqlite::{SqliteDb, SqliteStore};
use crate::store::Store;

/// A development secret so a fresh checkout works; deployments set `FEEDS_CURSOR_SECRET`.
const DEV_CURSOR_SECRET: &str = "development cursor secret: set FEEDS_CURSOR_SECRET";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Cassandra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Embedded,
    Sqs,
}

pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses an environment variable, naming it when its value does not parse.
pub fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e| ConfigError(format!("{name}={v:?} does not parse: {e}"))),
    }
}

/// The backends in use; a process builds them once.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    /// Set when the queue is the embedded one, which the standalone server works in-process.
    pub embedded_queue: Option<EmbeddedQueue>,
    /// Set when the queue is SQS, which the standalone server polls in-process.
    #[cfg(feature = "aws")]
    pub sqs_queue: Option<SqsQueue>,
    pub fanout: Fanout,
}

/// Builds store and queue. `default_store`/`default_queue` apply when `FEEDS_STORE`/`FEEDS_QUEUE` are unset.
pub async fn backends(
    default_store: StoreKind,
    default_queue: QueueKind,
) -> Result<Backends, ConfigError> {
    let store_kind = match env("FEEDS_STORE").as_deref() {
        None => default_store,
        Some("sqlite") => StoreKind::Sqlite,
        Some("cassandra") | Some("keyspaces") => StoreKind::Cassandra,
        Some(other) => {
            return Err(ConfigError(format!(
                "FEEDS_STORE={other:?}: expected sqlite or cassandra"
            )))
        }
    };
    let queue_kind = match env("FEEDS_QUEUE").as_deref() {
        None => default_queue,
        Some("embedded") => QueueKind::Embedded,
        Some("sqs") => QueueKind::Sqs,
        Some(other) => {
            return Err(ConfigError(format!(
                "FEEDS_QUEUE={other:?}: expected embedded or sqs"
            )))
        }
    };
    let mut sqlite: Option<SqliteDb> = None;
    let mut open_sqlite = || -> Result<SqliteDb, ConfigError> {
        if let Some(db) = &sqlite {
            return Ok(db.clone());
        }
        let path = env("FEEDS_SQLITE_PATH").unwrap_or_else(|| "feeds.db".to_owned());
        let db = SqliteDb::open(&path).map_err(|e| ConfigError(e.to_string()))?;
        sqlite = Some(db.clone());
        Ok(db)
    };
    let store: Arc<dyn Store> = match store_kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::new(open_sqlite()?)),
        #[cfg(feature = "aws")]
        StoreKind::Cassandra => {
            let cfg = CassandraConfig::from_env().map_err(|e| ConfigError(e.to_string()))?;
            let session = cassandra::connect(&cfg)
                .await
                .map_err(|e| ConfigError(format!("cannot connect to Cassandra: {e}")))?;
            let session = Arc::new(session);
            if env_parse("FEEDS_CASSANDRA_MIGRATE", false)? {
                cassandra::migrate(&session, &cfg)
                    .await
                    .map_err(|e| ConfigError(format!("migration failed: {e}")))?;
            }
            Arc::new(
                CassandraStore::new(session, &cfg)
                    .await
                    .map_err(|e| ConfigError(e.to_string()))?,
            )
        }
        #[cfg(not(feature = "aws"))]
        StoreKind::Cassandra => {
            return Err(ConfigError(
                "FEEDS_STORE=cassandra: this build has no Cassandra support (feature `aws`)"
                    .to_owned(),
            ))
        }
    };
    #[cfg(feature = "aws")]
    let mut sqs_queue = None;
    let (queue, embedded_queue): (Arc<dyn Queue>, _) = match queue_kind {
        QueueKind::Embedded => {
            let visibility = Duration::from_secs(env_parse("FEEDS_QUEUE_VISIBILITY_SECS", 30)?);
            let max_receives = env_parse("FEEDS_QUEUE_MAX_RECEIVES", 5)?;
            let q = EmbeddedQueue::new(open_sqlite()?, visibility, max_receives)
                .await
                .map_err(|e| ConfigError(e.to_string()))?;
            (Arc::new(q.clone()), Some(q))
        }
        #[cfg(feature = "aws")]
        QueueKind::Sqs => {
            let cfg = SqsConfig::from_env().map_err(ConfigError)?;
            let q = SqsQueue::from_config(&cfg).await;
            sqs_queue = Some(q.clone());
            (Arc::new(q), None)
        }
        #[cfg(not(feature = "aws"))]
        QueueKind::Sqs => {
            return Err(ConfigError(
                "FEEDS_QUEUE=sqs: this build has no SQS support (feature `aws`)".to_owned(),
            ))
        }
    };
    let settings = FanoutSettings {
        chunk_size: env_parse(
            "FEEDS_FANOUT_CHUNK_SIZE",
            FanoutSettings::default().chunk_size,
        )?
        .max(1),
        backfill_limit: env_parse(
            "FEEDS_BACKFILL_LIMIT",
            FanoutSettings::default().backfill_limit,
        )?,
    };
    let fanout = Fanout::new(store.clone(), queue.clone(), settings);
    Ok(Backends {
        store,
        queue,
        embedded_queue,
        #[cfg(feature = "aws")]
        sqs_queue,
        fanout,
    })
}

/// The HTTP application over the given backends.
pub fn app(backends: &Backends) -> Result<App, ConfigError> {
    let auth = AuthConfig::read(&Env::process()).map_err(|e| ConfigError(e.to_string()))?;
    let verifier = Verifier::new(&auth).map_err(|e| ConfigError(e.to_string()))?;
    let secret = env("FEEDS_CURSOR_SECRET").unwrap_or_else(|| {
        tracing::warn!("FEEDS_CURSOR_SECRET is not set: using the development cursor secret");
        DEV_CURSOR_SECRET.to_owned()
    });
    let grouping: Grouping = env_parse("FEEDS_AGGREGATE_BY", Grouping::VerbDay)?;
    Ok(App {
        store: backends.store.clone(),
        queue: backends.queue.clone(),
        verifier: Arc::new(verifier),
        cursors: CursorCodec::new(secret.as_bytes()),
        grouping,
    })
}

/// Structured logs: JSON (for CloudWatch and log pipelines) unless standard error is a terminal;
/// `FEEDS_LOG_FORMAT=json|text` decides otherwise. `RUST_LOG` filters.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let text = match env("FEEDS_LOG_FORMAT").as_deref() {
        Some("text") => true,
        Some(_) => false,
        None => std::io::stderr().is_terminal(),
    };
    // Lambda stamps every line itself.
    let in_lambda = env("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let _ = match (text, in_lambda) {
        (true, _) => builder.try_init(),
        (false, true) => builder
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .without_time()
            .try_init(),
        (false, false) => builder
            .json()
            .with_current_span(true)
            .flatten_event(true)
            .try_init(),
    };
}
