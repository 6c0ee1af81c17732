//! The Cassandra / ScyllaDB / Amazon Keyspaces store, through the `scylla` driver.
//!
//! Tables are in `etc/schema.cql`. Every statement is prepared once, in [`CassandraStore::new`],
//! with keyspace-qualified table names, so the session itself never needs a current keyspace.
//! All requests run at `LOCAL_QUORUM` (lightweight transactions at `LOCAL_SERIAL`), the levels
//! Amazon Keyspaces accepts for writes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    IntoRowsResultError, MaybeFirstRowError, MetadataError, NewSessionError, PrepareError,
    RequestAttemptError, RowsError, SchemaAgreementError, SingleRowError,
};
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{MaybeUnset, Row};

use super::{IdRange, Store, StoreError, TimelineEntry};
use crate::model::{from_micros, Activity, FollowEdge, Relation};

/// The schema, applied by [`migrate`] inside the configured keyspace.
const SCHEMA: &str = include_str!("../../../etc/schema.cql");

/// How many rows or writes are in flight at once for one `insert_timeline` / `delete_timeline`.
const WRITE_CONCURRENCY: usize = 64;

/// How often a contended lightweight transaction (a mapping that changes under us) is retried.
const CAS_ATTEMPTS: usize = 3;

/// Rounds of a follow or unfollow against concurrent changes of the same edge (each round is one
/// lightweight transaction), with a short random pause before each retry.
const EDGE_ATTEMPTS: u32 = 12;

async fn edge_backoff(attempt: u32) {
    if attempt > 0 {
        let ceiling_us = 2_000 * u64::from(attempt.min(6));
        let pause = rand::random_range(0..ceiling_us);
        tokio::time::sleep(Duration::from_micros(pause)).await;
    }
}

/// Tables written `USING TIMESTAMP` (see `EdgeState`), which Amazon Keyspaces must be told to
/// accept: `template.yaml` sets `ClientSideTimestampsEnabled` on them, `migrate` alters them.
pub const CLIENT_SIDE_TIMESTAMP_TABLES: [&str; 1] = ["followers"];

/// Timeout of each schema statement (DDL takes longer than a data request).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`migrate`] waits for Amazon Keyspaces to finish creating a keyspace or table.
const DDL_WAIT: Duration = Duration::from_secs(300);

/// Ids are 32 lowercase hex digits: every id sorts after "" and before "g".
const ID_FLOOR: &str = "";
const ID_CEILING: &str = "g";

const ACTIVITY_COLUMNS: &str = "id, actor, verb, object, target, time_us, foreign_id, extra";

/// Where the cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Lowercase letters, digits and `_`, starting with a letter; at most 48 characters.
    pub keyspace: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The `replication` map of `CREATE KEYSPACE`, e.g. `{'class': 'SingleRegionStrategy'}` on
    /// Amazon Keyspaces.
    pub replication: String,
    /// TLS towards the nodes (`None`: plain TCP): `FEEDS_CASSANDRA_TLS*`, see
    /// [`TlsSettings::from_lookup`](super::tls::TlsSettings::from_lookup).
    pub tls: Option<super::tls::TlsSettings>,
    /// Amazon Keyspaces' SigV4 authentication in this region, with credentials from the standard
    /// AWS chain (`FEEDS_CASSANDRA_AUTH=sigv4`); `None`: user name and password, or nothing.
    pub sigv4_region: Option<String>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "feeds".to_owned(),
            username: None,
            password: None,
            connect_timeout: Duration::from_millis(3000),
            request_timeout: Duration::from_millis(5000),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            tls: None,
            sigv4_region: None,
        }
    }
}

impl CassandraConfig {
    /// Reads `FEEDS_CASSANDRA_NODES` (comma-separated `host:port`), `FEEDS_CASSANDRA_KEYSPACE`,
    /// `FEEDS_CASSANDRA_USERNAME`, `FEEDS_CASSANDRA_PASSWORD`, `FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS`,
    /// `FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS` and `FEEDS_CASSANDRA_REPLICATION`; unset or empty
    /// variables take the defaults of [`CassandraConfig::default`].
    pub fn from_env() -> Result<Self, StoreError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables of [`CassandraConfig::from_env`] through the shared reader.
    pub fn read(env: &crate::settings::Env) -> Result<Self, crate::settings::SettingsError> {
        Self::from_lookup(|name| env.secret(name).ok().flatten())
            .map_err(|e| crate::settings::SettingsError::new("FEEDS_CASSANDRA_*", e.to_string()))
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let millis = |name: &str, default: Duration| -> Result<Duration, StoreError> {
            match get(name) {
                None => Ok(default),
                Some(text) => match text.parse::<u64>() {
                    Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                    _ => Err(config_error(format!(
                        "{name} must be a positive whole number of milliseconds, not {text:?}"
                    ))),
                },
            }
        };
        let defaults = Self::default();
        let nodes = match get("FEEDS_CASSANDRA_NODES") {
            None => defaults.nodes,
            Some(text) => {
                let nodes: Vec<String> =
                    text.split(',').map(str::trim).map(str::to_owned).collect();
                if nodes.iter().any(|n| !is_host_port(n)) {
                    return Err(config_error(format!(
                        "FEEDS_CASSANDRA_NODES must be comma-separated host:port pairs, not {text:?}"
                    )));
                }
                nodes
            }
        };
        let keyspace = get("FEEDS_CASSANDRA_KEYSPACE").unwrap_or(defaults.keyspace);
        check_keyspace_name("FEEDS_CASSANDRA_KEYSPACE", &keyspace)?;
        let replication = get("FEEDS_CASSANDRA_REPLICATION").unwrap_or(defaults.replication);
        check_replication("FEEDS_CASSANDRA_REPLICATION", &replication)?;
        let tls = super::tls::TlsSettings::from_lookup(&lookup, &nodes)?;
        let auth = get("FEEDS_CASSANDRA_AUTH");
        let sigv4_region = match auth.as_deref() {
            None | Some("password") | Some("none") => None,
            Some("sigv4") => Some(
                get("FEEDS_CASSANDRA_SIGV4_REGION")
                    .or_else(|| get("AWS_REGION"))
                    .ok_or_else(|| {
                        config_error(
                            "FEEDS_CASSANDRA_AUTH=sigv4 needs FEEDS_CASSANDRA_SIGV4_REGION or AWS_REGION"
                                .to_owned(),
                        )
                    })?,
            ),
            Some(other) => {
                return Err(config_error(format!(
                    "FEEDS_CASSANDRA_AUTH must be sigv4, password or none, not {other:?}"
                )))
            }
        };
        let username = get("FEEDS_CASSANDRA_USERNAME");
        let password = lookup("FEEDS_CASSANDRA_PASSWORD").filter(|p| !p.is_empty());
        if auth.as_deref() == Some("password") && (username.is_none() || password.is_none()) {
            return Err(config_error(
                "FEEDS_CASSANDRA_AUTH=password needs FEEDS_CASSANDRA_USERNAME and FEEDS_CASSANDRA_PASSWORD"
                    .to_owned(),
            ));
        }
        Ok(CassandraConfig {
            nodes,
            keyspace,
            username,
            password,
            connect_timeout: millis(
                "FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS",
                defaults.connect_timeout,
            )?,
            request_timeout: millis(
                "FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS",
                defaults.request_timeout,
            )?,
            replication,
            tls,
            sigv4_region,
        })
    }

