//! Amazon Keyspaces accepts a subset of CQL. This test reads every CQL statement the project can
//! send — the schema file and every statement text in the Cassandra store's source — and every
//! consistency level it sets, and fails on anything Keyspaces rejects. It also checks that the
//! `AWS::Cassandra::Table` resources of template.yaml declare the schema's tables column for column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use feeds::store::cassandra::CLIENT_SIDE_TIMESTAMP_TABLES;

use yaml_rust2::{Yaml, YamlLoader};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Cassandra store's source: every file of its module, in name order, but the authenticator
/// and TLS files, which send no CQL.
fn store_source() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/cassandra");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter(|path| !path.ends_with("sigv4.rs") && !path.ends_with("tls.rs"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
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

/// The table a DML statement writes or reads, without its keyspace.
fn dml_table(upper: &str) -> Option<String> {
    let rest = [
        "INSERT INTO ",
        "UPDATE ",
        "DELETE FROM ",
        "DELETE ",
        "SELECT ",
    ]
    .iter()
    .find_map(|verb| upper.strip_prefix(verb))?;
    // `SELECT <columns> FROM t`, `DELETE <columns> FROM t`.
    let rest = match rest.find(" FROM ") {
        Some(at) if upper.starts_with("SELECT ") || upper.starts_with("DELETE ") => &rest[at + 6..],
        _ => rest,
    };
    let name = rest.split([' ', '(']).next()?;
    Some(name.rsplit('.').next()?.to_ascii_lowercase())
}

