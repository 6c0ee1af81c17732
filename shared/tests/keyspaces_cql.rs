//! Amazon Keyspaces accepts a subset of CQL. This test reads every CQL statement the project can
//! send — the schema file and every statement text in the Cassandra store's source — and every
//! consistency level it sets, and fails on anything Keyspaces rejects.

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of every string literal in Rust source that holds a CQL statement.
fn cql_literals(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        let literal = &after[..end.min(after.len())];
        let upper = literal.trim_start().to_ascii_uppercase();
        let verbs = [
            "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "ALTER ", "DROP ", "TRUNCATE",
            "BEGIN ",
        ];
        if verbs.iter().any(|v| upper.starts_with(v)) {
            out.push(literal.to_owned());
        }
        rest = &after[(end + 1).min(after.len())..];
    }
    out
}

fn schema_statements(schema: &str) -> Vec<String> {
    let without_comments: String = schema
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why Keyspaces would reject a statement, if it would.
fn keyspaces_rejects(cql: &str) -> Option<String> {
    let upper = cql
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let unsupported = [
        ("CREATE INDEX", "secondary indexes"),
        ("CREATE CUSTOM INDEX", "secondary indexes"),
        ("MATERIALIZED VIEW", "materialized views"),
        ("CREATE TRIGGER", "triggers"),
        ("CREATE FUNCTION", "user-defined functions"),
        ("CREATE OR REPLACE FUNCTION", "user-defined functions"),
        ("CREATE AGGREGATE", "user-defined aggregates"),
        ("TRUNCATE", "TRUNCATE"),
        (
            "USING TIMESTAMP",
            "USING TIMESTAMP without client-side timestamps",
        ),
        ("PER PARTITION LIMIT", "PER PARTITION LIMIT"),
        ("GROUP BY", "GROUP BY"),
    ];
    for (needle, what) in unsupported {
        if upper.contains(needle) {
            return Some(format!("Keyspaces does not support {what}"));
        }
    }
    if upper.starts_with("BEGIN") {
        let statements = upper.matches("INSERT ").count()
            + upper.matches("UPDATE ").count()
            + upper.matches("DELETE ").count();
        if statements > 30 {
            return Some(format!(
                "a batch of {statements} statements (at most 30 unlogged / 100 logged)"
            ));
        }
    }
    if let Some(at) = upper.find(" IN (") {
        let list = &upper[at + 5..upper[at..].find(')').map_or(upper.len(), |e| at + e)];
        if list.split(',').count() > 100 {
            return Some("IN with more than 100 values".into());
        }
    }
    if upper.starts_with("CREATE TABLE") {
        if let Some(with) = upper.rfind(") WITH ") {
            let options = &upper[with + 7..];
            for option in options.split(" AND ") {
                let known = option.starts_with("CLUSTERING ORDER BY")
                    || option.starts_with("DEFAULT_TIME_TO_LIVE")
                    || option.starts_with("CUSTOM_PROPERTIES");
                if !known {
                    return Some(format!("table option `{option}`"));
                }
            }
        }
    }
    None
}

#[test]
fn every_statement_the_project_sends_is_accepted_by_keyspaces() {
    let mut statements = schema_statements(&read("etc/schema.cql"));
    let schema_count = statements.len();
    assert!(
        schema_count >= 6,
        "the schema file holds the tables: {statements:?}"
    );
    let source = read("shared/src/store/cassandra.rs");
    let queries = cql_literals(&source);
    assert!(
        queries.len() >= 20,
        "the store's statements were found: {queries:#?}"
    );
    statements.extend(queries);
    let rejected: Vec<String> = statements
        .iter()
        .filter_map(|s| keyspaces_rejects(s).map(|why| format!("{why}: {s}")))
        .collect();
    assert!(
        rejected.is_empty(),
        "Keyspaces would reject:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn consistency_levels_are_ones_keyspaces_accepts() {
    let source = read("shared/src/store/cassandra.rs");
    // Writes LOCAL_QUORUM; reads ONE, LOCAL_ONE or LOCAL_QUORUM; lightweight transactions LOCAL_SERIAL.
    let allowed = [
        "Consistency::LocalQuorum",
        "Consistency::LocalOne",
        "Consistency::One",
        "SerialConsistency::LocalSerial",
    ];
    let mut used = Vec::new();
    for (i, _) in source.match_indices("Consistency::") {
        let start = source[..i]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let end = i
            + "Consistency::".len()
            + source[i + "Consistency::".len()..]
                .find(|c: char| !c.is_alphanumeric())
                .unwrap_or(0);
        used.push(source[start..end].to_owned());
    }
    assert!(
        used.iter().any(|u| u == "Consistency::LocalQuorum"),
        "the default profile sets LOCAL_QUORUM"
    );
    let bad: Vec<&String> = used
        .iter()
        .filter(|u| !allowed.contains(&u.as_str()))
        .collect();
    assert!(bad.is_empty(), "Keyspaces rejects {bad:?}");
}

#[test]
fn the_checker_catches_what_keyspaces_rejects() {
    for cql in [
        "CREATE INDEX ON t (c)",
        "CREATE MATERIALIZED VIEW v AS SELECT * FROM t",
        "TRUNCATE timeline",
        "INSERT INTO t (a) VALUES (1) USING TIMESTAMP 5",
        "CREATE TABLE IF NOT EXISTS t (a text PRIMARY KEY) WITH compaction = {'class': 'LeveledCompactionStrategy'}",
        &format!("SELECT * FROM t WHERE a IN ({})", vec!["?"; 101].join(", ")),
    ] {
        assert!(keyspaces_rejects(cql).is_some(), "{cql}");
    }
    assert_eq!(keyspaces_rejects("CREATE TABLE IF NOT EXISTS t (a text, b text, PRIMARY KEY ((a), b)) WITH CLUSTERING ORDER BY (b DESC)"), None);
    assert_eq!(
        cql_literals(r#"let x = format!("SELECT a FROM {ks}.t WHERE a = ?"); let y = "hello";"#),
        ["SELECT a FROM {ks}.t WHERE a = ?"]
    );
}