    /// The keyspace name, checked: it is spliced into CQL text.
    fn checked_keyspace(&self) -> Result<&str, StoreError> {
        check_keyspace_name("the keyspace", &self.keyspace)?;
        Ok(&self.keyspace)
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Internal(format!("Cassandra configuration: {message}"))
}

fn is_host_port(node: &str) -> bool {
    match node.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn check_keyspace_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(config_error(format!(
            "{what} must be 1 to 48 characters of a-z 0-9 _ starting with a letter, not {name:?}"
        )))
    }
}

fn check_replication(what: &str, replication: &str) -> Result<(), StoreError> {
    let text = replication.trim();
    if text.starts_with('{') && text.ends_with('}') && !text.contains(';') {
        Ok(())
    } else {
        Err(config_error(format!(
            "{what} must be a CQL replication map such as \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}, not {replication:?}"
        )))
    }
}

/// Builds the one session a process uses: known nodes, optional plain-text credentials, no
/// schema metadata (a fast cold start; the store prepares its statements with qualified names),
/// short connect timeout, TCP and CQL keepalives, and a default profile of `LOCAL_QUORUM` /
/// `LOCAL_SERIAL` with the configured request timeout.
pub async fn connect(cfg: &CassandraConfig) -> Result<Session, StoreError> {
    if cfg.nodes.is_empty() {
        return Err(config_error("no Cassandra nodes are configured".to_owned()));
    }
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(cfg.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .connection_timeout(cfg.connect_timeout)
        .hostname_resolution_timeout(Some(cfg.connect_timeout))
        .fetch_schema_metadata(false)
        .fetch_full_schema_metadata(false)
        .tcp_nodelay(true)
        .tcp_keepalive_interval(Duration::from_secs(30))
        .keepalive_interval(Duration::from_secs(30))
        .keepalive_timeout(Duration::from_secs(10))
        .default_execution_profile_handle(profile.into_handle());
    // TLS: the chain and the configured DNS name are verified, not the dialed address.
    if let Some(tls) = &cfg.tls {
        builder = builder.tls_context(Some(tls.client_config()?));
    }
    // One authenticator slot: SigV4 (Amazon Keyspaces with IAM) or user name and password.
    if let Some(region) = &cfg.sigv4_region {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let credentials = sdk.credentials_provider().ok_or_else(|| {
            config_error("SigV4: no AWS credentials provider is configured".to_owned())
        })?;
        builder = builder.authenticator_provider(Arc::new(super::sigv4::SigV4AuthProvider::new(
            region,
            credentials,
        )));
    } else if let Some(username) = &cfg.username {
        builder = builder.user(username, cfg.password.as_deref().unwrap_or_default());
    }
    builder
        .build()
        .await
        .map_err(|e| store_error(&format!("connect to {}", cfg.nodes.join(",")), e))
}

/// Creates the keyspace (with `cfg.replication`) and every table of `etc/schema.cql` in it, then
/// waits until the cluster agrees on the schema (and, on Amazon Keyspaces, until every table is
/// `ACTIVE`). Safe to run again: every statement is `IF NOT EXISTS`.
pub async fn migrate(session: &Session, cfg: &CassandraConfig) -> Result<(), StoreError> {
    let keyspace = cfg.checked_keyspace()?;
    check_replication("the replication", &cfg.replication)?;
    let statements = schema_statements(SCHEMA, keyspace)?;
    run_ddl(
        session,
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
            cfg.replication.trim()
        ),
    )
    .await?;
    let amazon_keyspaces = is_amazon_keyspaces(session).await?;
    if amazon_keyspaces {
        // A keyspace is listed there once it is ready.
        const CQL: &str =
            "SELECT keyspace_name FROM system_schema_mcs.keyspaces WHERE keyspace_name = ?";
        let what = format!("keyspace {keyspace}");
        wait_for_ddl(session, &what, CQL, (keyspace,), |_: &KeyspaceRow| true).await?;
    }
    for (table, cql) in statements {
        run_ddl(session, cql).await?;
        if amazon_keyspaces {
            const CQL: &str = "SELECT status FROM system_schema_mcs.tables WHERE keyspace_name = ? AND table_name = ?";
            let what = format!("table {keyspace}.{table}");
            let active = |row: &TableStatusRow| row.status.as_deref() == Some("ACTIVE");
            wait_for_ddl(session, &what, CQL, (keyspace, table.as_str()), active).await?;
            // Keyspaces takes `USING TIMESTAMP` only on tables that enable it (once, for good);
            // Cassandra always does and knows no such property.
            if CLIENT_SIDE_TIMESTAMP_TABLES.contains(&table.as_str()) {
                run_ddl(session, format!("ALTER TABLE {keyspace}.{table} WITH custom_properties = {{'client_side_timestamps': {{'status': 'enabled'}}}}")).await?;
                wait_for_ddl(session, &what, CQL, (keyspace, table.as_str()), active).await?;
            }
        }
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| store_error("migrate: schema agreement", e))?;
    Ok(())
}

async fn run_ddl(session: &Session, cql: String) -> Result<(), StoreError> {
    let op = format!("migrate: `{cql}`");
    let mut statement = Statement::new(cql);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| store_error(&op, e))?;
    Ok(())
}

/// Amazon Keyspaces creates keyspaces and tables asynchronously and reports their state in its own
/// `system_schema_mcs` keyspace, which no other server has.
async fn is_amazon_keyspaces(session: &Session) -> Result<bool, StoreError> {
    const CQL: &str = "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = 'system_schema_mcs'";
    let op = "migrate: detect Amazon Keyspaces";
    let result = session
        .query_unpaged(CQL, ())
        .await
        .map_err(|e| store_error(op, e))?;
    let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
    Ok(rows.rows_num() > 0)
}

#[derive(scylla::DeserializeRow)]
struct KeyspaceRow {
    #[allow(dead_code)]
    keyspace_name: String,
}

#[derive(scylla::DeserializeRow)]
struct TableStatusRow {
    status: Option<String>,
}