/// Why Keyspaces would reject a statement, if it would. `client_side_timestamps`: the tables that
/// have client-side timestamps turned on, the only ones that take `USING TIMESTAMP`.
fn keyspaces_rejects(cql: &str, client_side_timestamps: &[&str]) -> Option<String> {
    let upper = cql
        .to_ascii_uppercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if upper.contains("USING TIMESTAMP") {
        let table = dml_table(&upper);
        if !table
            .as_ref()
            .is_some_and(|t| client_side_timestamps.contains(&t.as_str()))
        {
            return Some(format!(
                "Keyspaces does not support USING TIMESTAMP without client-side timestamps ({table:?})"
            ));
        }
    }
    let unsupported = [
        ("CREATE INDEX", "secondary indexes"),
        ("CREATE CUSTOM INDEX", "secondary indexes"),
        ("MATERIALIZED VIEW", "materialized views"),
        ("CREATE TRIGGER", "triggers"),
        ("CREATE FUNCTION", "user-defined functions"),
        ("CREATE OR REPLACE FUNCTION", "user-defined functions"),
        ("CREATE AGGREGATE", "user-defined aggregates"),
        ("TRUNCATE", "TRUNCATE"),
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
    let source = store_source();
    let queries = cql_literals(&source);
    assert!(
        queries.len() >= 20,
        "the store's statements were found: {queries:#?}"
    );
    statements.extend(queries);
    // Client-side timestamps: turned on by the template, and by `migrate` on Keyspaces.
    let enabled = client_side_timestamp_tables(&read("template.yaml"));
    for table in CLIENT_SIDE_TIMESTAMP_TABLES {
        assert!(
            enabled.iter().any(|t| t == table),
            "template.yaml must set ClientSideTimestampsEnabled on {table}: {enabled:?}"
        );
    }
    let rejected: Vec<String> = statements
        .iter()
        .filter_map(|s| {
            keyspaces_rejects(s, &CLIENT_SIDE_TIMESTAMP_TABLES).map(|why| format!("{why}: {s}"))
        })
        .collect();
    assert!(
        rejected.is_empty(),
        "Keyspaces would reject:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn every_keyspaces_table_keeps_point_in_time_recovery() {
    let template = read("template.yaml");
    let all = tables_where(&template, |_| true);
    assert!(all.len() >= 10, "the template's tables: {all:?}");
    let recoverable = tables_where(&template, |p| {
        p["PointInTimeRecoveryEnabled"].as_bool() == Some(true)
    });
    assert_eq!(
        recoverable, all,
        "PointInTimeRecoveryEnabled: true on every table"
    );
}

#[test]
fn consistency_levels_are_ones_keyspaces_accepts() {
    let source = store_source();
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
        "DELETE FROM ks.timeline USING TIMESTAMP ? WHERE owner = ?",
        "CREATE TABLE IF NOT EXISTS t (a text PRIMARY KEY) WITH compaction = {'class': 'LeveledCompactionStrategy'}",
        &format!("SELECT * FROM t WHERE a IN ({})", vec!["?"; 101].join(", ")),
    ] {
        assert!(keyspaces_rejects(cql, &["followers"]).is_some(), "{cql}");
    }
    assert_eq!(keyspaces_rejects("CREATE TABLE IF NOT EXISTS t (a text, b text, PRIMARY KEY ((a), b)) WITH CLUSTERING ORDER BY (b DESC)", &[]), None);
    for cql in [
        "INSERT INTO ks.followers (user, follower) VALUES (?, ?) USING TIMESTAMP ?",
        "DELETE FROM {ks}.followers USING TIMESTAMP ? WHERE user = ?",
    ] {
        assert_eq!(keyspaces_rejects(cql, &["followers"]), None, "{cql}");
        assert!(keyspaces_rejects(cql, &[]).is_some(), "{cql}");
    }
    assert_eq!(
        client_side_timestamp_tables(
            "Resources:\n  A:\n    Type: AWS::Cassandra::Table\n    Properties:\n      TableName: a\n      ClientSideTimestampsEnabled: true\n  B:\n    Type: AWS::Cassandra::Table\n    Properties:\n      TableName: b\n"
        ),
        ["a"]
    );
    assert_eq!(
        cql_literals(r#"let x = format!("SELECT a FROM {ks}.t WHERE a = ?"); let y = "hello";"#),
        ["SELECT a FROM {ks}.t WHERE a = ?"]
    );
}

/// A table's key and columns, as (name, type) with the type in lower case and without spaces.
#[derive(Debug, PartialEq)]
struct TableShape {
    partition_key: Vec<(String, String)>,
    /// (name, type, ASC or DESC), in key order.
    clustering: Vec<(String, String, String)>,
    regular: BTreeSet<(String, String)>,
}

fn column_type(declared: &str) -> String {
    declared
        .split_whitespace()
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The comma-separated parts of `list`, not splitting inside parentheses or angle brackets.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(list[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The text inside the parenthesis that opens at byte `open` of `text`, and the text after it.
fn parenthesised(text: &str, open: usize) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&text[open + 1..open + i], &text[open + i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// The name and shape of the table a `CREATE TABLE` statement creates.
fn cql_table(statement: &str) -> Result<(String, TableShape), String> {
    let open = statement.find('(').ok_or("no column list")?;
    let words: Vec<&str> = statement[..open].split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let name = match upper[..] {
        ["CREATE", "TABLE", _] => words[2],
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", _] => words[5],
        _ => return Err("not a CREATE TABLE statement".into()),
    };
    let (body, options) = parenthesised(statement, open).ok_or("unbalanced parentheses")?;

    let mut columns: Vec<(String, String)> = Vec::new();
    let mut key: Option<(Vec<String>, Vec<String>)> = None;
    for definition in split_top_level(body) {
        let words: Vec<&str> = definition.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let inline_key = upper.len() > 3 && upper[upper.len() - 2..] == ["PRIMARY", "KEY"];
        if upper.first().map(String::as_str) == Some("PRIMARY") {
            let open = definition.find('(').ok_or("PRIMARY KEY without columns")?;
            let (inner, _) = parenthesised(definition, open).ok_or("unbalanced PRIMARY KEY")?;
            let parts = split_top_level(inner);
            let (partition, clustering) = parts.split_first().ok_or("empty PRIMARY KEY")?;
            let partition = match partition
                .strip_prefix('(')
                .and_then(|p| p.strip_suffix(')'))
            {
                Some(list) => split_top_level(list),
                None => vec![*partition],
            };
            let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
            if key
                .replace((owned(&partition), owned(clustering)))
                .is_some()
            {
                return Err("two primary keys".into());
            }
        } else if inline_key {
            columns.push((
                words[0].to_owned(),
                column_type(&words[1..words.len() - 2].join(" ")),
            ));
            if key
                .replace((vec![words[0].to_owned()], Vec::new()))
                .is_some()
            {
                return Err("two primary keys".into());
            }
        } else if words.len() >= 2 {
            columns.push((words[0].to_owned(), column_type(&words[1..].join(" "))));
        } else {
            return Err(format!("cannot read the column `{definition}`"));
        }
    }
    let (partition, clustering) = key.ok_or("no PRIMARY KEY")?;

    let mut order = BTreeMap::new();
    let options = options.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(at) = options.to_ascii_uppercase().find("CLUSTERING ORDER BY") {
        let open = at
            + options[at..]
                .find('(')
                .ok_or("CLUSTERING ORDER BY without columns")?;
        let (list, _) = parenthesised(&options, open).ok_or("unbalanced CLUSTERING ORDER BY")?;
        for item in split_top_level(list) {
            match item.split_whitespace().collect::<Vec<_>>()[..] {
                [column, direction]
                    if ["ASC", "DESC"].contains(&direction.to_ascii_uppercase().as_str()) =>
                {
                    if !clustering.iter().any(|c| c == column) {
                        return Err(format!(
                            "{column} is ordered but is not a clustering column"
                        ));
                    }
                    order.insert(column.to_owned(), direction.to_ascii_uppercase());
                }
                _ => return Err(format!("cannot read the clustering order `{item}`")),
            }
        }
    }

    let type_of = |column: &String| {
        columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| format!("the key column {column} is not declared"))
    };
    let shape = TableShape {
        partition_key: partition
            .iter()
            .map(|c| Ok((c.clone(), type_of(c)?)))
            .collect::<Result<_, String>>()?,
        clustering: clustering
            .iter()
            .map(|c| {
                let direction = order.get(c).cloned().unwrap_or_else(|| "ASC".into());
                Ok((c.clone(), type_of(c)?, direction))
            })
            .collect::<Result<_, String>>()?,
        regular: columns
            .iter()
            .filter(|(name, _)| !partition.contains(name) && !clustering.contains(name))
            .cloned()
            .collect(),
    };
    Ok((name.to_owned(), shape))
}

/// The tables a CQL schema creates, and what could not be read.
fn cql_tables(schema: &str) -> (BTreeMap<String, TableShape>, Vec<String>) {
    let mut tables = BTreeMap::new();
    let mut problems = Vec::new();
    for statement in schema_statements(schema) {
        match cql_table(&statement) {
            Ok((name, shape)) => {
                if tables.insert(name.clone(), shape).is_some() {
                    problems.push(format!("the schema creates table {name} twice"));
                }
            }
            Err(why) => problems.push(format!("the schema: {why}: {statement}")),
        }
    }
    (tables, problems)
}

/// The name and shape of an `AWS::Cassandra::Table` resource's table.
fn template_table(properties: &Yaml) -> Result<(String, TableShape), String> {
    let name = properties["TableName"]
        .as_str()
        .ok_or("no TableName string")?;
    let list = |key: &str| match &properties[key] {
        Yaml::BadValue => Ok(&[][..]),
        value => value
            .as_vec()
            .map(Vec::as_slice)
            .ok_or_else(|| format!("{key} is not a list")),
    };
    let column = |c: &Yaml| match (c["ColumnName"].as_str(), c["ColumnType"].as_str()) {
        (Some(name), Some(declared)) => Ok((name.to_owned(), column_type(declared))),
        _ => Err(format!("a column without ColumnName and ColumnType: {c:?}")),
    };
    let shape = TableShape {
        partition_key: list("PartitionKeyColumns")?
            .iter()
            .map(column)
            .collect::<Result<_, _>>()?,
        clustering: list("ClusteringKeyColumns")?
            .iter()
            .map(|c| {
                let (name, declared) = column(&c["Column"])?;
                let direction = match &c["OrderBy"] {
                    Yaml::BadValue => "ASC",
                    value => value.as_str().ok_or("OrderBy is not a string")?,
                };
                Ok((name, declared, direction.to_owned()))
            })
            .collect::<Result<_, String>>()?,
        regular: list("RegularColumns")?
            .iter()
            .map(column)
            .collect::<Result<_, _>>()?,
    };
    Ok((name.to_owned(), shape))
}

/// The `AWS::Cassandra::Table` resources of a CloudFormation template, and what could not be read.
fn template_tables(template: &str) -> (BTreeMap<String, TableShape>, Vec<String>) {
    let mut tables = BTreeMap::new();
    let mut problems = Vec::new();
    let documents = match YamlLoader::load_from_str(template) {
        Ok(documents) => documents,
        Err(e) => return (tables, vec![format!("the template does not parse: {e}")]),
    };
    let Some(resources) = documents.first().and_then(|d| d["Resources"].as_hash()) else {
        return (tables, vec!["the template has no Resources".into()]);
    };
    for (id, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::Cassandra::Table") {
            continue;
        }
        let id = id.as_str().unwrap_or("?");
        match template_table(&resource["Properties"]) {
            Ok((name, shape)) => {
                if tables.insert(name.clone(), shape).is_some() {
                    problems.push(format!("the template declares table {name} twice"));
                }
            }
            Err(why) => problems.push(format!("template resource {id}: {why}")),
        }
    }
    (tables, problems)
}

/// The template's Keyspaces tables with `ClientSideTimestampsEnabled: true`.
fn client_side_timestamp_tables(template: &str) -> Vec<String> {
    tables_where(template, |p| {
        p["ClientSideTimestampsEnabled"].as_bool() == Some(true)
    })
}

/// The names of the template's Keyspaces tables whose properties pass `check`.
fn tables_where(template: &str, check: impl Fn(&Yaml) -> bool) -> Vec<String> {
    let documents = YamlLoader::load_from_str(template).expect("the template parses");
    let Some(resources) = documents.first().and_then(|d| d["Resources"].as_hash()) else {
        return Vec::new();
    };
    resources
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Cassandra::Table"))
        .filter(|r| check(&r["Properties"]))
        .filter_map(|r| r["Properties"]["TableName"].as_str().map(str::to_owned))
        .collect()
}

/// Every way the Keyspaces tables of `template` differ from the tables `schema` creates.
fn template_schema_differences(template: &str, schema: &str) -> Vec<String> {
    let (in_schema, mut problems) = cql_tables(schema);
    let (in_template, template_problems) = template_tables(template);
    problems.extend(template_problems);
    let names: BTreeSet<&String> = in_schema.keys().chain(in_template.keys()).collect();
    for name in names {
        let (schema, template) = match (in_schema.get(name), in_template.get(name)) {
            (Some(schema), Some(template)) => (schema, template),
            (Some(_), None) => {
                problems.push(format!(
                    "table {name} is in the schema but not in the template"
                ));
                continue;
            }
            _ => {
                problems.push(format!(
                    "table {name} is in the template but not in the schema"
                ));
                continue;
            }
        };
        if schema.partition_key != template.partition_key {
            problems.push(format!(
                "table {name}, partition key: schema {:?} != template {:?}",
                schema.partition_key, template.partition_key
            ));
        }
        if schema.clustering != template.clustering {
            problems.push(format!(
                "table {name}, clustering columns: schema {:?} != template {:?}",
                schema.clustering, template.clustering
            ));
        }
        if schema.regular != template.regular {
            problems.push(format!(
                "table {name}, regular columns: only in the schema {:?}, only in the template {:?}",
                schema
                    .regular
                    .difference(&template.regular)
                    .collect::<Vec<_>>(),
                template
                    .regular
                    .difference(&schema.regular)
                    .collect::<Vec<_>>()
            ));
        }
    }
    problems
}

#[test]
fn template_tables_match_the_cql_schema_column_for_column() {
    let schema = read("etc/schema.cql");
    let template = read("template.yaml");
    let (tables, _) = cql_tables(&schema);
    assert!(
        tables.len() >= 6,
        "the schema's tables were read: {tables:?}"
    );
    let problems = template_schema_differences(&template, &schema);
    assert!(
        problems.is_empty(),
        "template.yaml and etc/schema.cql disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_comparison_catches_a_template_that_drifts_from_the_schema() {
    let schema = read("etc/schema.cql");
    let template = read("template.yaml");
    let altered = |from: &str, to: &str| {
        assert!(template.contains(from), "template.yaml holds `{from}`");
        template.replacen(from, to, 1)
    };
    let following = template
        .find("  FollowingTable:")
        .expect("a FollowingTable resource");
    let outputs = template.find("\nOutputs:").expect("an Outputs section");
    let without_following = format!("{}{}", &template[..following], &template[outputs..]);
    for (what, changed, expected) in [
        (
            "a renamed column",
            altered("ColumnName: claimed_us,", "ColumnName: claimed_at,"),
            "table activity_foreign_ids, regular columns",
        ),
        (
            "a flipped OrderBy",
            altered("OrderBy: DESC", "OrderBy: ASC"),
            "table user_activities, clustering columns",
        ),
        (
            "a removed table",
            without_following,
            "table following is in the schema but not in the template",
        ),
    ] {
        let problems = template_schema_differences(&changed, &schema);
        assert!(
            problems.len() == 1 && problems[0].starts_with(expected),
            "{what}: expected `{expected}`, got {problems:#?}"
        );
    }
    let upper_case_type = altered("ColumnType: bigint", "ColumnType: BIGINT");
    assert_eq!(
        template_schema_differences(&upper_case_type, &schema),
        Vec::<String>::new()
    );
    let (missing_table, _) = schema.split_at(schema.rfind("CREATE TABLE").unwrap());
    assert_eq!(
        template_schema_differences(&template, missing_table),
        ["table following is in the template but not in the schema"]
    );
}

#[test]
fn the_schema_reader_reads_keys_clustering_orders_and_collection_types() {
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    let (name, shape) =
        cql_table("create table t (a text PRIMARY KEY, m MAP<text, int>, s frozen<set<text>>)")
            .unwrap();
    assert_eq!(name, "t");
    assert_eq!(shape.partition_key, owned(&[("a", "text")]));
    assert!(shape.clustering.is_empty());
    assert_eq!(
        shape.regular,
        owned(&[("m", "map<text,int>"), ("s", "frozen<set<text>>")])
            .into_iter()
            .collect()
    );
    let (_, shape) = cql_table(
        "CREATE TABLE IF NOT EXISTS t (a text, b text, c int, d bigint, e text, \
         PRIMARY KEY ((a, b), c, d)) WITH CLUSTERING ORDER BY (d desc)",
    )
    .unwrap();
    assert_eq!(shape.partition_key, owned(&[("a", "text"), ("b", "text")]));
    assert_eq!(
        shape.clustering,
        [
            ("c".to_string(), "int".to_string(), "ASC".to_string()),
            ("d".to_string(), "bigint".to_string(), "DESC".to_string()),
        ]
    );
    assert_eq!(shape.regular, owned(&[("e", "text")]).into_iter().collect());
    for (cql, why) in [
        ("CREATE TABLE t (a text, b int)", "no PRIMARY KEY"),
        (
            "CREATE TABLE t (a text, PRIMARY KEY ((a), b))",
            "the key column b is not declared",
        ),
        (
            "CREATE TABLE t (a text, b int, PRIMARY KEY (a, b)) WITH CLUSTERING ORDER BY (a DESC)",
            "a is ordered but is not a clustering column",
        ),
        ("CREATE TYPE t (a text)", "not a CREATE TABLE statement"),
    ] {
        assert_eq!(cql_table(cql).err().as_deref(), Some(why), "{cql}");
    }
}

/// `default_time_to_live` of each table of a CQL schema that sets one.
fn schema_ttls(schema: &str) -> BTreeMap<String, i64> {
    let mut ttls = BTreeMap::new();
    for statement in schema_statements(schema) {
        let lower = statement.to_ascii_lowercase();
        let Some(at) = lower.find("default_time_to_live") else {
            continue;
        };
        let value: String = lower[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        let (name, _) = cql_table(&statement).unwrap();
        ttls.insert(name, value.parse().unwrap());
    }
    ttls
}

/// `DefaultTimeToLive` of each `AWS::Cassandra::Table` of a template that sets one.
fn template_ttls(template: &str) -> BTreeMap<String, i64> {
    let documents = YamlLoader::load_from_str(template).expect("the template parses");
    let resources = documents[0]["Resources"].as_hash().unwrap();
    resources
        .values()
        .filter(|r| r["Type"].as_str() == Some("AWS::Cassandra::Table"))
        .filter_map(|r| {
            let properties = &r["Properties"];
            let ttl = properties["DefaultTimeToLive"].as_i64()?;
            Some((properties["TableName"].as_str()?.to_owned(), ttl))
        })
        .collect()
}

#[test]
fn connection_records_expire_alike_in_the_schema_the_template_and_the_stores() {
    let schema = schema_ttls(&read("etc/schema.cql"));
    let ttl = i64::try_from(feeds::store::CONNECTION_TTL.as_secs()).unwrap();
    let expected: BTreeMap<String, i64> = ["connections", "connection_users", "pulled_connections"]
        .into_iter()
        .map(|t| (t.to_owned(), ttl))
        .collect();
    assert_eq!(schema, expected, "etc/schema.cql");
    assert_eq!(
        template_ttls(&read("template.yaml")),
        expected,
        "template.yaml"
    );
    // What the Cassandra store writes, `USING TTL` the same.
    let source = store_source();
    for table in expected.keys() {
        let insert = format!("INSERT INTO {{ks}}.{table} ");
        let at = source.find(&insert).unwrap_or_else(|| panic!("{insert}"));
        let line = source[at..].lines().next().unwrap();
        assert!(line.contains("USING TTL {ttl}"), "{line}");
    }
}
