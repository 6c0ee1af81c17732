//! Workload 5: the embedded default (SQLite, and its durable queue in the same file), fan-out and
//! reads, each against the same driver's ceiling (rusqlite on the same connection wrapper).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use feeds::fanout::Fanout;
use feeds::queue::embedded::EmbeddedQueue;
use feeds::queue::FanoutJob;
use feeds::queue::Queue;
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::Store;
use feeds::BoxError;
use feeds_testkit::server::Server;
use rusqlite::params;

use crate::cass::{
    expected_jobs, fanout_result, fanout_settings, feed_env, follower_name, new_activity,
    read_config, reader_timeline, token_for, verify, CpuSum, FanoutResult, ReadResult, READER,
    READ_CONCURRENCIES,
};
use crate::load::{check_page, http_client, http_get};
use crate::{log, Ctx};

/// Transaction sizes of the SQLite ceiling (0: all rows in one transaction).
const TX_SIZES: [usize; 2] = [500, 0];

/// A fresh database file at `path` (an earlier one is removed).
pub fn open(path: &std::path::Path) -> Result<SqliteDb, BoxError> {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(SqliteDb::open(path)?)
}

async fn add_followers(db: &SqliteDb, actor: &str, n: usize) -> Result<(), BoxError> {
    let actor = actor.to_owned();
    db.run(move |c| {
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO follows (follower, following, created_us) VALUES (?1, ?2, ?3)",
            )?;
            let now = Utc::now().timestamp_micros();
            for i in 0..n {
                st.execute(params![follower_name(&actor, i), actor, now])?;
            }
        }
        tx.commit()
    })
    .await?;
    Ok(())
}

/// The ceiling: the same rows through the store's own insert statement, `tx` rows a transaction.
async fn ceiling_write(
    db: &SqliteDb,
    actor: &str,
    n: usize,
    a: &feeds::model::Activity,
    tx_size: usize,
) -> Result<f64, BoxError> {
    let (actor, a) = (actor.to_owned(), a.clone());
    let per_tx = if tx_size == 0 { n } else { tx_size };
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let (lo, hi) = (i, (i + per_tx).min(n));
        let (actor, a) = (actor.clone(), a.clone());
        db.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO timeline (owner, id, actor, verb, object, target, time_us, foreign_id, extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for k in lo..hi {
                    st.execute(params![
                        follower_name(&actor, k),
                        a.id,
                        a.actor,
                        a.verb,
                        a.object,
                        a.target,
                        a.time.timestamp_micros(),
                        a.foreign_id,
                        None::<String>
                    ])?;
                }
            }
            tx.commit()
        })
        .await?;
        i = hi;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Fan-out on the embedded store: one worker running the loop of `Fanout::work`
/// (receive 10 → `run_batch` → delete), as the standalone server does.
pub async fn fanout_rate(ctx: &Ctx) -> Result<Vec<FanoutResult>, BoxError> {
    let mut out = Vec::new();
    for &(n, reps) in ctx.fanout_sizes() {
        let path = ctx.tmp.join(format!("fanout-{n}.db"));
        let db = open(&path)?;
        let store = Arc::new(SqliteStore::new(db.clone()));
        let queue = EmbeddedQueue::new(db.clone(), Duration::from_secs(30), 5).await?;
        let fanout = Fanout::new(store.clone(), Arc::new(queue.clone()), fanout_settings());
        let actor = format!("bench_star_{n}");
        add_followers(&db, &actor, n).await?;
        let jobs = expected_jobs(n);
        let (mut rates, mut walls) = (Vec::new(), Vec::new());
        let mut ceilings: Vec<(String, Vec<f64>)> = TX_SIZES
            .iter()
            .map(|&t| {
                let name = if t == 0 {
                    "one transaction".to_owned()
                } else {
                    format!("{t} rows a transaction")
                };
                (name, Vec::new())
            })
            .collect();
        let mut cpu_fan = CpuSum::new(&ctx.cpu);
        let mut cpu_ceil: BTreeMap<String, CpuSum> = BTreeMap::new();
        for rep in 0..reps {
            let a = new_activity(&actor, format!("obj_fanout_{rep}"));
            store.put_activity(&a).await?;
            let cpu0 = ctx.cpu.snapshot();
            let t0 = Instant::now();
            queue
                .send(&[FanoutJob::Deliver {
                    activity_id: a.id.clone(),
                    actor: actor.clone(),
                    after: None,
                }])
                .await?;
            let mut handled = 0;
            while handled < jobs {
                let messages = queue.receive(10).await?;
                if messages.is_empty() {
                    queue.wait(Duration::from_millis(500)).await;
                    continue;
                }
                let failed = fanout.run_batch(&messages).await;
                let done: Vec<String> = messages
                    .iter()
                    .map(|m| m.id.clone())
                    .filter(|id| !failed.contains(id))
                    .collect();
                handled += done.len();
                queue.delete(&done).await?;
            }
            let wall = t0.elapsed().as_secs_f64();
            cpu_fan.add(&cpu0, &ctx.cpu.snapshot(), n);
            rates.push(n as f64 / wall);
            walls.push(wall);
            verify(store.as_ref(), &actor, n, &a.id, ctx.tiny).await?;
            let mut line = format!(
                "sqlite fan-out {n}: rep {}/{reps}: {:.0} rows/s ({wall:.2} s)",
                rep + 1,
                n as f64 / wall
            );
            for (k, &t) in TX_SIZES.iter().enumerate() {
                let a = new_activity(&actor, format!("obj_ceiling_{rep}_{t}"));
                let cpu0 = ctx.cpu.snapshot();
                let r = ceiling_write(&db, &actor, n, &a, t).await?;
                cpu_ceil
                    .entry(ceilings[k].0.clone())
                    .or_insert_with(|| CpuSum::new(&ctx.cpu))
                    .add(&cpu0, &ctx.cpu.snapshot(), n);
                line += &format!("; raw {}: {r:.0}", ceilings[k].0);
                ceilings[k].1.push(r);
            }
            log(&line);
        }
        out.push(fanout_result(
            "sqlite",
            "embedded queue → Fanout::run_batch (the Fanout::work loop)",
            n,
            reps,
            jobs,
            &rates,
            &walls,
            ceilings,
            0,
            cpu_fan.per_1k_rows(),
            cpu_ceil
                .into_iter()
                .map(|(k, v)| (k, v.per_1k_rows()))
                .collect(),
        ));
        drop((fanout, queue, store, db));
        let _ = std::fs::remove_file(&path);
    }
    Ok(out)
}

