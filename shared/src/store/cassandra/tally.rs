//! What the store's statements would cost on Amazon Keyspaces, counted as they run: how often each
//! statement ran, the bytes each run bound (a write's size) and the bytes of the rows it read back.
//! Off unless a store is built with one (the benchmark's cost table): counting costs a lock and,
//! for a write, serialising its values a second time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use scylla::response::query_result::QueryResult;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::prepared::PreparedStatement;
use serde::Serialize;

/// Keyspaces bills a write per started KiB of the row written.
const WRITE_UNIT_BYTES: u64 = 1024;
/// Keyspaces bills a `LOCAL_QUORUM` read per started 4 KiB read (at least one unit per read).
const READ_UNIT_BYTES: u64 = 4096;

/// One statement's runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatementCount {
    pub runs: u64,
    /// Whether the statement writes (anything but a `SELECT`).
    pub write: bool,
    /// Rows the runs read back (a write's only row is a lightweight transaction's `[applied]`).
    pub rows: u64,
    /// Bytes bound (writes) or read back (reads), all runs together.
    pub bytes: u64,
    /// Write request units (writes) or `LOCAL_QUORUM` read request units (reads): each run rounded
    /// up on its own. A range delete counts as one write here; Keyspaces bills each row it deletes.
    pub units: u64,
}

/// Counts by statement text; cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct Tally {
    by_statement: Mutex<BTreeMap<String, StatementCount>>,
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// What ran since the tally was made or last taken, by CQL text; resets the counts.
    pub fn take(&self) -> BTreeMap<String, StatementCount> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StatementCount>> {
        self.by_statement.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one run of `statement` bound to `values`, which answered `result` (rows read).
    pub(super) fn record(
        &self,
        statement: &PreparedStatement,
        values: &impl SerializeRow,
        result: Option<&QueryResult>,
    ) {
        let cql = statement.get_statement();
        let write = !cql.trim_start().to_ascii_uppercase().starts_with("SELECT");
        let (rows, bytes, units) = if write {
            let specs = statement.get_variable_col_specs();
            let ctx = RowSerializationContext::from_specs(specs.as_slice());
            let mut buf = Vec::new();
            let bytes = match values.serialize(&ctx, &mut RowWriter::new(&mut buf)) {
                Ok(()) => buf.len() as u64,
                Err(_) => 0,
            };
            (0, bytes, bytes.div_ceil(WRITE_UNIT_BYTES).max(1))
        } else {
            let (rows, bytes) = result
                .and_then(|r| r.clone().into_rows_result().ok())
                .map_or((0, 0), |r| {
                    (r.rows_num() as u64, r.rows_bytes_size() as u64)
                });
            (rows, bytes, bytes.div_ceil(READ_UNIT_BYTES).max(1))
        };
        let mut counts = self.lock();
        let count = match counts.get_mut(cql) {
            Some(c) => c,
            None => counts.entry(cql.to_owned()).or_default(),
        };
        count.runs += 1;
        count.write = write;
        count.rows += rows;
        count.bytes += bytes;
        count.units += units;
    }
}
