//! 3d. A pulled author with 100,000 followers: the statements one of its posts runs (counted, and
//! the same whatever the followers), and the reads of a follower whose pages merge its activities
//! against a reader whose followees are all fanned out, through the standalone server on
//! Cassandra. Both readers follow 10 users who posted alike; one of the pulled reader's 10 is the
//! pulled author.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use feeds::fanout::FanoutSettings;
use feeds::model::{FollowEdge, NewActivity};
use feeds::store::cassandra::{CassandraStore, Tally};
use feeds::store::Store;
use feeds::BoxError;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::cass::{fanout_settings, read_config, token_for, Cass, ReadResult, READ_CONCURRENCIES};
use crate::costs::{admin, OpCost};
use crate::load::{check_page, http_client, http_get};
use crate::seed::{activities, run_tag, settle, Deliverer};
use crate::{log, Ctx};

/// Followees of each reader, and what each posted over the last days.
const FOLLOWEES: usize = 10;
const POSTS_EACH: usize = 50;
const DAYS: i64 = 5;
/// Verbs every followee uses in turn: 5 verbs over 6 days make enough groups for a full page.
const VERBS: usize = 5;

fn verbs() -> Vec<String> {
    (0..VERBS).map(|v| format!("v{v}")).collect()
}
/// Follow edges written at once while setting up.
const SEED_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct PulledResult {
    pub followers: usize,
    pub pull_threshold: usize,
    /// Seconds to write the follow edges, and to tell every follower once (set-up).
    pub follow_s: f64,
    pub adopt_s: f64,
    /// The statements of one post by the pulled author, averaged over a few.
    pub post: OpCost,
    /// The same, counted when the author had a tenth of the followers: equal when constant.
    pub post_at_tenth: Option<OpCost>,
    /// `flat (pulled)`, `flat (pushed)`, `aggregated (pulled)`, `aggregated (pushed)` by
    /// concurrency.
    pub reads: Vec<ReadResult>,
    /// Pulled p50 / pushed p50 (medians over runs), by feed, then concurrency.
    pub p50_ratio: BTreeMap<String, BTreeMap<usize, f64>>,
}

