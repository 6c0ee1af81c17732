//! The process's settings, read once from the environment into one typed [`Settings`], and the one
//! place the store, the queue, the fan-out, the service and the HTTP app are built from them.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthConfig, Verifier};
use crate::cursor::CursorCodec;
use crate::fanout::{Fanout, FanoutSettings};
use crate::http::App;
use crate::limits::{Limiter, RateSettings};
use crate::metrics::{self, MetricsSettings};
use crate::queue::embedded::EmbeddedQueue;
#[cfg(feature = "aws")]
use crate::queue::sqs::{SqsConfig, SqsQueue};
use crate::queue::{Consumer, Queue, QueueAdmin, QueueError};
use crate::service::Feeds;
pub use crate::settings::{Env, SettingsError};
#[cfg(feature = "aws")]
use crate::store::cassandra::{self, CassandraConfig, CassandraStore};
use crate::store::sqlite::{SqliteDb, SqliteStore};
use crate::store::{Store, StoreError};

/// A development secret so a fresh checkout works; deployments set `FEEDS_CURSOR_SECRET`.
const DEV_CURSOR_SECRET: &str = "development cursor secret: set FEEDS_CURSOR_SECRET";

/// Every setting of the process. Read once, at start-up, by [`Settings::read`].
pub struct Settings {
    pub store: StoreSettings,
    pub queue: QueueSettings,
    /// `FEEDS_SQLITE_PATH` (default `feeds.db`): the embedded store's file, which also holds the
    /// embedded queue.
    pub sqlite_path: String,
    pub fanout: FanoutSettings,
    pub rates: RateSettings,
    pub auth: AuthConfig,
    /// `FEEDS_CURSOR_SECRET`; `None`: the development secret, with a warning.
    pub cursor_secret: Option<String>,
    /// `FEEDS_BIND` (default `127.0.0.1:3000`): where the standalone server listens.
    pub bind: String,
    /// `FEEDS_EXIT_ON_STDIN_EOF`: the standalone server stops when its standard input closes.
    pub exit_on_stdin_eof: bool,
    /// `FEEDS_REALTIME_CALLBACK_URL`: the callback URL of the API Gateway WebSocket API's stage,
    /// which the fan-out function posts realtime messages to (feature `apigw`); unset, it pushes
    /// nothing. The standalone server pushes through its own connections instead.
    pub realtime_callback_url: Option<String>,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
}

/// Which store, and its settings.
pub enum StoreSettings {
    /// `FEEDS_STORE=sqlite`: the file of [`Settings::sqlite_path`].
    Sqlite,
    /// `FEEDS_STORE=cassandra` (or `keyspaces`); `FEEDS_CASSANDRA_MIGRATE=true` creates the schema
    /// at start-up.
    #[cfg(feature = "aws")]
    Cassandra {
        config: Box<CassandraConfig>,
        migrate: bool,
    },
}

/// Which queue, and its settings.
pub enum QueueSettings {
    /// `FEEDS_QUEUE=embedded`: `FEEDS_QUEUE_VISIBILITY_SECS` (default 30) and
    /// `FEEDS_QUEUE_MAX_RECEIVES` (default 5) before a message is dead-lettered.
    Embedded {
        visibility: Duration,
        max_receives: u32,
    },
    /// `FEEDS_QUEUE=sqs`.
    #[cfg(feature = "aws")]
    Sqs(SqsConfig),
}

/// How logs are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `FEEDS_LOG_FORMAT=json|text`, else JSON under Lambda's JSON log format
    /// (`AWS_LAMBDA_LOG_FORMAT=JSON`); `None`: text on a terminal, JSON elsewhere.
    pub text: Option<bool>,
    /// Running in Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set), which stamps each line itself.
    pub in_lambda: bool,
    /// The filter: `RUST_LOG`, else Lambda's application log level (`AWS_LAMBDA_LOG_LEVEL`, set
    /// by the function's `LoggingConfig`), else `info`.
    pub filter: String,
}

