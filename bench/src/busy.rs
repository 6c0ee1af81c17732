//! Busy day: aggregated reads of a reader whose followees posted 10,000 activities today, against
//! one whose followees posted 100 today, each set up through the fan-out's own path (rows, marks,
//! trims), on Cassandra and on SQLite through the standalone server. A stored group costs the same
//! to read whatever it summarises; what a busy day does cost is the first read after a change,
//! which recomputes the day from one scan, reported on its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use feeds::model::{day_of, start_of_day};
use feeds::store::sqlite::SqliteStore;
use feeds::BoxError;
use feeds_testkit::server::Server;
use serde::Serialize;

use crate::cass::{read_config, token_for, Cass, ReadResult, FEED_MAX_LENGTH, READ_CONCURRENCIES};
use crate::load::{check_page, http_client, http_get};
use crate::seed::{activities, run_tag, settle, timeline_len, Deliverer};
use crate::stats::{summarize, Summary};
use crate::{log, Ctx};

/// Each reader follows this many users, who post in turn.
const FOLLOWEES: usize = 10;
/// Deliveries at once while setting up.
const SEED_CONCURRENCY: usize = 32;

/// One reader's followees: how many verbs they use and how much they posted today.
struct Profile {
    name: &'static str,
    /// The busy reader's followees use 25 verbs, so that its first page is 25 groups of today;
    /// the quiet one's use 5, so that (at full size) each group of a day lists as many activities
    /// as the busy one's (15) and its page spans 5 days: both pages are 25 full groups of about
    /// the same size.
    verbs: usize,
    today: usize,
}

/// Both readers' profiles, then the days before today and the activities a day on them (both
/// readers alike). Tiny: just enough for trims and a page of 25 groups.
fn profiles(ctx: &Ctx) -> ([Profile; 2], usize, usize) {
    let (busy_today, history_days, per_day) = if ctx.tiny {
        (1_000, 4, 25)
    } else {
        (10_000, 10, 100)
    };
    let busy = Profile {
        name: "busy",
        verbs: 25,
        today: busy_today,
    };
    let quiet = Profile {
        name: "quiet",
        verbs: 5,
        today: 100,
    };
    ([busy, quiet], history_days, per_day)
}

