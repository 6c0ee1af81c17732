//! What a store still holds of a user: every row of every table, read whole, in which some cell
//! holds the user's id (alone, or inside a key, a JSON text or a list). For tests that check an
//! erasure left nothing behind: a table added later is read too, without being named here.

use feeds::store::cassandra::CassandraStore;
use feeds::store::sqlite::SqliteDb;
use futures::StreamExt;
use scylla::value::{CqlValue, Row};

/// One row that mentions the user: its table, and the row as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remain {
    pub table: String,
    pub row: String,
}

/// Rows of every table of the SQLite file `db` that mention `user`.
pub async fn sqlite(db: &SqliteDb, user: &str) -> Vec<Remain> {
    let user = user.to_owned();
    db.run(move |c| {
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for table in tables {
            let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\""))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let cells: Vec<String> = (0..columns)
                    .map(|i| match row.get_ref(i) {
                        Ok(rusqlite::types::ValueRef::Text(t)) => String::from_utf8_lossy(t).into(),
                        Ok(rusqlite::types::ValueRef::Blob(b)) => String::from_utf8_lossy(b).into(),
                        Ok(v) => format!("{v:?}"),
                        Err(e) => format!("<{e}>"),
                    })
                    .collect();
                if cells.iter().any(|c| c.contains(&user)) {
                    out.push(Remain {
                        table: table.clone(),
                        row: cells.join(" | "),
                    });
                }
            }
        }
        Ok(out)
    })
    .await
    .expect("the SQLite file reads")
}

/// Rows of every table of `keyspace` that mention `user`.
pub async fn cassandra(store: &CassandraStore, keyspace: &str, user: &str) -> Vec<Remain> {
    let session = store.session();
    let tables: Vec<(String,)> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .expect("the schema reads")
        .into_rows_result()
        .expect("rows")
        .rows::<(String,)>()
        .expect("table names")
        .collect::<Result<_, _>>()
        .expect("table names");
    let mut out = Vec::new();
    for (table,) in tables {
        let mut pager = session
            .query_iter(format!("SELECT * FROM {keyspace}.{table}"), ())
            .await
            .expect("the table reads")
            .rows_stream::<Row>()
            .expect("rows");
        while let Some(row) = pager.next().await {
            let row = row.expect("a row");
            let cells: Vec<String> = row.columns.iter().map(|c| text(c.as_ref())).collect();
            if cells.iter().any(|c| c.contains(user)) {
                out.push(Remain {
                    table: table.clone(),
                    row: cells.join(" | "),
                });
            }
        }
    }
    out
}

fn text(value: Option<&CqlValue>) -> String {
    match value {
        Some(CqlValue::Text(t) | CqlValue::Ascii(t)) => t.clone(),
        Some(v) => format!("{v:?}"),
        None => "null".to_owned(),
    }
}