/// Polls `cql` until it returns a row that is `ready`, for at most [`DDL_WAIT`].
async fn wait_for_ddl<R>(
    session: &Session,
    what: &str,
    cql: &str,
    values: impl SerializeRow,
    ready: impl Fn(&R) -> bool,
) -> Result<(), StoreError>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let op = format!("migrate: wait for {what}");
    let started = std::time::Instant::now();
    loop {
        let result = session
            .query_unpaged(cql, &values)
            .await
            .map_err(|e| store_error(&op, e))?;
        let rows = result.into_rows_result().map_err(|e| store_error(&op, e))?;
        if rows
            .maybe_first_row::<R>()
            .map_err(|e| store_error(&op, e))?
            .is_some_and(|row| ready(&row))
        {
            return Ok(());
        }
        if started.elapsed() > DDL_WAIT {
            return Err(StoreError::Unavailable(format!(
                "{op}: still not ready after {DDL_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The statements of a schema file, each `CREATE TABLE IF NOT EXISTS <table> ...` with an
/// unqualified table name, rewritten to create the table in `keyspace`: `(table, cql)` pairs.
fn schema_statements(schema: &str, keyspace: &str) -> Result<Vec<(String, String)>, StoreError> {
    const PREFIX: [&str; 5] = ["CREATE", "TABLE", "IF", "NOT", "EXISTS"];
    let without_comments: String = schema
        .lines()
        .map(|line| {
            let end = [line.find("--"), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..end]
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut statements = Vec::new();
    for statement in without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let unsupported = || {
            StoreError::Internal(format!(
                "etc/schema.cql: every statement must be `CREATE TABLE IF NOT EXISTS <unqualified name> (...)`, \
                 not `{statement}`"
            ))
        };
        let mut rest = statement;
        for word in PREFIX {
            let head = rest.get(..word.len()).ok_or_else(unsupported)?;
            let tail = &rest[word.len()..];
            if !head.eq_ignore_ascii_case(word) || !tail.starts_with(char::is_whitespace) {
                return Err(unsupported());
            }
            rest = tail.trim_start();
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (table, body) = rest.split_at(name_len);
        if table.is_empty() || body.starts_with('.') {
            return Err(unsupported());
        }
        let table = table.to_ascii_lowercase();
        statements.push((
            table.clone(),
            format!("CREATE TABLE IF NOT EXISTS {keyspace}.{table}{body}"),
        ));
    }
    Ok(statements)
}

/// Driver errors, told apart by whether trying again later may succeed.
trait DriverError: std::fmt::Display {
    /// The cluster could not be reached, timed out or was overloaded.
    fn is_transient(&self) -> bool {
        false
    }
}

/// The one mapping from driver errors to store errors: transient ones are `Unavailable` (`503`),
/// the rest `Internal` (`500`). `op` names what was being done.
fn store_error(op: &str, err: impl DriverError) -> StoreError {
    let message = format!("Cassandra {op}: {err}");
    if err.is_transient() {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

/// The connection, not the cluster, failed: a fresh session may well succeed.
fn connection_lost(err: &ExecutionError) -> bool {
    matches!(
        err,
        ExecutionError::ConnectionPoolError(_)
            | ExecutionError::RequestTimeout(_)
            | ExecutionError::LastAttemptError(
                RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::UnableToAllocStreamId
            )
    )
}

fn db_error_is_transient(err: &DbError) -> bool {
    matches!(
        err,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_is_transient(err: &RequestAttemptError) -> bool {
    match err {
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        RequestAttemptError::DbError(db, _) => db_error_is_transient(db),
        _ => false,
    }
}

impl DriverError for ConnectionPoolError {
    fn is_transient(&self) -> bool {
        match self {
            // Wrong credentials will not get better by waiting.
            ConnectionPoolError::Broken {
                last_connection_error: ConnectionError::ConnectionSetupRequestError(e),
            } => !matches!(
                e.get_error(),
                ConnectionSetupRequestErrorKind::DbError(
                    DbError::AuthenticationError | DbError::Unauthorized,
                    _
                ) | ConnectionSetupRequestErrorKind::MissingAuthentication
            ),
            _ => true,
        }
    }
}

impl DriverError for MetadataError {
    fn is_transient(&self) -> bool {
        match self {
            MetadataError::ConnectionPoolError(e) => e.is_transient(),
            MetadataError::FetchError(_) => true,
            _ => false,
        }
    }
}

impl DriverError for ExecutionError {
    fn is_transient(&self) -> bool {
        match self {
            ExecutionError::EmptyPlan | ExecutionError::RequestTimeout(_) => true,
            ExecutionError::ConnectionPoolError(e) => e.is_transient(),
            ExecutionError::LastAttemptError(e) => attempt_is_transient(e),
            ExecutionError::PrepareError(e) => e.is_transient(),
            ExecutionError::SchemaAgreementError(e) => e.is_transient(),
            ExecutionError::MetadataError(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl DriverError for PrepareError {
    fn is_transient(&self) -> bool {
        match self {
            PrepareError::ConnectionPoolError(e) => e.is_transient(),
            PrepareError::AllAttemptsFailed { first_attempt } => {
                attempt_is_transient(first_attempt)
            }
            _ => false,
        }
    }
}

impl DriverError for SchemaAgreementError {
    fn is_transient(&self) -> bool {
        match self {
            SchemaAgreementError::ConnectionPoolError(e) => e.is_transient(),
            SchemaAgreementError::PrepareError(e) => e.is_transient(),
            SchemaAgreementError::RequestError(e) => attempt_is_transient(e),
            SchemaAgreementError::Timeout(_) | SchemaAgreementError::RequiredHostAbsent(_) => true,
            _ => false,
        }
    }
}

impl DriverError for NewSessionError {
    fn is_transient(&self) -> bool {
        match self {
            NewSessionError::FailedToResolveAnyHostname(_) => true,
            NewSessionError::MetadataError(e) => e.is_transient(),
            _ => false,
        }
    }
}

// Results that do not have the expected shape: never transient.
impl DriverError for IntoRowsResultError {}
impl DriverError for RowsError {}
impl DriverError for SingleRowError {}
impl DriverError for MaybeFirstRowError {}
impl DriverError for scylla::errors::DeserializationError {}

/// An activity as every activity table stores it.
#[derive(scylla::DeserializeRow)]
struct ActivityRow {
    id: String,
    actor: String,
    verb: String,
    object: String,
    target: Option<String>,
    time_us: i64,
    foreign_id: Option<String>,
    extra: Option<String>,
}

impl ActivityRow {
    fn into_activity(self) -> Result<Activity, StoreError> {
        let extra = match self.extra {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                StoreError::Internal(format!(
                    "activity {}: `extra` is not a JSON object: {e}",
                    self.id
                ))
            })?),
        };
        Ok(Activity {
            id: self.id,
            actor: self.actor,
            verb: self.verb,
            object: self.object,
            target: self.target,
            time: from_micros(self.time_us),
            foreign_id: self.foreign_id,
            extra,
        })
    }
}

/// The columns of an activity row, in [`ACTIVITY_COLUMNS`] order. Absent optional fields are
/// left unset rather than written as null, so they leave no tombstones.
type ActivityValues<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    MaybeUnset<&'a str>,
    i64,
    MaybeUnset<&'a str>,
    MaybeUnset<String>,
);

fn activity_values(a: &Activity) -> ActivityValues<'_> {
    (
        &a.id,
        &a.actor,
        &a.verb,
        &a.object,
        MaybeUnset::from_option(a.target.as_deref()),
        a.time.timestamp_micros(),
        MaybeUnset::from_option(a.foreign_id.as_deref()),
        MaybeUnset::from_option(
            a.extra
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        ),
    )
}

#[derive(scylla::DeserializeRow)]
struct FollowerRow {
    follower: String,
    created_us: i64,
}

#[derive(scylla::DeserializeRow)]
struct FolloweeRow {
    followee: String,
    created_us: i64,
}

#[derive(scylla::DeserializeRow)]
struct CreatedRow {
    created_us: i64,
}

/// What a rejected `INSERT INTO following ... IF NOT EXISTS` sends back.
#[derive(scylla::DeserializeRow)]
struct EdgeCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    #[allow(dead_code)]
    user: String,
    #[allow(dead_code)]
    followee: String,
    created_us: Option<i64>,
}

/// Who holds an `(actor, foreign_id)` mapping, and since when.
#[derive(scylla::DeserializeRow)]
struct ForeignIdRow {
    id: String,
    claimed_us: Option<i64>,
}

/// What a rejected `INSERT INTO activity_foreign_ids ... IF NOT EXISTS` sends back.
#[derive(scylla::DeserializeRow)]
struct ForeignIdCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    #[allow(dead_code)]
    actor: String,
    #[allow(dead_code)]
    foreign_id: String,
    id: String,
    claimed_us: Option<i64>,
}

/// A lightweight transaction's result row.
trait CasRow {
    fn applied(&self) -> bool;
}

impl CasRow for EdgeCasRow {
    fn applied(&self) -> bool {
        self.applied
    }
}

impl CasRow for ForeignIdCasRow {
    fn applied(&self) -> bool {
        self.applied
    }
}

/// What a rejected `UPDATE following ... IF created_us = ?` sends back.
#[derive(scylla::DeserializeRow)]
struct SwapCasRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
    created_us: Option<i64>,
}

impl SwapCasRow {
    /// The edge as the transaction found it (`None`: no row).
    fn state(self) -> Option<EdgeState> {
        self.created_us.map(EdgeState::from_column)
    }
}

impl CasRow for SwapCasRow {
    fn applied(&self) -> bool {
        self.applied
    }
}

/// A row type for lightweight transactions that send back only `[applied]`.
#[derive(scylla::DeserializeRow)]
struct AppliedRow {
    #[scylla(rename = "[applied]")]
    applied: bool,
}

impl CasRow for AppliedRow {
    fn applied(&self) -> bool {
        self.applied
    }
}

enum Cas<R> {
    Applied,
    /// Not applied, with the row that made it fail when the server sent it back in the expected
    /// shape (Cassandra and ScyllaDB do; other servers may send `[applied]` alone).
    Rejected(Option<R>),
}

/// Every statement, prepared once.
struct Statements {
    health: PreparedStatement,
    edge_claim: PreparedStatement,
    edge_get: PreparedStatement,
    edge_swap: PreparedStatement,
    followers_page: PreparedStatement,
    follower_row_insert: PreparedStatement,
    follower_row_delete: PreparedStatement,
    following_page: PreparedStatement,
    foreign_id_claim: PreparedStatement,
    foreign_id_get: PreparedStatement,
    foreign_id_take_over: PreparedStatement,
    foreign_id_release: PreparedStatement,
    activity_insert: PreparedStatement,
    activity_get: PreparedStatement,
    activity_delete: PreparedStatement,
    user_activity_insert: PreparedStatement,
    user_activity_delete: PreparedStatement,
    user_feed_page: PreparedStatement,
    timeline_insert: PreparedStatement,
    timeline_delete: PreparedStatement,
    timeline_page: PreparedStatement,
}

pub struct CassandraStore {
    /// Replaced by [`CassandraStore::reconnect`] when its connections died.
    session: std::sync::RwLock<Arc<Session>>,
    /// One reconnection at a time; when it last failed.
    reconnecting: tokio::sync::Mutex<Option<std::time::Instant>>,
    cfg: CassandraConfig,
    st: Statements,
    /// A foreign-id mapping whose activity is missing is taken over only when it is older than
    /// this: younger, the request that claimed it may still be writing the activity.
    claim_grace: Duration,
}

impl CassandraStore {
    /// Prepares every statement against the tables of `cfg.keyspace` (run [`migrate`] first).
    pub async fn new(session: Arc<Session>, cfg: &CassandraConfig) -> Result<Self, StoreError> {
        let ks = cfg.checked_keyspace()?;
        let s = session.as_ref();
        // Idempotent statements may be retried by the driver (e.g. on a connection that died while
        // a Lambda was frozen); lightweight transactions may not.
        let st = tokio::try_join!(
            prepare(s, "SELECT release_version FROM system.local WHERE key = 'local'".to_owned(), true),
            prepare(s, format!("INSERT INTO {ks}.following (user, followee, created_us) VALUES (?, ?, ?) IF NOT EXISTS"), false),
            prepare(s, format!("SELECT created_us FROM {ks}.following WHERE user = ? AND followee = ?"), true),
            prepare(s, format!("UPDATE {ks}.following SET created_us = ? WHERE user = ? AND followee = ? IF created_us = ?"), false),
            prepare(s, format!("SELECT follower, created_us FROM {ks}.followers WHERE user = ? AND follower > ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.followers (user, follower, created_us) VALUES (?, ?, ?) USING TIMESTAMP ?"), true),
            prepare(s, format!("DELETE FROM {ks}.followers USING TIMESTAMP ? WHERE user = ? AND follower = ?"), true),
            prepare(s, format!("SELECT followee, created_us FROM {ks}.following WHERE user = ? AND followee > ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.activity_foreign_ids (actor, foreign_id, id, claimed_us) VALUES (?, ?, ?, ?) IF NOT EXISTS"), false),
            prepare(s, format!("SELECT id, claimed_us FROM {ks}.activity_foreign_ids WHERE actor = ? AND foreign_id = ?"), true),
            prepare(s, format!("UPDATE {ks}.activity_foreign_ids SET id = ?, claimed_us = ? WHERE actor = ? AND foreign_id = ? IF id = ?"), false),
            prepare(s, format!("DELETE FROM {ks}.activity_foreign_ids WHERE actor = ? AND foreign_id = ? IF id = ?"), false),
            prepare(s, format!("INSERT INTO {ks}.activities ({ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.activities WHERE id = ?"), true),
            prepare(s, format!("DELETE FROM {ks}.activities WHERE id = ?"), true),
            prepare(s, format!("INSERT INTO {ks}.user_activities ({ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("DELETE FROM {ks}.user_activities WHERE actor = ? AND id = ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.user_activities WHERE actor = ? AND id < ? AND id >= ? LIMIT ?"), true),
            prepare(s, format!("INSERT INTO {ks}.timeline (owner, {ACTIVITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), true),
            prepare(s, format!("DELETE FROM {ks}.timeline WHERE owner = ? AND id = ?"), true),
            prepare(s, format!("SELECT {ACTIVITY_COLUMNS} FROM {ks}.timeline WHERE owner = ? AND id < ? AND id >= ? LIMIT ?"), true),
        )?;
        let st = Statements {
            health: st.0,
            edge_claim: st.1,
            edge_get: st.2,
            edge_swap: st.3,
            followers_page: st.4,
            follower_row_insert: st.5,
            follower_row_delete: st.6,
            following_page: st.7,
            foreign_id_claim: st.8,
            foreign_id_get: st.9,
            foreign_id_take_over: st.10,
            foreign_id_release: st.11,
            activity_insert: st.12,
            activity_get: st.13,
            activity_delete: st.14,
            user_activity_insert: st.15,
            user_activity_delete: st.16,
            user_feed_page: st.17,
            timeline_insert: st.18,
            timeline_delete: st.19,
            timeline_page: st.20,
        };
        // Long enough for the claiming request to have finished (each of its few statements is
        // bounded by the request timeout), short enough that a client retrying after a crash
        // is not refused for long.
        let claim_grace = (cfg.request_timeout * 6).max(Duration::from_secs(10));
        Ok(CassandraStore {
            session: std::sync::RwLock::new(session),
            reconnecting: tokio::sync::Mutex::new(None),
            cfg: cfg.clone(),
            st,
            claim_grace,
        })
    }

    /// The session the store runs on now.
    pub fn session(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces a session whose connections died (a Lambda environment thawed after a freeze, a
    /// restarted node) with a new one, unless another request already did, or failed to within
    /// the last second (then the cluster is down, and the caller answers `503`).
    async fn reconnect(
        &self,
        op: &str,
        failed: &Arc<Session>,
        cause: &ExecutionError,
    ) -> Result<(), StoreError> {
        let mut last_failure = self.reconnecting.lock().await;
        if !Arc::ptr_eq(&self.session(), failed) {
            return Ok(());
        }
        if last_failure.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err(store_error(op, cause.clone()));
        }
        tracing::warn!(op, error = %cause, "Cassandra connection lost: reconnecting");
        match connect(&self.cfg).await {
            Ok(fresh) => {
                *self.session.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                *last_failure = None;
                Ok(())
            }
            Err(e) => {
                *last_failure = Some(std::time::Instant::now());
                Err(e)
            }
        }
    }

    async fn execute(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<QueryResult, StoreError> {
        let session = self.session();
        match session.execute_unpaged(statement, &values).await {
            // An idempotent statement gets one more try on a fresh session.
            Err(e) if statement.get_is_idempotent() && connection_lost(&e) => {
                self.reconnect(op, &session, &e).await?;
                self.session()
                    .execute_unpaged(statement, &values)
                    .await
                    .map_err(|e| store_error(op, e))
            }
            result => result.map_err(|e| store_error(op, e)),
        }
    }

    /// At most one row, by primary key.
    async fn get_row<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(op, statement, values).await?;
        let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
        rows.maybe_first_row::<R>().map_err(|e| store_error(op, e))
    }

    /// Up to `limit` rows of a slice whose CQL also says `LIMIT`, page after page: a server may
    /// end a page early (Amazon Keyspaces stops at 1 MB), so one page is not always all of them.
    async fn get_rows<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        while out.len() < limit {
            let session = self.session();
            let (result, next) = match session
                .execute_single_page(statement, &values, paging.clone())
                .await
            {
                Err(e) if statement.get_is_idempotent() && connection_lost(&e) => {
                    self.reconnect(op, &session, &e).await?;
                    self.session()
                        .execute_single_page(statement, &values, paging)
                        .await
                }
                result => result,
            }
            .map_err(|e| store_error(op, e))?;
            let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
            for row in rows.rows::<R>().map_err(|e| store_error(op, e))? {
                out.push(row.map_err(|e| store_error(op, e))?);
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Runs a lightweight transaction.
    async fn cas<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Cas<R>, StoreError>
    where
        R: CasRow + for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let result = self.execute(op, statement, values).await?;
        let rows = result.into_rows_result().map_err(|e| store_error(op, e))?;
        if rows.column_specs().len() > 1 {
            if let Ok(row) = rows.single_row::<R>() {
                return Ok(if row.applied() {
                    Cas::Applied
                } else {
                    Cas::Rejected(Some(row))
                });
            }
        }
        // `[applied]` alone, or with columns of another shape: read `[applied]` only.
        let row: Row = rows.single_row().map_err(|e| store_error(op, e))?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(true))) => Ok(Cas::Applied),
            Some(Some(scylla::value::CqlValue::Boolean(false))) => Ok(Cas::Rejected(None)),
            _ => Err(StoreError::Internal(format!(
                "Cassandra {op}: the result has no [applied] column"
            ))),
        }
    }

    async fn relations<R>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        self.get_rows(op, statement, (user, after.unwrap_or(""), cql_limit), limit)
            .await
    }

    async fn activities(
        &self,
        op: &str,
        statement: &PreparedStatement,
        key: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let before = range.before.unwrap_or(ID_CEILING);
        let not_before = range.not_before.unwrap_or(ID_FLOOR);
        let cql_limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<ActivityRow> = self
            .get_rows(op, statement, (key, before, not_before, cql_limit), limit)
            .await?;
        rows.into_iter().map(ActivityRow::into_activity).collect()
    }

    /// Writes the actor's feed row, then the `activities` row: an activity that can be read by
    /// id is complete, which is what `put_activity` checks before answering an existing one.
    async fn write_activity(&self, a: &Activity) -> Result<(), StoreError> {
        let op = "put_activity";
        self.execute(op, &self.st.user_activity_insert, activity_values(a))
            .await?;
        self.execute(op, &self.st.activity_insert, activity_values(a))
            .await?;
        Ok(())
    }

    /// The `following` row of `follower -> user`, if there ever was one.
    async fn edge(
        &self,
        op: &str,
        follower: &str,
        user: &str,
    ) -> Result<Option<EdgeState>, StoreError> {
        let row: Option<CreatedRow> = self
            .get_row(op, &self.st.edge_get, (follower, user))
            .await?;
        Ok(row.map(|r| EdgeState::from_column(r.created_us)))
    }

    async fn foreign_id_holder(
        &self,
        actor: &str,
        foreign_id: &str,
    ) -> Result<Option<ForeignIdRow>, StoreError> {
        self.get_row(
            "put_activity: read foreign_id",
            &self.st.foreign_id_get,
            (actor, foreign_id),
        )
        .await
    }
}

/// A `following` row. Unfollowing keeps the row, with `created_us` negated: `-(since + 1)`. That
/// value is also the write time of the tombstone the unfollow puts on the `followers` row, whose
/// inserts are written at the edge's `since`: so whichever of a follow's row insert and a racing
/// unfollow's delete arrives last, the delete wins, and a later follow (at `since` younger than
/// the tombstone, see `follow`) wins over both. Without the kept row, a follow could not know how
/// young its edge must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdgeState {
    Following(i64),
    Unfollowed { tombstone_us: i64 },
}

impl EdgeState {
    fn from_column(created_us: i64) -> Self {
        if created_us > 0 {
            EdgeState::Following(created_us)
        } else {
            EdgeState::Unfollowed {
                tombstone_us: -created_us,
            }
        }
    }
}

/// Prepares one statement; `idempotent` lets the driver retry it.
async fn prepare(
    session: &Session,
    cql: String,
    idempotent: bool,
) -> Result<PreparedStatement, StoreError> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| store_error(&format!("prepare `{cql}`"), e))?;
    statement.set_is_idempotent(idempotent);
    Ok(statement)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[async_trait]
impl Store for CassandraStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.execute("health", &self.st.health, ()).await.map(drop)
    }

    async fn follow(&self, edge: &FollowEdge) -> Result<(FollowEdge, bool), StoreError> {
        let op = "follow";
        let (user, follower) = (edge.following.as_str(), edge.follower.as_str());
        let requested_us = edge.created_at.timestamp_micros().max(1);
        // The lightweight transactions run on the follower's `following` partition, not on the
        // followee's `followers` partition: thousands of users following one star at once would
        // contend there. See `EdgeState` for how the `followers` row is kept in step.
        let mut known: Option<Option<EdgeState>> = None;
        let mut settled = None;
        for attempt in 0..EDGE_ATTEMPTS {
            edge_backoff(attempt).await;
            let current = match known.take() {
                Some(state) => state,
                None => match self
                    .cas::<EdgeCasRow>(op, &self.st.edge_claim, (follower, user, requested_us))
                    .await?
                {
                    Cas::Applied => {
                        settled = Some((requested_us, true));
                        break;
                    }
                    Cas::Rejected(Some(row)) => row.created_us.map(EdgeState::from_column),
                    Cas::Rejected(None) => self.edge(op, follower, user).await?,
                },
            };
            match current {
                // Gone between the claim and the read (only rows older than `EdgeState` go).
                None => continue,
                Some(EdgeState::Following(since_us)) => {
                    settled = Some((since_us, false));
                    break;
                }
                Some(EdgeState::Unfollowed { tombstone_us }) => {
                    // Followed again: the new edge must be younger than the tombstone its last
                    // unfollow left on the `followers` row, or that tombstone would hide the row.
                    let since_us = requested_us.max(tombstone_us + 1);
                    let swap = (since_us, follower, user, -tombstone_us);
                    match self.cas::<SwapCasRow>(op, &self.st.edge_swap, swap).await? {
                        Cas::Applied => {
                            settled = Some((since_us, true));
                            break;
                        }
                        Cas::Rejected(row) => known = row.map(SwapCasRow::state),
                    }
                }
            }
        }
        let Some((since_us, created)) = settled else {
            return Err(StoreError::Unavailable(format!(
                "Cassandra follow: the edge {follower} -> {user} kept changing; try again"
            )));
        };
        // Written at the edge's own time on every call, so a retry repairs a `followers` row an
        // earlier attempt missed, and an unfollow's tombstone (one microsecond younger) wins
        // whichever of the two arrives first.
        self.execute(
            op,
            &self.st.follower_row_insert,
            (user, follower, since_us, since_us),
        )
        .await?;
        Ok((
            FollowEdge {
                created_at: from_micros(since_us),
                ..edge.clone()
            },
            created,
        ))
    }

    async fn unfollow(&self, follower: &str, following: &str) -> Result<(), StoreError> {
        let op = "unfollow";
        let mut known: Option<Option<EdgeState>> = None;
        for attempt in 0..EDGE_ATTEMPTS {
            edge_backoff(attempt).await;
            let current = match known.take() {
                Some(state) => state,
                None => self.edge(op, follower, following).await?,
            };
            let tombstone_us = match current {
                // Never followed: nothing to undo.
                None => return Ok(()),
                // Already unfollowed: the row delete again, in case the earlier call stopped
                // between its two writes.
                Some(EdgeState::Unfollowed { tombstone_us }) => tombstone_us,
                Some(EdgeState::Following(since_us)) => {
                    let tombstone_us = since_us + 1;
                    let swap = (-tombstone_us, follower, following, since_us);
                    match self.cas::<SwapCasRow>(op, &self.st.edge_swap, swap).await? {
                        Cas::Applied => tombstone_us,
                        Cas::Rejected(row) => {
                            known = row.map(SwapCasRow::state);
                            continue;
                        }
                    }
                }
            };
            self.execute(
                op,
                &self.st.follower_row_delete,
                (tombstone_us, following, follower),
            )
            .await?;
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "Cassandra unfollow: the edge {follower} -> {following} kept changing; try again"
        )))
    }

    async fn is_following(&self, follower: &str, following: &str) -> Result<bool, StoreError> {
        let state = self.edge("is_following", follower, following).await?;
        Ok(matches!(state, Some(EdgeState::Following(_))))
    }

    async fn followers(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        let rows: Vec<FollowerRow> = self
            .relations("followers", &self.st.followers_page, user, after, limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Relation {
                user: r.follower,
                since: from_micros(r.created_us),
            })
            .collect())
    }

    async fn following(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Relation>, StoreError> {
        // Rows of unfollowed edges stay (see `EdgeState`): skipped, page after page.
        let mut out = Vec::new();
        let mut after = after.map(str::to_owned);
        while out.len() < limit {
            let want = limit - out.len();
            let rows: Vec<FolloweeRow> = self
                .relations(
                    "following",
                    &self.st.following_page,
                    user,
                    after.as_deref(),
                    want,
                )
                .await?;
            let exhausted = rows.len() < want;
            after = rows.last().map(|r| r.followee.clone());
            out.extend(rows.into_iter().filter_map(|r| {
                match EdgeState::from_column(r.created_us) {
                    EdgeState::Following(since_us) => Some(Relation {
                        user: r.followee,
                        since: from_micros(since_us),
                    }),
                    EdgeState::Unfollowed { .. } => None,
                }
            }));
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    async fn put_activity(&self, activity: &Activity) -> Result<(Activity, bool), StoreError> {
        let op = "put_activity";
        let Some(foreign_id) = activity.foreign_id.as_deref() else {
            self.write_activity(activity).await?;
            return Ok((activity.clone(), true));
        };
        let (actor, id) = (activity.actor.as_str(), activity.id.as_str());
        let claim = || {
            self.cas::<ForeignIdCasRow>(
                op,
                &self.st.foreign_id_claim,
                (actor, foreign_id, id, now_us()),
            )
        };
        let mut outcome = claim().await?;
        // Each pass handles the outcome of one lightweight transaction and may run the next.
        for attempt in 1.. {
            let holder = match outcome {
                Cas::Applied => {
                    self.write_activity(activity).await?;
                    return Ok((activity.clone(), true));
                }
                Cas::Rejected(Some(row)) => ForeignIdRow {
                    id: row.id,
                    claimed_us: row.claimed_us,
                },
                Cas::Rejected(None) => match self.foreign_id_holder(actor, foreign_id).await? {
                    Some(holder) => holder,
                    // Released in between (its activity was deleted): claim it again.
                    None if attempt < CAS_ATTEMPTS => {
                        outcome = claim().await?;
                        continue;
                    }
                    None => break,
                },
            };
            if let Some(existing) = self.get_activity(&holder.id).await? {
                return Ok((existing, false));
            }
            // The holder's activity is missing: its request crashed before writing it, or it was
            // deleted and the mapping not released. A young claim may still be being written.
            let age = Duration::from_micros(
                now_us()
                    .saturating_sub(holder.claimed_us.unwrap_or(0))
                    .max(0) as u64,
            );
            if age < self.claim_grace {
                return Err(StoreError::Unavailable(format!(
                    "Cassandra put_activity: activity {} with foreign_id {foreign_id:?} is still being stored; try again shortly",
                    holder.id
                )));
            }
            if attempt >= CAS_ATTEMPTS {
                break;
            }
            let take_over = (id, now_us(), actor, foreign_id, holder.id.as_str());
            outcome = match self
                .cas::<AppliedRow>(op, &self.st.foreign_id_take_over, take_over)
                .await?
            {
                Cas::Applied => Cas::Applied,
                // Someone else changed it first: look again.
                Cas::Rejected(_) => Cas::Rejected(None),
            };
        }
        Err(StoreError::Unavailable(format!(
            "Cassandra put_activity: foreign_id {foreign_id:?} of {actor} kept changing; try again"
        )))
    }

    async fn get_activity(&self, id: &str) -> Result<Option<Activity>, StoreError> {
        let row: Option<ActivityRow> = self
            .get_row("get_activity", &self.st.activity_get, (id,))
            .await?;
        row.map(ActivityRow::into_activity).transpose()
    }

    async fn delete_activity(&self, activity: &Activity) -> Result<(), StoreError> {
        let op = "delete_activity";
        let (id, actor) = (activity.id.as_str(), activity.actor.as_str());
        // The reverse of `write_activity`: once the `activities` row is gone the activity is gone.
        self.execute(op, &self.st.activity_delete, (id,)).await?;
        self.execute(op, &self.st.user_activity_delete, (actor, id))
            .await?;
        if let Some(foreign_id) = activity.foreign_id.as_deref() {
            // Only if it still names this activity: a newer one may have taken it over.
            self.cas::<AppliedRow>(op, &self.st.foreign_id_release, (actor, foreign_id, id))
                .await?;
        }
        Ok(())
    }

    async fn user_feed(
        &self,
        actor: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.activities("user_feed", &self.st.user_feed_page, actor, range, limit)
            .await
    }

    async fn timeline(
        &self,
        owner: &str,
        range: IdRange<'_>,
        limit: usize,
    ) -> Result<Vec<Activity>, StoreError> {
        self.activities("timeline", &self.st.timeline_page, owner, range, limit)
            .await
    }

    async fn insert_timeline(&self, entries: &[TimelineEntry]) -> Result<(), StoreError> {
        // One single-partition write per row, concurrently: rows of different owners are different
        // partitions, which a batch would only make slower (and Keyspaces caps batches).
        let writes: Vec<_> = entries
            .iter()
            .map(|TimelineEntry { owner, activity }| {
                let (id, actor, verb, object, target, time_us, foreign_id, extra) =
                    activity_values(activity);
                let values = (
                    owner.as_str(),
                    id,
                    actor,
                    verb,
                    object,
                    target,
                    time_us,
                    foreign_id,
                    extra,
                );
                self.execute("insert_timeline", &self.st.timeline_insert, values)
            })
            .collect();
        run_concurrently(writes).await
    }

    async fn delete_timeline(&self, rows: &[(String, String)]) -> Result<(), StoreError> {
        let writes: Vec<_> = rows
            .iter()
            .map(|(owner, id)| {
                self.execute(
                    "delete_timeline",
                    &self.st.timeline_delete,
                    (owner.as_str(), id.as_str()),
                )
            })
            .collect();
        run_concurrently(writes).await
    }
}

/// Runs the writes with at most [`WRITE_CONCURRENCY`] in flight; the first error wins.
async fn run_concurrently<F>(writes: Vec<F>) -> Result<(), StoreError>
where
    F: std::future::Future<Output = Result<QueryResult, StoreError>>,
{
    futures::stream::iter(writes)
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use crate::model::ActivityId;

    /// The local test cluster's configuration, in its own keyspace.
    fn test_config() -> CassandraConfig {
        let mut cfg = CassandraConfig::from_env().expect("FEEDS_CASSANDRA_* variables");
        cfg.keyspace = "feeds_test".to_owned();
        cfg
    }

    async fn test_store() -> CassandraStore {
        let cfg = test_config();
        let session = match connect(&cfg).await {
            Ok(session) => session,
            Err(e) => panic!(
                "Cassandra is not reachable at {} ({e}).\nStart it with `scripts/cassandra.sh start` \
                 (or point FEEDS_CASSANDRA_NODES at a running node).",
                cfg.nodes.join(",")
            ),
        };
        migrate(&session, &cfg).await.expect("migrate");
        migrate(&session, &cfg)
            .await
            .expect("migrate is idempotent");
        CassandraStore::new(Arc::new(session), &cfg)
            .await
            .expect("prepare statements")
    }

    #[tokio::test]
    async fn cassandra_store_passes_the_conformance_suite() {
        let store = test_store().await;
        crate::store::conformance::run(&store).await;
    }

    fn activity(actor: &str, foreign_id: &str) -> Activity {
        let time = crate::model::parse_time("2026-11-29T10:00:00.000001Z").unwrap();
        Activity {
            id: ActivityId::new(time).0,
            actor: actor.to_owned(),
            verb: "post".to_owned(),
            object: "obj_1".to_owned(),
            target: None,
            time,
            foreign_id: Some(foreign_id.to_owned()),
            extra: None,
        }
    }

    #[tokio::test]
    async fn a_foreign_id_whose_activity_is_missing_is_taken_over_once_its_claim_is_old() {
        let store = test_store().await;
        let actor = format!("actor_{:016x}", rand::random::<u64>());
        // Makes `id` hold the mapping, claimed at `claimed_us`, as a request that crashed before
        // writing its activity would have left it.
        let claim = |id: String, claimed_us: i64| {
            let (store, actor) = (&store, actor.clone());
            async move {
                let (st, actor, id) = (&store.st, actor.as_str(), id.as_str());
                store
                    .execute(
                        "test",
                        &st.foreign_id_claim,
                        (actor, "post:1", id, claimed_us),
                    )
                    .await
                    .unwrap();
                let holder = store
                    .foreign_id_holder(actor, "post:1")
                    .await
                    .unwrap()
                    .expect("a holder");
                let take_over = (id, claimed_us, actor, "post:1", holder.id.as_str());
                store
                    .execute("test", &st.foreign_id_take_over, take_over)
                    .await
                    .unwrap();
            }
        };

        // A request that claimed the foreign_id a moment ago may still be writing its activity.
        let ghost = ActivityId::new(chrono::Utc::now()).0;
        claim(ghost.clone(), now_us()).await;
        let retry = activity(&actor, "post:1");
        match store.put_activity(&retry).await {
            Err(StoreError::Unavailable(message)) => assert!(message.contains(&ghost), "{message}"),
            other => panic!("a young claim is not taken over: {other:?}"),
        }

        // One that claimed it long ago crashed: the retry takes it over.
        let long_ago = now_us() - Duration::from_secs(3600).as_micros() as i64;
        claim(ghost.clone(), long_ago).await;
        let (stored, created) = store.put_activity(&retry).await.unwrap();
        assert!(created, "the crashed claim is taken over");
        assert_eq!(stored, retry);
        assert_eq!(
            store.get_activity(&retry.id).await.unwrap(),
            Some(retry.clone())
        );
        let again = activity(&actor, "post:1");
        assert_eq!(
            store.put_activity(&again).await.unwrap(),
            (retry.clone(), false)
        );

        // Deleting an activity whose mapping was taken over leaves the new holder's mapping alone.
        let mut old = retry.clone();
        old.id = ghost;
        store.delete_activity(&old).await.unwrap();
        assert_eq!(store.put_activity(&again).await.unwrap(), (retry, false));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable() {
        let cfg = CassandraConfig {
            nodes: vec!["127.0.0.1:9".to_owned()],
            connect_timeout: Duration::from_millis(500),
            ..CassandraConfig::default()
        };
        match connect(&cfg).await {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("127.0.0.1:9"), "{message}")
            }
            Err(other) => panic!("a refused connection is transient: {other:?}"),
            Ok(_) => panic!("nothing listens on 127.0.0.1:9"),
        }
    }

    #[test]
    fn schema_statements_are_qualified_with_the_keyspace() {
        let statements = schema_statements(SCHEMA, "ks").unwrap();
        let tables: Vec<&str> = statements.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tables,
            [
                "activities",
                "user_activities",
                "activity_foreign_ids",
                "timeline",
                "followers",
                "following"
            ]
        );
        for (table, cql) in &statements {
            assert!(
                cql.starts_with(&format!("CREATE TABLE IF NOT EXISTS ks.{table} (")),
                "{cql}"
            );
            assert!(!cql.contains("--"), "comments are stripped: {cql}");
        }
        assert!(
            schema_statements("CREATE TABLE t (a int PRIMARY KEY);", "ks").is_err(),
            "IF NOT EXISTS is required"
        );
        assert!(schema_statements(
            "CREATE TABLE IF NOT EXISTS other.t (a int PRIMARY KEY);",
            "ks"
        )
        .is_err());
        assert!(schema_statements("DROP TABLE t;", "ks").is_err());
    }

    #[test]
    fn config_reads_the_environment_and_names_a_bad_variable() {
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            CassandraConfig::from_lookup(move |name| map.get(name).cloned())
        };
        assert_eq!(env(&[]).unwrap(), CassandraConfig::default());
        let cfg = env(&[
            (
                "FEEDS_CASSANDRA_NODES",
                "10.0.0.1:9042, cassandra.local:9142",
            ),
            ("FEEDS_CASSANDRA_KEYSPACE", "feeds_prod"),
            ("FEEDS_CASSANDRA_USERNAME", "svc"),
            ("FEEDS_CASSANDRA_PASSWORD", "s3cret"),
            ("FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS", "1500"),
            ("FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS", "2500"),
            (
                "FEEDS_CASSANDRA_REPLICATION",
                "{'class': 'SingleRegionStrategy'}",
            ),
        ])
        .unwrap();
        assert_eq!(cfg.nodes, ["10.0.0.1:9042", "cassandra.local:9142"]);
        assert_eq!(cfg.keyspace, "feeds_prod");
        assert_eq!(
            (cfg.username.as_deref(), cfg.password.as_deref()),
            (Some("svc"), Some("s3cret"))
        );
        assert_eq!(cfg.connect_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.request_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.replication, "{'class': 'SingleRegionStrategy'}");

        for (name, value) in [
            ("FEEDS_CASSANDRA_NODES", "localhost"),
            ("FEEDS_CASSANDRA_NODES", "a:9042,,b:9042"),
            ("FEEDS_CASSANDRA_KEYSPACE", "feeds-prod"),
            ("FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS", "3s"),
            ("FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS", "0"),
            ("FEEDS_CASSANDRA_REPLICATION", "SimpleStrategy"),
            ("FEEDS_CASSANDRA_AUTH", "kerberos"),
            // Service-specific credentials asked for, but none given.
            ("FEEDS_CASSANDRA_AUTH", "password"),
        ] {
            let err = env(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{name}={value}: {err}");
        }
    }
}