impl LogSettings {
    pub fn read(env: &Env) -> Result<Self, SettingsError> {
        let text = match env.get("FEEDS_LOG_FORMAT")?.as_deref() {
            Some("text") => Some(true),
            Some("json") => Some(false),
            Some(other) => {
                return Err(SettingsError::expected(
                    "FEEDS_LOG_FORMAT",
                    "json or text",
                    other,
                ))
            }
            None => env
                .get("AWS_LAMBDA_LOG_FORMAT")?
                .filter(|f| f.eq_ignore_ascii_case("json"))
                .map(|_| false),
        };
        let filter = match (env.get("RUST_LOG")?, env.get("AWS_LAMBDA_LOG_LEVEL")?) {
            (Some(filter), _) => filter,
            // Lambda's levels are tracing's, and FATAL: the worst there is.
            (None, Some(level)) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
            (None, Some(level)) => level.to_ascii_lowercase(),
            (None, None) => "info".to_owned(),
        };
        Ok(LogSettings {
            text,
            in_lambda: env.get("AWS_LAMBDA_FUNCTION_NAME")?.is_some(),
            filter,
        })
    }
}

/// The start of every process: logging first (so that reading the settings can warn), then the
/// settings, from the process environment, and the metrics they ask for.
pub fn start(defaults: Defaults) -> Result<Settings, SettingsError> {
    let env = Env::process();
    init_tracing(&LogSettings::read(&env)?);
    let settings = Settings::read(&env, defaults)?;
    metrics::init(&settings.metrics);
    Ok(settings)
}

/// The store and queue used when `FEEDS_STORE` / `FEEDS_QUEUE` are unset.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub cassandra: bool,
    pub sqs: bool,
}

impl Defaults {
    /// The standalone server: SQLite and the embedded queue.
    pub const EMBEDDED: Defaults = Defaults {
        cassandra: false,
        sqs: false,
    };
    /// The Lambda functions: Cassandra / Amazon Keyspaces and SQS.
    pub const AWS: Defaults = Defaults {
        cassandra: true,
        sqs: true,
    };
}

impl Settings {
    pub fn read(env: &Env, defaults: Defaults) -> Result<Self, SettingsError> {
        let cassandra = match env.get("FEEDS_STORE")?.as_deref() {
            None => defaults.cassandra,
            Some("sqlite") => false,
            Some("cassandra") | Some("keyspaces") => true,
            Some(other) => {
                return Err(SettingsError::expected(
                    "FEEDS_STORE",
                    "sqlite or cassandra",
                    other,
                ))
            }
        };
        let sqs = match env.get("FEEDS_QUEUE")?.as_deref() {
            None => defaults.sqs,
            Some("embedded") => false,
            Some("sqs") => true,
            Some(other) => {
                return Err(SettingsError::expected(
                    "FEEDS_QUEUE",
                    "embedded or sqs",
                    other,
                ))
            }
        };
        let store = match cassandra {
            false => StoreSettings::Sqlite,
            #[cfg(feature = "aws")]
            true => StoreSettings::Cassandra {
                config: Box::new(CassandraConfig::read(env)?),
                migrate: env.flag("FEEDS_CASSANDRA_MIGRATE")?.unwrap_or(false),
            },
            #[cfg(not(feature = "aws"))]
            true => {
                return Err(SettingsError::new(
                    "FEEDS_STORE",
                    "this build has no Cassandra support (feature `aws`)",
                ))
            }
        };
        let fanout_defaults = FanoutSettings::default();
        // The embedded queue's own limit; for SQS, its redrive policy's, which the fan-out must know.
        let max_receives = env.parse_or(
            "FEEDS_QUEUE_MAX_RECEIVES",
            "a whole number",
            fanout_defaults.max_receives,
        )?;
        let queue = match sqs {
            false => QueueSettings::Embedded {
                visibility: Duration::from_secs(env.parse_or(
                    "FEEDS_QUEUE_VISIBILITY_SECS",
                    "whole seconds",
                    30,
                )?),
                max_receives,
            },
            #[cfg(feature = "aws")]
            true => QueueSettings::Sqs(SqsConfig::read(env)?),
            #[cfg(not(feature = "aws"))]
            true => {
                return Err(SettingsError::new(
                    "FEEDS_QUEUE",
                    "this build has no SQS support (feature `aws`)",
                ))
            }
        };
        let fanout = FanoutSettings {
            chunk_size: env
                .parse_or(
                    "FEEDS_FANOUT_CHUNK_SIZE",
                    "a whole number",
                    fanout_defaults.chunk_size,
                )?
                .max(1),
            backfill_limit: env.parse_or(
                "FEEDS_BACKFILL_LIMIT",
                "a whole number",
                fanout_defaults.backfill_limit,
            )?,
            grouping: env.parse_or(
                "FEEDS_AGGREGATE_BY",
                "verb_day or verb_actor_day",
                fanout_defaults.grouping,
            )?,
            max_length: match env.parse_or(
                "FEEDS_FEED_MAX_LENGTH",
                "a whole number",
                fanout_defaults.max_length,
            )? {
                0 => {
                    return Err(SettingsError::new(
                        "FEEDS_FEED_MAX_LENGTH",
                        "must be at least 1",
                    ))
                }
                n => n,
            },
            pull_threshold: env.parse_or(
                "FEEDS_PULL_THRESHOLD",
                "a whole number",
                fanout_defaults.pull_threshold,
            )?,
            max_receives,
        };
        let rate_defaults = RateSettings::default();
        let rates = RateSettings {
            writes: env.parse_or("FEEDS_RATE_WRITES", "a whole number", rate_defaults.writes)?,
            reads: env.parse_or("FEEDS_RATE_READS", "a whole number", rate_defaults.reads)?,
            lease: env
                .parse_or("FEEDS_RATE_LEASE", "a whole number", rate_defaults.lease)?
                .max(1),
        };
        Ok(Settings {
            store,
            queue,
            sqlite_path: env.string_or("FEEDS_SQLITE_PATH", "feeds.db")?,
            fanout,
            rates,
            auth: AuthConfig::read(env)?,
            cursor_secret: env.secret("FEEDS_CURSOR_SECRET")?,
            bind: env.string_or("FEEDS_BIND", "127.0.0.1:3000")?,
            exit_on_stdin_eof: env.flag("FEEDS_EXIT_ON_STDIN_EOF")?.unwrap_or(false),
            realtime_callback_url: env.get("FEEDS_REALTIME_CALLBACK_URL")?,
            log: LogSettings::read(env)?,
            metrics: MetricsSettings::read(env)?,
        })
    }
}

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Settings(#[from] SettingsError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot open the fan-out queue: {0}")]
    Queue(#[from] QueueError),
}

/// The backends in use; a process builds them once.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    /// The receiving side of the same queue, for an in-process worker.
    pub consumer: Arc<dyn Consumer>,
    /// The operator's side of the same queue: its depths and dead letters.
    pub queue_admin: Arc<dyn QueueAdmin>,
    pub fanout: Fanout,
}

