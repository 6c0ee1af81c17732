//! Tombstones a read meets: after 100,000 activities went through one reader's feed by the real
//! path (rows, marks, and the trims that cut it to its bound with one range delete), Cassandra's
//! own trace of the reads a page costs says how many live rows and tombstone cells each read.

use std::time::Duration;

use chrono::Utc;
use feeds::aggregate;
use feeds::model::{day_of, start_of_day, ActivityId};
use feeds::BoxError;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use serde::Serialize;

use crate::cass::{Cass, RawRow, FEED_MAX_LENGTH, GROUPING};
use crate::seed::{activities, run_tag, Deliverer};
use crate::{log, Ctx, KEYSPACE};

/// Group rows the aggregated page reads per query.
const GROUP_ROWS: i32 = feeds::aggregate::GROUP_ROWS as i32;
/// Timeline rows a day's scan reads per query.
const SCAN_PAGE: i32 = feeds::aggregate::SCAN_PAGE as i32;
/// A flat page of 25 reads one row more, to know whether a next page exists.
const FLAT_ROWS: i32 = 26;

#[derive(Debug, Clone, Serialize)]
pub struct TracedRead {
    pub read: String,
    pub cql: String,
    /// Rows the query answered.
    pub rows: usize,
    /// From the trace's "Read N live rows and M tombstone cells".
    pub live_rows: u64,
    pub tombstone_cells: u64,
    /// From "Merged data from memtables and N sstables" (`None`: the trace does not say).
    pub sstables: Option<u64>,
    pub trace_duration_us: Option<i32>,
    /// Every event of the trace, in order.
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TombstoneResult {
    pub reader: String,
    /// Activities delivered into the reader's feed, a thousand a day up to now.
    pub deliveries: usize,
    pub feed_max_length: usize,
    pub seed_s: f64,
    /// Rows a walk of the flat feed from its first page to its end found.
    pub timeline_rows: usize,
    pub flat_pages: usize,
    pub reads: Vec<TracedRead>,
}

pub async fn tombstones(ctx: &Ctx, cass: &Cass) -> Result<TombstoneResult, BoxError> {
    let n = if ctx.tiny { 1_200 } else { 100_000 };
    let reader = format!("bench_tomb_{}", run_tag());
    let followees: Vec<String> = (0..10).map(|i| format!("{reader}_a{i}")).collect();
    let verbs: Vec<String> = ["post", "like", "share"].map(String::from).to_vec();
    let d = Deliverer::new(cass.store.clone()).await?;
    d.follow(&reader, &followees).await?;
    // As many a day as the feed holds, so that the trims' cut moves through the days.
    let now = Utc::now();
    let span = chrono::Duration::microseconds(86_400_000_000 * n as i64 / FEED_MAX_LENGTH as i64);
    let acts = activities(&followees, &verbs, n, now - span, now, "obj_tomb");
    log(&format!(
        "tombstones: delivering {n} activities to {reader} (set-up)"
    ));
    let seed_s = d.deliver(acts, 32, "tombstones").await?;

    let raw = cass.raw.as_ref();
    let page = cass.timeline_page.as_ref();
    // The walk a client paging to the end makes: each page's cursor is its 25th activity.
    let (mut before, mut pages, mut rows) = ("g".to_owned(), 0, 0);
    loop {
        let r = raw
            .execute_unpaged(page, (reader.as_str(), before.as_str(), "", FLAT_ROWS))
            .await?
            .into_rows_result()?;
        let ids: Vec<String> = r
            .rows::<RawRow>()?
            .map(|row| row.map(|r| r.id))
            .collect::<Result<_, _>>()?;
        pages += 1;
        rows += ids.len().min(FLAT_ROWS as usize - 1);
        if ids.len() < FLAT_ROWS as usize {
            break;
        }
        before = ids[FLAT_ROWS as usize - 2].clone();
    }
    log(&format!(
        "tombstones: the flat feed holds {rows} activities in {pages} pages"
    ));
    let mut reads = vec![
        traced(
            raw,
            "first flat page",
            page,
            (reader.as_str(), "g", "", FLAT_ROWS),
        )
        .await?,
        traced(
            raw,
            "last flat page of a walk to the end",
            page,
            (reader.as_str(), before.as_str(), "", FLAT_ROWS),
        )
        .await?,
    ];
    let ks = KEYSPACE;
    let ids_at = raw
        .prepare(format!(
            "SELECT id FROM {ks}.timeline WHERE owner = ? LIMIT ?"
        ))
        .await?;
    let limit = FEED_MAX_LENGTH as i32 + 1;
    reads.push(
        traced(
            raw,
            "the trim's position read",
            &ids_at,
            (reader.as_str(), limit),
        )
        .await?,
    );
    // A read first recomputes the marked days; the page after that reads the stored groups.
    crate::seed::settle().await;
    aggregate::page(
        cass.store.as_ref(),
        &reader,
        GROUPING,
        None,
        25,
        usize::MAX,
        aggregate::scan_time,
    )
    .await?;
    let groups = raw
        .prepare(format!("SELECT day, group_key, newest_id, json, clean_us, dirty_us FROM {ks}.feed_groups WHERE owner = ? AND feed = ? AND day <= ? AND day >= ? LIMIT ?"))
        .await?;
    let values = (
        reader.as_str(),
        GROUPING.feed(),
        i32::MAX,
        i32::MIN,
        GROUP_ROWS,
    );
    reads.push(traced(raw, "aggregated page (stored groups)", &groups, values).await?);
    let day = day_of(Utc::now());
    let floor = ActivityId::floor(start_of_day(day));
    let ceiling = ActivityId::floor(start_of_day(day + chrono::Days::new(1)));
    let values = (reader.as_str(), ceiling.as_str(), floor.as_str(), SCAN_PAGE);
    reads.push(
        traced(
            raw,
            "aggregated page after a change (the day's scan)",
            page,
            values,
        )
        .await?,
    );
    for r in &reads {
        log(&format!(
            "tombstones: {}: {} rows; read {} live rows and {} tombstone cells, {} sstables",
            r.read,
            r.rows,
            r.live_rows,
            r.tombstone_cells,
            r.sstables.map_or("?".to_owned(), |s| s.to_string())
        ));
    }
    Ok(TombstoneResult {
        reader,
        deliveries: n,
        feed_max_length: FEED_MAX_LENGTH,
        seed_s,
        timeline_rows: rows,
        flat_pages: pages,
        reads,
    })
}

/// Runs `statement` with tracing on and reads its trace back from `system_traces`.
async fn traced(
    session: &Session,
    read: &str,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<TracedRead, BoxError> {
    let mut statement = statement.clone();
    statement.set_tracing(true);
    let result = session.execute_unpaged(&statement, values).await?;
    let id = result
        .tracing_id()
        .ok_or("Cassandra answered no tracing id")?;
    let rows = result.into_rows_result()?.rows_num();
    // The node writes the trace after it answers: wait until the read's summary is in.
    for _ in 0..100 {
        if let Ok(info) = session.get_tracing_info(&id).await {
            let events: Vec<String> = info
                .events
                .iter()
                .filter_map(|e| e.activity.clone())
                .collect();
            let counts: Vec<(u64, u64)> = events
                .iter()
                .filter_map(|e| live_and_tombstones(e))
                .collect();
            if info.duration.is_some() && !counts.is_empty() {
                return Ok(TracedRead {
                    read: read.to_owned(),
                    cql: statement.get_statement().to_owned(),
                    rows,
                    live_rows: counts.iter().map(|c| c.0).sum(),
                    tombstone_cells: counts.iter().map(|c| c.1).sum(),
                    sstables: events.iter().filter_map(|e| sstables(e)).max(),
                    trace_duration_us: info.duration,
                    events,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no complete trace of `{read}` after 5 s").into())
}

/// "Read 26 live rows and 0 tombstone cells" (and a warning suffix, when over the threshold).
fn live_and_tombstones(event: &str) -> Option<(u64, u64)> {
    let rest = event.strip_prefix("Read ")?;
    let (live, rest) = rest.split_once(" live rows and ")?;
    let (tombstones, _) = rest.split_once(" tombstone cells")?;
    Some((live.parse().ok()?, tombstones.parse().ok()?))
}

/// "Merged data from memtables and 2 sstables".
fn sstables(event: &str) -> Option<u64> {
    let rest = event.strip_prefix("Merged data from memtables and ")?;
    rest.split_once(" sstables")?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trace_lines() {
        assert_eq!(
            live_and_tombstones("Read 26 live rows and 3 tombstone cells"),
            Some((26, 3))
        );
        assert_eq!(
            live_and_tombstones(
                "Read 0 live rows and 1200 tombstone cells (see tombstone_warn_threshold)"
            ),
            Some((0, 1200))
        );
        assert_eq!(
            live_and_tombstones("Executing single-partition query"),
            None
        );
        assert_eq!(
            sstables("Merged data from memtables and 2 sstables"),
            Some(2)
        );
    }
}
