//! The schema: `etc/schema.cql` applied inside the configured keyspace, and on Amazon Keyspaces
//! the wait until every keyspace and table it creates is ready.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Statement;

use super::errors::store_error;
use super::rows::{KeyspaceRow, TableStatusRow};
use super::CassandraConfig;
use crate::store::StoreError;

/// The schema, applied by [`migrate`] inside the configured keyspace.
const SCHEMA: &str = include_str!("../../../../etc/schema.cql");

/// Tables written `USING TIMESTAMP` (see `EdgeState`), which Amazon Keyspaces must be told to
/// accept: `template.yaml` sets `ClientSideTimestampsEnabled` on them, `migrate` alters them.
pub const CLIENT_SIDE_TIMESTAMP_TABLES: [&str; 4] = [
    "followers",
    "feed_groups",
    "notification_marks",
    "user_counts",
];

/// Timeout of each schema statement (DDL takes longer than a data request).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`migrate`] waits for Amazon Keyspaces to finish creating a keyspace or table.
const DDL_WAIT: Duration = Duration::from_secs(300);

/// Creates the keyspace (with `cfg.replication`) and every table of `etc/schema.cql` in it, then
/// waits until the cluster agrees on the schema (and, on Amazon Keyspaces, until every table is
/// `ACTIVE`). Safe to run again: every statement is `IF NOT EXISTS`.
pub async fn migrate(session: &Session, cfg: &CassandraConfig) -> Result<(), StoreError> {
    let keyspace = cfg.checked_keyspace()?;
    let replication = cfg.checked_replication()?;
    let statements = schema_statements(SCHEMA, keyspace)?;
    run_ddl(
        session,
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"),
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
        let columns = declared_columns(&cql);
        let cql = match amazon_keyspaces {
            true => keyspaces_create(cql),
            false => cql,
        };
        run_ddl(session, cql).await?;
        // A table created by an earlier release lacks the columns added since: add them.
        let missing = missing_columns(session, keyspace, &table, columns).await?;
        for (column, kind) in &missing {
            tracing::info!(table = %table, column = %column, "adding a column");
            let alter = format!("ALTER TABLE {keyspace}.{table} ADD {column} {kind}");
            if let Err(e) = run_ddl(session, alter).await {
                // Another migration running at the same time may have added it first.
                let still = missing_columns(session, keyspace, &table, missing.clone()).await?;
                if still.iter().any(|(c, _)| c == column) {
                    return Err(e);
                }
            }
        }
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

/// A table created on Amazon Keyspaces: with point-in-time recovery (a restore to any second of the
/// last 35 days), as `template.yaml` creates them, and with TTL enabled where it has a default TTL,
/// which Keyspaces wants before it expires rows. Cassandra knows no such properties.
fn keyspaces_create(create: String) -> String {
    let lower = create.to_ascii_lowercase();
    let mut properties = vec!["'point_in_time_recovery': {'status': 'enabled'}"];
    if lower.contains("default_time_to_live") {
        properties.push("'ttl': {'status': 'enabled'}");
    }
    // `WITH` is a reserved word: it cannot name a column or a type, only start the options.
    let has_options = lower.split_whitespace().any(|word| word == "with");
    let joiner = if has_options { "AND" } else { "WITH" };
    format!(
        "{create} {joiner} custom_properties = {{{}}}",
        properties.join(", ")
    )
}

/// The `(name, type)` of each column a `CREATE TABLE` statement declares.
fn declared_columns(create: &str) -> Vec<(String, String)> {
    let Some(open) = create.find('(') else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, open + 1);
    for (i, c) in create.char_indices().skip(open + 1) {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' if depth > 0 => depth -= 1,
            ',' | ')' if depth == 0 => {
                parts.push(create[start..i].trim());
                start = i + 1;
                if c == ')' {
                    break;
                }
            }
            _ => {}
        }
    }
    parts
        .into_iter()
        .filter(|p| !p.to_ascii_uppercase().starts_with("PRIMARY KEY"))
        .filter_map(|p| {
            let (name, kind) = p.split_once(char::is_whitespace)?;
            Some((name.to_ascii_lowercase(), kind.trim().to_owned()))
        })
        .collect()
}

/// Those of `declared` that `keyspace.table` does not have.
async fn missing_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
    declared: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, StoreError> {
    const CQL: &str =
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?";
    let op = format!("migrate: columns of {keyspace}.{table}");
    let result = session
        .query_unpaged(CQL, (keyspace, table))
        .await
        .map_err(|e| store_error(&op, e))?;
    let rows = result.into_rows_result().map_err(|e| store_error(&op, e))?;
    let mut existing = std::collections::HashSet::new();
    for row in rows.rows::<(String,)>().map_err(|e| store_error(&op, e))? {
        existing.insert(row.map_err(|e| store_error(&op, e))?.0);
    }
    Ok(declared
        .into_iter()
        .filter(|(name, _)| !existing.contains(name))
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

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
                "feed_groups",
                "pulled_authors",
                "pulled_activities",
                "pulled_followees",
                "notification_marks",
                "user_counts",
                "rate_windows",
                "connections",
                "connection_users",
                "pulled_connections",
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
    fn keyspaces_creates_every_table_with_point_in_time_recovery_and_ttl_where_it_expires_rows() {
        let statements = schema_statements(SCHEMA, "ks").unwrap();
        for (table, cql) in &statements {
            let created = keyspaces_create(cql.clone());
            assert!(
                created.contains("'point_in_time_recovery': {'status': 'enabled'}"),
                "{created}"
            );
            assert_eq!(
                created.matches(" custom_properties = ").count(),
                1,
                "{table}: {created}"
            );
        }
        let with_ttl: Vec<&str> = statements
            .iter()
            .filter(|(_, cql)| keyspaces_create(cql.clone()).contains("'ttl'"))
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(
            with_ttl,
            ["connections", "connection_users", "pulled_connections"]
        );
        let created = |table: &str| {
            let (_, cql) = statements.iter().find(|(t, _)| t == table).unwrap();
            keyspaces_create(cql.clone())
        };
        assert!(created("connections").ends_with(
            "WITH default_time_to_live = 7200 AND custom_properties = {'point_in_time_recovery': {'status': 'enabled'}, 'ttl': {'status': 'enabled'}}"
        ));
        assert!(created("timeline").ends_with(
            "WITH CLUSTERING ORDER BY (id DESC) AND custom_properties = {'point_in_time_recovery': {'status': 'enabled'}}"
        ));
        assert!(created("pulled_authors").ends_with(
            ") WITH custom_properties = {'point_in_time_recovery': {'status': 'enabled'}}"
        ));
    }

    #[test]
    fn declared_columns_are_read_from_a_create_statement() {
        let cql = "CREATE TABLE IF NOT EXISTS ks.t (\n a text,\n b map<text, int>,\n c list<text>,\n                    PRIMARY KEY ((a), b)\n) WITH CLUSTERING ORDER BY (b DESC)";
        let columns = declared_columns(cql);
        assert_eq!(
            columns,
            [
                ("a".to_owned(), "text".to_owned()),
                ("b".to_owned(), "map<text, int>".to_owned()),
                ("c".to_owned(), "list<text>".to_owned()),
            ]
        );
        for (table, cql) in schema_statements(SCHEMA, "ks").unwrap() {
            let names: Vec<String> = declared_columns(&cql).into_iter().map(|c| c.0).collect();
            assert!(names.len() >= 2, "{table}: {names:?}");
            assert!(!names.iter().any(|n| n == "primary"), "{table}: {names:?}");
        }
    }
}