/// An edge from each of `followers` to `author`, `SEED_CONCURRENCY` at a time.
async fn follow_many(
    store: &dyn Store,
    author: &str,
    followers: impl Iterator<Item = String>,
) -> Result<(), BoxError> {
    futures::stream::iter(followers)
        .map(|follower| async move {
            let edge = FollowEdge {
                follower,
                following: author.to_owned(),
                created_at: Utc::now(),
            };
            store.follow(&edge).await.map(|_| ())
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Posts `n` activities by `author` through the service, spread over the last days; answers
/// what their statements cost.
async fn post_pulled(
    feeds: &feeds::service::Feeds,
    tally: &Tally,
    author: &str,
    n: usize,
    label: &str,
) -> Result<OpCost, BoxError> {
    let now = Utc::now();
    let from = now - chrono::Duration::days(DAYS);
    tally.take();
    let object = format!("obj_{}", label.replace(' ', "_"));
    for a in activities(&[author.to_owned()], &verbs(), n, from, now, &object) {
        let new = NewActivity {
            actor: a.actor,
            verb: Some(a.verb),
            object: a.object,
            target: None,
            time: Some(a.time.to_rfc3339_opts(SecondsFormat::Micros, true)),
            foreign_id: None,
            to: None,
            extra: None,
        };
        let (_, created) = feeds.post(&admin(), new).await?;
        if !created {
            return Err(format!("{label}: a post was not stored").into());
        }
    }
    Ok(crate::costs::cost(
        &format!("post by a pulled author ({label})"),
        n,
        tally.take(),
    ))
}

pub async fn pulled(ctx: &Ctx, cass: &Cass) -> Result<PulledResult, BoxError> {
    let (followers, threshold) = if ctx.tiny {
        (200, 100)
    } else {
        (100_000, 10_000)
    };
    let tally = Arc::new(Tally::new());
    let store = CassandraStore::new(cass.store.session(), &cass.cfg)
        .await?
        .counting(tally.clone());
    let d = Deliverer::new(Arc::new(store)).await?;
    let settings = FanoutSettings {
        pull_threshold: threshold,
        ..fanout_settings()
    };
    let feeds = d.service(&settings);
    let tag = run_tag();
    let author = format!("pull_{tag}_a");
    let pulled_reader = format!("pull_{tag}_r1");
    let pushed_reader = format!("pull_{tag}_r2");
    let pushed: Vec<String> = (1..FOLLOWEES).map(|i| format!("pull_{tag}_b{i}")).collect();
    let others: Vec<String> = (0..FOLLOWEES).map(|i| format!("pull_{tag}_c{i}")).collect();

    // Just over the threshold first: the first post makes the author pulled and tells them.
    let t0 = Instant::now();
    log(&format!(
        "pulled: {followers} followers of one author (set-up)"
    ));
    let tenth = threshold + 1;
    follow_many(
        d.store(),
        &author,
        std::iter::once(pulled_reader.clone())
            .chain((1..tenth).map(|i| format!("pull_{tag}_f{i}"))),
    )
    .await?;
    d.follow(&pulled_reader, &pushed).await?;
    d.follow(&pushed_reader, &others).await?;
    let follow_first = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    post_pulled(&feeds, &tally, &author, 1, "first").await?;
    d.drain().await?;
    let adopt_s = t1.elapsed().as_secs_f64();
    let post_at_tenth = post_pulled(&feeds, &tally, &author, 5, "at a tenth").await?;
    let t2 = Instant::now();
    follow_many(
        d.store(),
        &author,
        (tenth..followers).map(|i| format!("pull_{tag}_f{i}")),
    )
    .await?;
    let follow_s = follow_first + t2.elapsed().as_secs_f64();
    log(&format!(
        "pulled: {followers} followers in {follow_s:.0} s, the first {tenth} told in {adopt_s:.0} s"
    ));
    let post = post_pulled(&feeds, &tally, &author, POSTS_EACH, "all followers").await?;

    // The other followees' posts, fanned out to the readers.
    let now = Utc::now();
    let from = now - chrono::Duration::days(DAYS);
    for authors in [&pushed, &others] {
        let posted = activities(
            authors,
            &verbs(),
            POSTS_EACH * authors.len(),
            from,
            now,
            "obj_push",
        );
        d.deliver(posted, 16, "pulled: pushed followees").await?;
    }
    tally.take();

    let (server, queue) = crate::cass::launch_server_with(
        ctx,
        "server-cassandra-pulled.log",
        &[("FEEDS_PULL_THRESHOLD", threshold.to_string())],
    )
    .await?;
    let r = measure(ctx, &server, &pulled_reader, &pushed_reader).await;
    server.stop();
    crate::cass::delete_queue(&queue).await;
    let (reads, p50_ratio) = r?;
    Ok(PulledResult {
        followers,
        pull_threshold: threshold,
        follow_s,
        adopt_s,
        post,
        post_at_tenth: Some(post_at_tenth),
        reads,
        p50_ratio,
    })
}

type Measured = (Vec<ReadResult>, BTreeMap<String, BTreeMap<usize, f64>>);

async fn measure(
    ctx: &Ctx,
    server: &feeds_testkit::server::Server,
    pulled_reader: &str,
    pushed_reader: &str,
) -> Result<Measured, BoxError> {
    let client = http_client();
    let cpu = ctx.cpu.with("feeds-server", Some(server.pid()));
    let readers = [("pulled", pulled_reader), ("pushed", pushed_reader)];
    let mut tokens = Vec::new();
    settle().await;
    for (name, reader) in readers {
        let token = token_for(reader)?;
        for feed in ["flat", "aggregated"] {
            // Full pages, and the first aggregated read recomputes the marked days.
            check_page(&client, &server.base, feed, &token, 25)
                .await
                .map_err(|e| format!("pulled: {feed} page of the {name} reader: {e}"))?;
        }
        tokens.push(token);
    }
    let concurrencies = if ctx.tiny {
        &READ_CONCURRENCIES[..2]
    } else {
        &READ_CONCURRENCIES[..]
    };
    let mut reads = Vec::new();
    let mut p50_ratio: BTreeMap<String, BTreeMap<usize, f64>> = BTreeMap::new();
    for &c in concurrencies {
        for feed in ["flat", "aggregated"] {
            let url = format!("{}/feeds/{feed}?limit=25", server.base);
            let mut p50 = Vec::new();
            // Interleaved, so that drift in the machine's load hits both alike.
            for ((name, _), token) in readers.iter().zip(&tokens) {
                let op = http_get(client.clone(), url.clone(), token.clone());
                let endpoint = format!("{feed} ({name})");
                let r = read_config(ctx, "cassandra", &endpoint, c, &cpu, op).await;
                p50.push(r.p50_ms.median);
                reads.push(r);
            }
            let ratio = p50[0] / p50[1];
            log(&format!(
                "pulled c={c}: {feed} pulled / pushed p50 {ratio:.2}×"
            ));
            p50_ratio
                .entry(feed.to_owned())
                .or_default()
                .insert(c, ratio);
        }
    }
    Ok((reads, p50_ratio))
}