impl Backends {
    pub fn new<Q: Queue + Consumer + QueueAdmin + Clone>(
        store: Arc<dyn Store>,
        queue: Q,
        settings: FanoutSettings,
    ) -> Self {
        let sender: Arc<dyn Queue> = Arc::new(queue.clone());
        Backends {
            fanout: Fanout::new(store.clone(), sender.clone(), settings),
            store,
            queue: sender,
            consumer: Arc::new(queue.clone()),
            queue_admin: Arc::new(queue),
        }
    }

    /// Opens the store and the queue the settings name (and migrates Cassandra when asked to).
    pub async fn open(settings: &Settings) -> Result<Self, StartError> {
        let mut sqlite: Option<SqliteDb> = None;
        let store = open_store_with(settings, &mut sqlite).await?;
        Ok(match &settings.queue {
            QueueSettings::Embedded {
                visibility,
                max_receives,
            } => {
                let db = match sqlite {
                    Some(db) => db,
                    None => SqliteDb::open(&settings.sqlite_path)?,
                };
                let queue = EmbeddedQueue::new(db, *visibility, *max_receives).await?;
                Backends::new(store, queue, settings.fanout)
            }
            #[cfg(feature = "aws")]
            QueueSettings::Sqs(config) => {
                Backends::new(store, SqsQueue::from_config(config).await, settings.fanout)
            }
        })
    }
}

/// Opens the store the settings name, alone (and migrates Cassandra when asked to): for a
/// process that sends nothing to the queue.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, StartError> {
    open_store_with(settings, &mut None).await
}

/// [`open_store`], leaving the SQLite database it opened in `sqlite` for the embedded queue.
async fn open_store_with(
    settings: &Settings,
    sqlite: &mut Option<SqliteDb>,
) -> Result<Arc<dyn Store>, StartError> {
    Ok(match &settings.store {
        StoreSettings::Sqlite => {
            let db = SqliteDb::open(&settings.sqlite_path)?;
            *sqlite = Some(db.clone());
            Arc::new(SqliteStore::new(db))
        }
        #[cfg(feature = "aws")]
        StoreSettings::Cassandra { config, migrate } => {
            let session = Arc::new(cassandra::connect(config).await?);
            if *migrate {
                cassandra::migrate(&session, config).await?;
            }
            Arc::new(CassandraStore::new(session, config).await?)
        }
    })
}

