//! Workload 7: what each operation costs on Amazon Keyspaces, counted from the statements the
//! code runs: the service and the fan-out on a Cassandra store of their own that counts every statement
//! (`Tally`), in write request units (a started KiB of values bound) and `LOCAL_QUORUM` read
//! request units (a started 4 KiB read back). report.py prices them for a stated workload.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use feeds::auth::Principal;
use feeds::fanout::FanoutSettings;
use feeds::model::{day_of, start_of_day, NewActivity};
use feeds::service::Feeds;
use feeds::store::cassandra::{CassandraStore, StatementCount, Tally};
use feeds::BoxError;
use serde::Serialize;

use crate::cass::{fanout_settings, Cass};
use crate::seed::{activities, run_tag, settle, write_timeline, Deliverer};
use crate::{log, Ctx};

/// Times each measured operation runs (the units are averaged over them).
const REPEATS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct OpCost {
    /// What one operation is, e.g. "post" or "delivery to one follower".
    pub op: String,
    /// How many operations the counts below add up.
    pub ops: usize,
    pub write_units_per_op: f64,
    pub read_units_per_op: f64,
    /// Statements per operation.
    pub statements_per_op: f64,
    /// Every statement that ran, with its totals over all `ops`.
    pub statements: BTreeMap<String, StatementCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostResult {
    /// Followers of the pushed author whose posts are delivered.
    pub followers: usize,
    pub feed_max_length: usize,
    pub backfill_limit: usize,
    pub ops: Vec<OpCost>,
}

pub fn cost(op: &str, ops: usize, counts: BTreeMap<String, StatementCount>) -> OpCost {
    let n = ops.max(1) as f64;
    let sum = |f: &dyn Fn(&StatementCount) -> u64| counts.values().map(f).sum::<u64>() as f64 / n;
    let c = OpCost {
        op: op.to_owned(),
        ops,
        write_units_per_op: sum(&|c| if c.write { c.units } else { 0 }),
        read_units_per_op: sum(&|c| if c.write { 0 } else { c.units }),
        statements_per_op: sum(&|c| c.runs),
        statements: counts,
    };
    log(&format!(
        "keyspaces units: {op}: {:.2} write, {:.2} read, {:.1} statements (over {ops})",
        c.write_units_per_op, c.read_units_per_op, c.statements_per_op
    ));
    c
}

/// A `feeds:admin` principal: the benchmark acts for every user.
pub fn admin() -> Principal {
    Principal {
        sub: "bench".to_owned(),
        admin: true,
    }
}

fn post(actor: &str, object: String) -> NewActivity {
    NewActivity {
        actor: actor.to_owned(),
        verb: None,
        object,
        target: None,
        time: None,
        foreign_id: None,
        to: None,
        extra: None,
    }
}

/// The operations one at a time, each counted on its own.
pub async fn keyspaces_units(ctx: &Ctx, cass: &Cass) -> Result<CostResult, BoxError> {
    let tally = Arc::new(Tally::new());
    let store = CassandraStore::new(cass.store.session(), &cass.cfg)
        .await?
        .counting(tally.clone());
    let d = Deliverer::new(Arc::new(store)).await?;
    let followers = if ctx.tiny { 100 } else { 1_000 };
    let settings = FanoutSettings {
        // The pushed author has just as many followers; one more makes the other author pulled.
        pull_threshold: followers,
        ..fanout_settings()
    };
    let feeds: Feeds = d.service(&settings);
    let tag = run_tag();
    let author = format!("cost_{tag}_a");
    let pulled_author = format!("cost_{tag}_p");
    let fans: Vec<String> = (0..followers).map(|i| format!("cost_{tag}_f{i}")).collect();
    let reader = &fans[0];
    log(&format!(
        "keyspaces units: {followers} followers, a timeline of {} (set-up)",
        settings.max_length
    ));
    for fan in &fans {
        d.follow(fan, &[author.clone(), pulled_author.clone()])
            .await?;
    }
    // The reader's feed full, from 10 other users over 5 days.
    let others: Vec<String> = (0..10).map(|i| format!("cost_{tag}_o{i}")).collect();
    let verbs: Vec<String> = (0..5).map(|v| format!("v{v}")).collect();
    let now = Utc::now();
    let history = activities(
        &others,
        &verbs,
        settings.max_length,
        now - chrono::Duration::days(5),
        now - chrono::Duration::hours(1),
        "obj_cost",
    );
    write_timeline(d.store(), reader, &history).await?;
    let mut ops = Vec::new();

    tally.take();
    for k in 0..REPEATS {
        feeds
            .post(&admin(), post(&author, format!("obj_{k}")))
            .await?;
    }
    ops.push(cost("post", REPEATS, tally.take()));
    d.drain().await?;
    ops.push(cost(
        "delivery to one follower",
        REPEATS * followers,
        tally.take(),
    ));

    // A new follower of the author: the edge and its backfill of the author's posts.
    for k in 0..REPEATS {
        let req = feeds::model::FollowRequest {
            follower: format!("cost_{tag}_new{k}"),
            following: author.clone(),
        };
        feeds.follow(&admin(), req).await?;
    }
    d.drain().await?;
    ops.push(cost(
        &format!("follow with its backfill ({REPEATS} activities)"),
        REPEATS,
        tally.take(),
    ));

    for _ in 0..REPEATS {
        feeds.flat(reader, None, 25).await?;
    }
    ops.push(cost("flat page (25)", REPEATS, tally.take()));

    // The first aggregated read recomputes every marked day; once the marks are older than the
    // clock-skew allowance, one more leaves the groups clean.
    feeds.aggregated(reader, None, 25).await?;
    settle().await;
    feeds.aggregated(reader, None, 25).await?;
    tally.take();
    for _ in 0..REPEATS {
        feeds.aggregated(reader, None, 25).await?;
    }
    ops.push(cost("aggregated page (25 groups)", REPEATS, tally.take()));

    // After one new activity today: the first read recomputes today's groups from one scan.
    let today = start_of_day(day_of(Utc::now()));
    for k in 0..REPEATS {
        let one = activities(
            &others[..1],
            &verbs[..1],
            1,
            Utc::now().max(today),
            Utc::now(),
            &format!("obj_new_{k}"),
        );
        write_timeline(d.store(), reader, &one).await?;
        settle().await;
        tally.take();
        feeds.aggregated(reader, None, 25).await?;
        let counts = tally.take();
        if k == 0 {
            ops.push(cost(
                "aggregated page, first read after a new activity",
                1,
                counts,
            ));
        }
    }

    // A pulled author: its first post finds more followers than the threshold and tells them
    // (a one-time job per follower); every later post costs the same whatever the followers.
    let pulled_fans = followers + 1;
    d.follow(
        &format!("cost_{tag}_x"),
        std::slice::from_ref(&pulled_author),
    )
    .await?;
    tally.take();
    feeds
        .post(&admin(), post(&pulled_author, "obj_first".to_owned()))
        .await?;
    d.drain().await?;
    ops.push(cost(
        "becoming a pulled author, per follower told (once)",
        pulled_fans,
        tally.take(),
    ));
    for k in 0..REPEATS {
        feeds
            .post(&admin(), post(&pulled_author, format!("obj_p{k}")))
            .await?;
    }
    d.drain().await?;
    ops.push(cost(
        &format!("post by a pulled author ({pulled_fans} followers)"),
        REPEATS,
        tally.take(),
    ));
    for _ in 0..REPEATS {
        feeds.flat(reader, None, 25).await?;
    }
    ops.push(cost(
        "flat page (25) of a reader with one pulled followee",
        REPEATS,
        tally.take(),
    ));
    settle().await;
    feeds.aggregated(reader, None, 25).await?;
    tally.take();
    for _ in 0..REPEATS {
        feeds.aggregated(reader, None, 25).await?;
    }
    ops.push(cost(
        "aggregated page (25 groups) of a reader with one pulled followee",
        REPEATS,
        tally.take(),
    ));
    Ok(CostResult {
        followers,
        feed_max_length: settings.max_length,
        backfill_limit: settings.backfill_limit,
        ops,
    })
}