/// The standalone server on its default store (SQLite and the embedded queue) in `path`.
pub fn launch_server(
    ctx: &Ctx,
    path: &std::path::Path,
    log_name: &str,
) -> Result<Server, BoxError> {
    let mut envs = vec![
        ("FEEDS_STORE", "sqlite".to_owned()),
        ("FEEDS_QUEUE", "embedded".to_owned()),
        ("FEEDS_SQLITE_PATH", path.display().to_string()),
        ("FEEDS_LOG_FORMAT", "json".to_owned()),
    ];
    envs.extend(feed_env());
    Server::launch(&ctx.server_bin, &envs, &ctx.out.join(log_name))
}

/// Reads through the standalone server on its default store; the raw 25-row read; and a bare HTTP
/// round trip (axum answering the same pages pre-serialised), all in the same run.
pub async fn reads(ctx: &Ctx) -> Result<Vec<ReadResult>, BoxError> {
    let path = ctx.tmp.join("reads.db");
    {
        let store = SqliteStore::new(open(&path)?);
        crate::seed::write_timeline(&store, READER, &reader_timeline()).await?;
    }
    let server = launch_server(ctx, &path, "server-sqlite.log")?;
    // The raw driver: its own connection to the same file, through the same wrapper the store uses.
    let raw = SqliteDb::open(&path)?;
    let token = token_for(READER)?;
    let client = http_client();
    crate::seed::settle().await;
    // The first reads recompute the marked days; every page must be full, and the bare server
    // answers these very bodies.
    let mut pages = Vec::new();
    for (endpoint, what) in [("flat", "activities"), ("aggregated", "groups")] {
        let (_, body) = check_page(&client, &server.base, endpoint, &token, 25)
            .await
            .map_err(|e| format!("sqlite {endpoint} page of {READER} ({what}): {e}"))?;
        pages.push((endpoint, body));
    }
    let sizes: Vec<(&str, usize)> = pages.iter().map(|(e, b)| (*e, b.len())).collect();
    let bare = crate::bare::serve(pages).await?;
    let server_cpu = ctx.cpu.with("feeds-server", Some(server.pid()));
    let mut out = Vec::new();
    for &c in &READ_CONCURRENCIES {
        for endpoint in ["flat", "aggregated"] {
            let url = format!("{}/feeds/{endpoint}?limit=25", server.base);
            out.push(
                read_config(
                    ctx,
                    "sqlite",
                    endpoint,
                    c,
                    &server_cpu,
                    http_get(client.clone(), url, token.clone()),
                )
                .await,
            );
        }
        let db = raw.clone();
        let op = move || {
            let db = db.clone();
            async move {
                let rows = db
                    .run(|c| {
                        let mut st = c.prepare_cached(
                            "SELECT id, actor, verb, object, target, time_us, foreign_id, extra FROM timeline \
                             WHERE owner = ?1 AND id < ?2 AND id >= ?3 ORDER BY id DESC LIMIT ?4",
                        )?;
                        let rows = st.query_map(params![READER, "g", "", 25], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, Option<String>>(4)?,
                                r.get::<_, i64>(5)?,
                                r.get::<_, Option<String>>(6)?,
                                r.get::<_, Option<String>>(7)?,
                            ))
                        })?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .await;
                matches!(rows, Ok(v) if v.len() == 25)
            }
        };
        out.push(read_config(ctx, "sqlite", "raw", c, &ctx.cpu, op).await);
        for &(endpoint, bytes) in &sizes {
            let url = format!("{}/{endpoint}", bare.base);
            let op = http_get(client.clone(), url, token.clone());
            let name = format!("bare_{endpoint}");
            let mut r = read_config(ctx, "sqlite", &name, c, &ctx.cpu, op).await;
            r.page_bytes = Some(bytes);
            out.push(r);
        }
    }
    drop(bare);
    server.stop();
    drop(raw);
    let _ = std::fs::remove_file(&path);
    Ok(out)
}