/// The HTTP application over the given backends.
pub fn app(settings: &Settings, backends: &Backends) -> Result<App, SettingsError> {
    let verifier = Verifier::new(&settings.auth)?;
    let secret = settings.cursor_secret.clone().unwrap_or_else(|| {
        tracing::warn!("FEEDS_CURSOR_SECRET is not set: using the development cursor secret");
        DEV_CURSOR_SECRET.to_owned()
    });
    Ok(App {
        feeds: Feeds::new(
            backends.store.clone(),
            backends.queue.clone(),
            &settings.fanout,
        ),
        verifier: Arc::new(verifier),
        cursors: CursorCodec::new(secret.as_bytes()),
        limiter: Arc::new(Limiter::new(backends.store.clone(), settings.rates)),
    })
}

/// Structured logs: JSON (for CloudWatch and log pipelines) unless standard error is a terminal, or
/// as [`LogSettings`] says, filtered as it says.
pub fn init_tracing(log: &LogSettings) {
    use std::io::IsTerminal;
    let (filter, bad_filter) = match tracing_subscriber::EnvFilter::try_new(&log.filter) {
        Ok(filter) => (filter, None),
        Err(e) => ("info".into(), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let text = log.text.unwrap_or_else(|| std::io::stderr().is_terminal());
    let _ = match (text, log.in_lambda) {
        (true, _) => builder.try_init(),
        // Lambda stamps every line itself.
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
    if let Some(e) = bad_filter {
        tracing::warn!(filter = %log.filter, error = %e, "the log filter does not parse; logging at info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_variable_that_does_not_parse() {
        let read = |pairs: &[(&str, &str)]| {
            Settings::read(&Env::from_pairs(pairs.iter().copied()), Defaults::EMBEDDED)
        };
        let ok = read(&[("FEEDS_FANOUT_CHUNK_SIZE", " 7 "), ("FEEDS_BIND", "")]).unwrap();
        assert_eq!(ok.fanout.chunk_size, 7);
        assert_eq!(ok.bind, "127.0.0.1:3000", "an empty value counts as unset");
        for (name, value) in [
            ("FEEDS_STORE", "postgres"),
            ("FEEDS_QUEUE", "kafka"),
            ("FEEDS_FANOUT_CHUNK_SIZE", "many"),
            ("FEEDS_QUEUE_MAX_RECEIVES", "-1"),
            ("FEEDS_AGGREGATE_BY", "verb_week"),
            ("FEEDS_LOG_FORMAT", "xml"),
            ("FEEDS_EXIT_ON_STDIN_EOF", "perhaps"),
        ] {
            let e = read(&[(name, value)]).err().expect(name);
            assert_eq!(e.variable, name);
            assert!(e.message.contains(value), "{e}");
        }
    }

    #[test]
    fn logs_follow_lambdas_logging_config_unless_told_otherwise() {
        let read = |pairs: &[(&str, &str)]| {
            LogSettings::read(&Env::from_pairs(pairs.iter().copied())).unwrap()
        };
        let plain = read(&[]);
        assert_eq!((plain.text, plain.filter.as_str()), (None, "info"));
        let lambda = read(&[
            ("AWS_LAMBDA_FUNCTION_NAME", "fanout"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
        ]);
        assert_eq!(
            lambda,
            LogSettings {
                text: Some(false),
                in_lambda: true,
                filter: "debug".into()
            }
        );
        assert_eq!(read(&[("AWS_LAMBDA_LOG_LEVEL", "FATAL")]).filter, "error");
        assert_eq!(read(&[("AWS_LAMBDA_LOG_FORMAT", "Text")]).text, None);
        let told = read(&[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
            ("FEEDS_LOG_FORMAT", "text"),
            ("RUST_LOG", "warn,feeds=trace"),
        ]);
        assert_eq!(
            (told.text, told.filter.as_str()),
            (Some(true), "warn,feeds=trace")
        );
        // CloudFormation passes an unused parameter as "": RUST_LOG unset.
        assert_eq!(
            read(&[("RUST_LOG", ""), ("AWS_LAMBDA_LOG_LEVEL", "WARN")]).filter,
            "warn"
        );
    }

    #[cfg(feature = "aws")]
    #[test]
    fn an_empty_queue_url_is_refused() {
        let e = Settings::read(
            &Env::from_pairs([("FEEDS_QUEUE", "sqs"), ("FEEDS_QUEUE_URL", "  ")]),
            Defaults::EMBEDDED,
        )
        .err()
        .expect("refused");
        assert_eq!(e.variable, "FEEDS_QUEUE_URL");
    }
}