#[derive(Debug, Clone, Serialize)]
pub struct BusyReader {
    /// `busy` or `quiet`.
    pub reader: String,
    pub followees: usize,
    pub verbs: usize,
    /// Activities delivered today.
    pub today: usize,
    pub history_days: usize,
    pub history_per_day: usize,
    /// Seconds the deliveries took (the set-up, not a measurement).
    pub seed_s: f64,
    /// Rows in the timeline after the trims.
    pub timeline_rows: usize,
    /// Bytes of the first aggregated page (25 groups).
    pub page_bytes: usize,
    /// The first read after the set-up: every day of the page is marked and recomputed.
    pub first_read_ms: f64,
    /// The first read after each of a few more deliveries today: today is recomputed.
    pub after_delivery_read_ms: Summary,
    /// `GET /feeds/aggregated?limit=25` at each concurrency, after those reads.
    pub reads: Vec<ReadResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BusyDayResult {
    pub store: String,
    pub feed_max_length: usize,
    pub readers: Vec<BusyReader>,
    /// Busy p50 / quiet p50 (medians over runs), by concurrency.
    pub p50_ratio: BTreeMap<usize, f64>,
}

struct Seeded {
    name: &'static str,
    reader: String,
    followees: Vec<String>,
    verbs: Vec<String>,
    today: usize,
    history_days: usize,
    history_per_day: usize,
    seed_s: f64,
    timeline_rows: usize,
}

/// Both readers, delivered to through `d`: their earlier days first, then today.
async fn seed(ctx: &Ctx, d: &Deliverer, store: &str) -> Result<Vec<Seeded>, BoxError> {
    let tag = run_tag();
    let (profiles, history_days, per_day) = profiles(ctx);
    let now = Utc::now();
    let today = start_of_day(day_of(now));
    let mut out = Vec::new();
    for p in profiles {
        let reader = format!("bench_{}_{tag}", p.name);
        let followees: Vec<String> = (0..FOLLOWEES).map(|i| format!("{reader}_a{i}")).collect();
        let verbs: Vec<String> = (0..p.verbs).map(|v| format!("v{v:02}")).collect();
        d.follow(&reader, &followees).await?;
        let from = today - chrono::Duration::days(history_days as i64);
        let history = activities(
            &followees,
            &verbs,
            per_day * history_days,
            from,
            today,
            "obj_history",
        );
        let posted = activities(&followees, &verbs, p.today, today, now, "obj_today");
        let label = format!("busy day {store}: {} reader", p.name);
        log(&format!(
            "{label}: delivering {} earlier and {} today (set-up)",
            history.len(),
            posted.len()
        ));
        let seed_s = d.deliver(history, SEED_CONCURRENCY, &label).await?
            + d.deliver(posted, SEED_CONCURRENCY, &label).await?;
        let timeline_rows = timeline_len(d.store(), &reader, 10 * FEED_MAX_LENGTH).await?;
        log(&format!(
            "{label}: {timeline_rows} rows in the feed after the trims ({seed_s:.1} s)"
        ));
        out.push(Seeded {
            name: p.name,
            reader,
            followees,
            verbs,
            today: p.today,
            history_days,
            history_per_day: per_day,
            seed_s,
            timeline_rows,
        });
    }
    Ok(out)
}

async fn measure(
    ctx: &Ctx,
    store: &str,
    d: &Deliverer,
    server: &Server,
    seeded: Vec<Seeded>,
) -> Result<BusyDayResult, BoxError> {
    let client = http_client();
    let server_cpu = ctx.cpu.with("feeds-server", Some(server.pid()));
    let reps = if ctx.tiny { 2 } else { 7 };
    let mut readers = Vec::new();
    let mut tokens = Vec::new();
    for s in &seeded {
        let token = token_for(&s.reader)?;
        let what = format!("{store} aggregated page of the {} reader", s.name);
        let (first_read_ms, body) = check_page(&client, &server.base, "aggregated", &token, 25)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let mut after = Vec::new();
        for rep in 0..reps {
            let now = Utc::now();
            let one = activities(
                &s.followees[..1],
                &s.verbs[..1],
                1,
                now,
                now,
                &format!("obj_after_{rep}"),
            );
            d.deliver(one, 1, "").await?;
            let (ms, _) = check_page(&client, &server.base, "aggregated", &token, 25)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            after.push(ms);
        }
        let after = summarize(&after);
        log(&format!(
            "busy day {store} {}: first read {first_read_ms:.1} ms, first read after a delivery \
             {:.1} ms (median of {reps}), page {} bytes",
            s.name,
            after.median,
            body.len()
        ));
        readers.push(BusyReader {
            reader: s.name.to_owned(),
            followees: s.followees.len(),
            verbs: s.verbs.len(),
            today: s.today,
            history_days: s.history_days,
            history_per_day: s.history_per_day,
            seed_s: s.seed_s,
            timeline_rows: s.timeline_rows,
            page_bytes: body.len(),
            first_read_ms,
            after_delivery_read_ms: after,
            reads: Vec::new(),
        });
        tokens.push(token);
    }
    // The steady reads: one read after the last marks have aged leaves every group clean.
    settle().await;
    for (s, token) in seeded.iter().zip(&tokens) {
        check_page(&client, &server.base, "aggregated", token, 25)
            .await
            .map_err(|e| format!("{store} aggregated page of the {} reader: {e}", s.name))?;
    }
    let url = format!("{}/feeds/aggregated?limit=25", server.base);
    let mut p50_ratio = BTreeMap::new();
    // Tiny: two concurrencies (every code path; a smoke check's budget is short).
    let concurrencies = if ctx.tiny {
        &READ_CONCURRENCIES[..2]
    } else {
        &READ_CONCURRENCIES[..]
    };
    for &c in concurrencies {
        // Interleaved, so that drift in the machine's load hits both alike.
        for (r, token) in readers.iter_mut().zip(&tokens) {
            let endpoint = format!("aggregated ({})", r.reader);
            let op = http_get(client.clone(), url.clone(), token.clone());
            r.reads
                .push(read_config(ctx, store, &endpoint, c, &server_cpu, op).await);
        }
        let p50 = |i: usize| {
            readers[i]
                .reads
                .last()
                .map_or(f64::NAN, |r| r.p50_ms.median)
        };
        let ratio = p50(0) / p50(1);
        log(&format!(
            "busy day {store} c={c}: busy / quiet p50 {ratio:.2}×"
        ));
        p50_ratio.insert(c, ratio);
    }
    Ok(BusyDayResult {
        store: store.to_owned(),
        feed_max_length: FEED_MAX_LENGTH,
        readers,
        p50_ratio,
    })
}

/// The workload on Cassandra (the standalone server on Cassandra + SQS), then on SQLite.
pub async fn busy_day(ctx: &Ctx, cass: &Cass) -> Result<Vec<BusyDayResult>, BoxError> {
    let mut out = Vec::new();
    {
        let d = Deliverer::new(cass.store.clone()).await?;
        let seeded = seed(ctx, &d, "cassandra").await?;
        let (server, queue) = crate::cass::launch_server(ctx, "server-cassandra-busy.log").await?;
        let r = measure(ctx, "cassandra", &d, &server, seeded).await;
        server.stop();
        crate::cass::delete_queue(&queue).await;
        out.push(r?);
    }
    let path = ctx.tmp.join("busy.db");
    {
        let store = Arc::new(SqliteStore::new(crate::embedded::open(&path)?));
        let d = Deliverer::new(store).await?;
        let seeded = seed(ctx, &d, "sqlite").await?;
        let server = crate::embedded::launch_server(ctx, &path, "server-sqlite-busy.log")?;
        let r = measure(ctx, "sqlite", &d, &server, seeded).await;
        server.stop();
        out.push(r?);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(out)
}
