//! Workloads 1–3 on the local Cassandra: the fan-out rate through the Lambda code path (chunked jobs
//! through ElasticMQ) against the raw write ceiling, delivery latency after `POST /activities`, and
//! feed reads through the standalone server against the raw read ceiling.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use chrono::Utc;
use feeds::aggregate::Grouping;
use feeds::config::Backends;
use feeds::fanout::{Fanout, FanoutSettings};
use feeds::http::Routes;
use feeds::model::Activity;
use feeds::queue::sqs::{SqsConfig, SqsQueue};
use feeds::queue::FanoutJob;
use feeds::queue::Queue;
use feeds::settings::Env;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::{IdRange, Store};
use feeds::BoxError;
use feeds_testkit::server::Server;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::load::{check_page, closed_loop, http_client, http_get, RunResult};
use crate::stats::{percentile, sorted, summarize, Summary};
use crate::{log, Ctx, KEYSPACE};

/// Concurrent consumers of the fan-out queue: concurrent Lambda invocations, each with its own
/// clients (its own execution environment).
pub const CONSUMERS: usize = 4;
/// The raw ceiling's concurrencies; the best is reported.
pub const WRITE_CONCURRENCIES: [usize; 3] = [16, 64, 256];

pub struct Cass {
    pub cfg: CassandraConfig,
    pub store: Arc<CassandraStore>,
    /// The raw driver: its own session, statements prepared here.
    pub raw: Arc<Session>,
    pub timeline_insert: Arc<PreparedStatement>,
    pub follower_insert: Arc<PreparedStatement>,
    pub timeline_page: Arc<PreparedStatement>,
}

pub async fn open() -> Result<Cass, BoxError> {
    let mut cfg = CassandraConfig::read(&Env::process())?;
    cfg.keyspace = KEYSPACE.to_owned();
    let session = cassandra::connect(&cfg).await?;
    cassandra::migrate(&session, &cfg).await?;
    let store = Arc::new(CassandraStore::new(Arc::new(session), &cfg).await?);
    let raw = Arc::new(cassandra::connect(&cfg).await?);
    let ks = KEYSPACE;
    // The store's own statements, character for character (shared/src/store/cassandra/store.rs).
    let timeline_insert = raw.prepare(format!("INSERT INTO {ks}.timeline (owner, id, actor, verb, object, target, time_us, foreign_id, extra, recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")).await?;
    let follower_insert = raw
        .prepare(format!(
            "INSERT INTO {ks}.followers (user, follower, created_us) VALUES (?, ?, ?)"
        ))
        .await?;
    let timeline_page = raw.prepare(format!("SELECT id, actor, verb, object, target, time_us, foreign_id, extra, recipients FROM {ks}.timeline WHERE owner = ? AND id < ? AND id >= ? LIMIT ?")).await?;
    Ok(Cass {
        cfg,
        store,
        raw,
        timeline_insert: Arc::new(timeline_insert),
        follower_insert: Arc::new(follower_insert),
        timeline_page: Arc::new(timeline_page),
    })
}

pub fn new_activity(actor: &str, object: String) -> Activity {
    let time = feeds::model::truncate_to_micros(Utc::now());
    Activity {
        id: feeds::model::ActivityId::new(time).0,
        actor: actor.to_owned(),
        verb: "post".to_owned(),
        object,
        target: None,
        time,
        foreign_id: None,
        to: Vec::new(),
        extra: None,
    }
}

pub fn follower_name(actor: &str, i: usize) -> String {
    format!("{actor}_f{i:06}")
}

/// `n` followers of `actor`, written straight into the `followers` table (set-up, not measured).
pub async fn add_followers(cass: &Cass, actor: &str, n: usize) -> Result<(), BoxError> {
    let now = Utc::now().timestamp_micros();
    futures::stream::iter(0..n)
        .map(|i| {
            let (raw, st) = (cass.raw.clone(), cass.follower_insert.clone());
            let actor = actor.to_owned();
            async move {
                let f = follower_name(&actor, i);
                raw.execute_unpaged(&st, (actor.as_str(), f.as_str(), now))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The raw write ceiling: the `n` timeline rows of one activity, prepared single-row inserts at
/// concurrency `c`. Rows per second.
pub async fn ceiling_write(
    cass: &Cass,
    actor: &str,
    n: usize,
    a: &Activity,
    c: usize,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (raw, st) = (cass.raw.clone(), cass.timeline_insert.clone());
            let owner = follower_name(actor, i);
            let a = a.clone();
            async move {
                let values = (
                    owner.as_str(),
                    a.id.as_str(),
                    a.actor.as_str(),
                    a.verb.as_str(),
                    a.object.as_str(),
                    MaybeUnset::<&str>::Unset,
                    a.time.timestamp_micros(),
                    MaybeUnset::<&str>::Unset,
                    MaybeUnset::<String>::Unset,
                    MaybeUnset::<Vec<String>>::Unset,
                );
                raw.execute_unpaged(&st, values).await.map(drop)
            }
        })
        .buffer_unordered(c)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A fresh queue on the local SQS server.
pub async fn fresh_queue(prefix: &str) -> Result<SqsQueue, BoxError> {
    let client = feeds::queue::sqs::client(&sqs_config(String::new())).await;
    let name = format!("{prefix}_{:08x}", rand::random::<u32>());
    let created = client.create_queue().queue_name(&name).send().await?;
    Ok(SqsQueue::new(
        client,
        created.queue_url.ok_or("CreateQueue answered no URL")?,
    ))
}

pub async fn delete_queue(q: &SqsQueue) {
    let _ = q
        .client()
        .delete_queue()
        .queue_url(q.queue_url())
        .send()
        .await;
}

fn sqs_config(queue_url: String) -> SqsConfig {
    SqsConfig {
        queue_url,
        endpoint: std::env::var("FEEDS_SQS_ENDPOINT")
            .ok()
            .or_else(|| Some("http://127.0.0.1:9324".to_owned())),
        dlq_url: None,
    }
}

/// When a batch finished: the handler returned (its rows are written), how many messages succeeded.
struct Done {
    at: Instant,
    ok: usize,
    failed: usize,
}

/// Concurrent Lambda-like consumers of one queue: receive (as the SQS event source does) →
/// `feeds::lambda::handle_sqs_event` → delete what succeeded.
pub struct Consumers {
    rx: mpsc::UnboundedReceiver<Done>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub failures: usize,
}

impl Consumers {
    pub async fn start(cass: &Cass, queue_url: &str, k: usize) -> Result<Consumers, BoxError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..k {
            // Each invocation environment builds its own clients, as each Lambda's `main` does.
            let session = cassandra::connect(&cass.cfg).await?;
            let store = Arc::new(CassandraStore::new(Arc::new(session), &cass.cfg).await?);
            let queue = SqsQueue::from_config(&sqs_config(queue_url.to_owned())).await;
            let fanout = Fanout::new(store, Arc::new(queue.clone()), fanout_settings());
            tasks.push(tokio::spawn(consume(
                fanout,
                queue,
                tx.clone(),
                stop_rx.clone(),
            )));
        }
        Ok(Consumers {
            rx,
            stop,
            tasks,
            failures: 0,
        })
    }

    /// Waits until `expected` messages were handled successfully; answers when the last finished.
    pub async fn wait(&mut self, expected: usize, timeout: Duration) -> Result<Instant, BoxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut handled = 0;
        let mut last = Instant::now();
        while handled < expected {
            let done = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| {
                    format!("only {handled} of {expected} fan-out messages handled in {timeout:?}")
                })?
                .ok_or("the consumers stopped")?;
            handled += done.ok;
            self.failures += done.failed;
            last = done.at;
        }
        Ok(last)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The feed length every fan-out in the benchmark trims to (the default of
/// `FEEDS_FEED_MAX_LENGTH`): the in-process fan-out, the server and the functions all get it.
pub const FEED_MAX_LENGTH: usize = 1000;
/// How aggregated feeds group (the default of `FEEDS_AGGREGATE_BY`).
pub const GROUPING: Grouping = Grouping::VerbDay;

pub fn fanout_settings() -> FanoutSettings {
    FanoutSettings {
        max_length: FEED_MAX_LENGTH,
        grouping: GROUPING,
        ..FanoutSettings::default()
    }
}

/// The feed settings for a server or function the benchmark starts, so that an environment
/// variable left set by the caller cannot change what is measured.
pub fn feed_env() -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_FEED_MAX_LENGTH", FEED_MAX_LENGTH.to_string()),
        ("FEEDS_AGGREGATE_BY", GROUPING.feed().to_owned()),
        // One token reads thousands of times a minute here: no per-principal limit.
        ("FEEDS_RATE_READS", "0".to_owned()),
        ("FEEDS_RATE_WRITES", "0".to_owned()),
    ]
}

/// Messages one `Deliver` to `n` followers becomes: every full chunk enqueues the next one.
pub fn expected_jobs(n: usize) -> usize {
    n / fanout_settings().chunk_size + 1
}

async fn consume(
    fanout: Fanout,
    queue: SqsQueue,
    tx: mpsc::UnboundedSender<Done>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            _ = stop.changed() => return,
            r = queue.receive(1) => r,
        };
        let received = match received {
            Ok(r) if r.is_empty() => continue,
            Ok(r) => r,
            Err(e) => {
                eprintln!("feeds-bench: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // The event Lambda's SQS event source builds, deserialised as the runtime does.
        let records: Vec<_> = received
            .iter()
            .map(|d| {
                json!({
                    "messageId": d.message.id, "receiptHandle": d.receipt, "body": d.message.body,
                    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                    "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:bench", "awsRegion": "us-east-1"
                })
            })
            .collect();
        let event: SqsEvent =
            serde_json::from_value(json!({ "Records": records })).expect("an SQS event");
        let response = feeds::lambda::handle_sqs_event(&fanout, event).await;
        let at = Instant::now();
        let failed: HashSet<String> = response
            .batch_item_failures
            .into_iter()
            .map(|f| f.item_identifier)
            .collect();
        for d in &received {
            if !failed.contains(&d.message.id) {
                if let Err(e) = queue.delete(&d.receipt).await {
                    eprintln!("feeds-bench: delete failed: {e}");
                }
            }
        }
        let _ = tx.send(Done {
            at,
            ok: received.len() - failed.len(),
            failed: failed.len(),
        });
    }
}

/// Checks that the activity reached followers of `actor`: every one of them (`all`), or a sample
/// with the first and the last.
pub async fn verify(
    store: &dyn Store,
    actor: &str,
    n: usize,
    activity_id: &str,
    all: bool,
) -> Result<(), BoxError> {
    let mut idx: Vec<usize> = if all || n <= 200 {
        (0..n).collect()
    } else {
        (0..200).map(|_| rand::random_range(0..n)).collect()
    };
    idx.push(0);
    idx.push(n - 1);
    let missing = futures::stream::iter(idx)
        .map(|i| async move {
            let owner = follower_name(actor, i);
            let range = IdRange {
                before: None,
                not_before: Some(activity_id),
            };
            match store.timeline(&owner, range, 1).await {
                Ok(page) if page.first().map(|a| a.id.as_str()) == Some(activity_id) => 0usize,
                _ => 1,
            }
        })
        .buffer_unordered(64)
        .fold(0, |acc, m| async move { acc + m })
        .await;
    if missing > 0 {
        return Err(format!("{missing} followers of {actor} lack activity {activity_id}").into());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub store: String,
    pub path: String,
    pub followers: usize,
    pub reps: usize,
    pub jobs_per_fanout: usize,
    pub fanout_rows_per_s: Summary,
    pub fanout_wall_s: Summary,
    /// Rows per second at each concurrency of the raw ceiling (for SQLite: each transaction size).
    pub ceiling_by_setting: BTreeMap<String, Summary>,
    pub ceiling_best_setting: String,
    pub ceiling_rows_per_s: Summary,
    /// Median fan-out rate / median best ceiling.
    pub ratio: f64,
    pub failed_messages: usize,
    /// CPU milliseconds per 1,000 rows, by process, over all fan-out runs.
    pub fanout_cpu_ms_per_1k_rows: BTreeMap<String, f64>,
    /// The same for the best ceiling setting.
    pub ceiling_cpu_ms_per_1k_rows: BTreeMap<String, f64>,
}

/// CPU seconds summed over runs, and the rows they wrote.
pub struct CpuSum {
    cpu: crate::stats::Cpu,
    seconds: Vec<f64>,
    rows: usize,
}

impl CpuSum {
    pub fn new(cpu: &crate::stats::Cpu) -> Self {
        CpuSum {
            cpu: cpu.clone(),
            seconds: vec![0.0; cpu.procs.len()],
            rows: 0,
        }
    }

    pub fn add(&mut self, before: &[f64], after: &[f64], rows: usize) {
        for (s, (b, a)) in self.seconds.iter_mut().zip(before.iter().zip(after)) {
            *s += a - b;
        }
        self.rows += rows;
    }

    pub fn per_1k_rows(&self) -> BTreeMap<String, f64> {
        let zero = vec![0.0; self.seconds.len()];
        self.cpu
            .per_unit(&zero, &self.seconds, self.rows as f64 / 1000.0)
    }
}

/// Workload 1 on Cassandra.
pub async fn fanout_rate(ctx: &Ctx, cass: &Cass) -> Result<Vec<FanoutResult>, BoxError> {
    let mut out = Vec::new();
    for &(n, reps) in ctx.fanout_sizes() {
        let actor = format!("bench_star_{n}");
        log(&format!("fan-out: {n} followers of {actor} (set-up)"));
        add_followers(cass, &actor, n).await?;
        let queue = fresh_queue(&format!("bench_fanout_{n}")).await?;
        let mut consumers = Consumers::start(cass, queue.queue_url(), CONSUMERS).await?;
        let jobs = expected_jobs(n);
        let mut rates = Vec::new();
        let mut walls = Vec::new();
        let mut ceilings: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let mut cpu_fan = CpuSum::new(&ctx.cpu);
        let mut cpu_ceil: BTreeMap<usize, CpuSum> = BTreeMap::new();
        // Interleaved, so that drift in the machine's load hits both alike.
        for rep in 0..reps {
            let a = new_activity(&actor, format!("obj_fanout_{rep}"));
            cass.store.put_activity(&a).await?;
            let cpu0 = ctx.cpu.snapshot();
            let t0 = Instant::now();
            queue
                .send(&[FanoutJob::Deliver {
                    activity_id: a.id.clone(),
                    actor: actor.clone(),
                    after: None,
                }])
                .await?;
            let end = consumers.wait(jobs, Duration::from_secs(600)).await?;
            cpu_fan.add(&cpu0, &ctx.cpu.snapshot(), n);
            let wall = (end - t0).as_secs_f64();
            rates.push(n as f64 / wall);
            walls.push(wall);
            verify(cass.store.as_ref(), &actor, n, &a.id, ctx.tiny).await?;
            let mut line = format!(
                "fan-out {n}: rep {}/{reps}: {:.0} rows/s ({wall:.2} s)",
                rep + 1,
                n as f64 / wall
            );
            for &c in &WRITE_CONCURRENCIES {
                let a = new_activity(&actor, format!("obj_ceiling_{rep}_{c}"));
                let cpu0 = ctx.cpu.snapshot();
                let r = ceiling_write(cass, &actor, n, &a, c).await?;
                cpu_ceil
                    .entry(c)
                    .or_insert_with(|| CpuSum::new(&ctx.cpu))
                    .add(&cpu0, &ctx.cpu.snapshot(), n);
                line += &format!("; raw c={c}: {r:.0}");
                ceilings.entry(c).or_default().push(r);
            }
            log(&line);
        }
        let failures = consumers.failures;
        consumers.stop().await;
        delete_queue(&queue).await;
        out.push(fanout_result(
            "cassandra",
            &format!("SQS (ElasticMQ) → {CONSUMERS} concurrent handle_sqs_event consumers"),
            n,
            reps,
            jobs,
            &rates,
            &walls,
            ceilings
                .into_iter()
                .map(|(c, v)| (format!("concurrency {c}"), v))
                .collect(),
            failures,
            cpu_fan.per_1k_rows(),
            cpu_ceil
                .into_iter()
                .map(|(c, v)| (format!("concurrency {c}"), v.per_1k_rows()))
                .collect(),
        ));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
pub fn fanout_result(
    store: &str,
    path: &str,
    n: usize,
    reps: usize,
    jobs: usize,
    rates: &[f64],
    walls: &[f64],
    ceilings: Vec<(String, Vec<f64>)>,
    failed: usize,
    fanout_cpu: BTreeMap<String, f64>,
    mut ceiling_cpu: BTreeMap<String, BTreeMap<String, f64>>,
) -> FanoutResult {
    let by: BTreeMap<String, Summary> = ceilings
        .iter()
        .map(|(k, v)| (k.clone(), summarize(v)))
        .collect();
    let (best, best_summary) = by
        .iter()
        .max_by(|a, b| a.1.median.partial_cmp(&b.1.median).unwrap())
        .map(|(k, s)| (k.clone(), s.clone()))
        .expect("a ceiling");
    let fan = summarize(rates);
    FanoutResult {
        store: store.to_owned(),
        path: path.to_owned(),
        followers: n,
        reps,
        jobs_per_fanout: jobs,
        ratio: fan.median / best_summary.median,
        fanout_rows_per_s: fan,
        fanout_wall_s: summarize(walls),
        ceiling_by_setting: by,
        ceiling_cpu_ms_per_1k_rows: ceiling_cpu.remove(&best).unwrap_or_default(),
        ceiling_best_setting: best,

        ceiling_rows_per_s: best_summary,
        failed_messages: failed,
        fanout_cpu_ms_per_1k_rows: fanout_cpu,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryResult {
    pub followers: usize,
    pub posts: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_ms: Summary,
    pub post_ms: Summary,
}

/// Workload 2: `POST /activities` through the post-activity function's router, served over HTTP
/// in this process; fan-out by the Lambda-like consumers; latency from the `201` to the moment
/// the last chunk's rows were acknowledged (the last follower's feed shows the activity then).
pub async fn delivery(ctx: &Ctx, cass: &Cass) -> Result<Vec<DeliveryResult>, BoxError> {
    let queue = fresh_queue("bench_delivery").await?;
    let store: Arc<dyn Store> = cass.store.clone();
    let backends = Backends::new(store.clone(), queue.clone(), fanout_settings());
    let app = feeds::http::router(
        feeds_testkit::services::app(&backends),
        Routes::PostActivity,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut consumers = Consumers::start(cass, queue.queue_url(), CONSUMERS).await?;
    let client = http_client();
    let mut out = Vec::new();
    for &(n, posts) in ctx.delivery_sizes() {
        let actor = format!("bench_deliver_{n}");
        log(&format!("delivery: {n} followers of {actor} (set-up)"));
        add_followers(cass, &actor, n).await?;
        let token = feeds::auth::mint_token(
            feeds::auth::DEV_PRIVATE_KEY_PEM,
            &actor,
            &[],
            Utc::now() + chrono::Duration::hours(2),
            None,
            None,
        )?;
        // The delivery's chunks, and the recount of the actor's activities the post enqueues too.
        let jobs = expected_jobs(n) + 1;
        let mut lat = Vec::new();
        let mut post_ms = Vec::new();
        for i in 0..posts {
            let body =
                json!({"actor": actor, "verb": "post", "object": format!("obj_delivery_{i}")});
            let t = Instant::now();
            let r = client
                .post(format!("{base}/activities"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?;
            let status = r.status();
            let answer: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
            let answered = Instant::now();
            if status.as_u16() != 201 {
                return Err(format!("POST /activities answered {status}: {answer}").into());
            }
            post_ms.push((answered - t).as_secs_f64() * 1e3);
            let end = consumers.wait(jobs, Duration::from_secs(300)).await?;
            lat.push(end.saturating_duration_since(answered).as_secs_f64() * 1e3);
            let id = answer["id"].as_str().ok_or("no id in the answer")?;
            if i == 0 || i + 1 == posts {
                verify(cass.store.as_ref(), &actor, n, id, false).await?;
            } else {
                // The last follower (the last chunk's last row) sees it.
                let last = follower_name(&actor, n - 1);
                let page = cass
                    .store
                    .timeline(
                        &last,
                        IdRange {
                            before: None,
                            not_before: Some(id),
                        },
                        1,
                    )
                    .await?;
                if page.first().map(|a| a.id.as_str()) != Some(id) {
                    return Err(format!("{last} does not see {id}").into());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = sorted(&lat);
        let r = DeliveryResult {
            followers: n,
            posts,
            p50_ms: percentile(&s, 50.0),
            p99_ms: percentile(&s, 99.0),
            latency_ms: summarize(&lat),
            post_ms: summarize(&post_ms),
        };
        log(&format!(
            "delivery {n}: p50 {:.1} ms, p99 {:.1} ms over {posts} posts",
            r.p50_ms, r.p99_ms
        ));
        out.push(r);
    }
    consumers.stop().await;
    server.abort();
    delete_queue(&queue).await;
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadResult {
    pub store: String,
    /// `flat`, `aggregated`, `raw` (the driver reading the same 25 rows), `bare_flat` and
    /// `bare_aggregated` (axum answering those pages pre-serialised), or `aggregated (busy)` and
    /// `aggregated (quiet)` (workload 3b).
    pub endpoint: String,
    pub concurrency: usize,
    pub runs: usize,
    pub seconds_per_run: f64,
    pub rps: Summary,
    pub p50_ms: Summary,
    pub p99_ms: Summary,
    pub errors: usize,
    /// CPU milliseconds per request, by process, over the measured runs.
    pub cpu_ms_per_request: BTreeMap<String, f64>,
    /// The body's size, where the workload fixes it (the bare HTTP pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_bytes: Option<usize>,
}

pub const READER: &str = "bench_reader";
pub const READER_ROWS: usize = 300;

/// The reader's timeline: 300 activities over 30 days, 10 a day, 3 verbs, 10 actors; fixed ids,
/// so writing it again changes nothing.
pub fn reader_timeline() -> Vec<Activity> {
    let base = feeds::model::parse_time("2026-10-31T00:00:00Z").expect("a time");
    (0..READER_ROWS)
        .map(|k| {
            let (day, j) = (k / 10, k % 10);
            let time =
                base - chrono::Duration::days(day as i64) + chrono::Duration::hours(j as i64 * 2);
            Activity {
                id: format!(
                    "{:016x}{:016x}",
                    time.timestamp_micros(),
                    0xbe9c_0000u64 + k as u64
                ),
                actor: format!("bench_actor_{:02}", k % 10),
                verb: ["post", "like", "share"][j % 3].to_owned(),
                object: format!("obj_{day}_{j}"),
                target: None,
                time,
                foreign_id: None,
                to: Vec::new(),
                extra: None,
            }
        })
        .collect()
}

pub fn token_for(user: &str) -> Result<String, BoxError> {
    Ok(feeds::auth::mint_token(
        feeds::auth::DEV_PRIVATE_KEY_PEM,
        user,
        &[],
        Utc::now() + chrono::Duration::hours(4),
        None,
        None,
    )?)
}

/// Runs one read configuration `runs` times after a warm-up.
pub async fn read_config<F, Fut>(
    ctx: &Ctx,
    store: &str,
    endpoint: &str,
    c: usize,
    cpu: &crate::stats::Cpu,
    op: F,
) -> ReadResult
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (runs, secs) = ctx.read_runs();
    closed_loop(c, Duration::from_secs_f64(secs.min(1.0)), op.clone()).await;
    let mut results: Vec<RunResult> = Vec::new();
    let cpu0 = cpu.snapshot();
    for _ in 0..runs {
        results.push(closed_loop(c, Duration::from_secs_f64(secs), op.clone()).await);
    }
    let requests: usize = results.iter().map(|r| r.requests).sum();
    let cpu_ms_per_request = cpu.per_unit(&cpu0, &cpu.snapshot(), requests.max(1) as f64);
    let pick = |f: fn(&RunResult) -> f64| summarize(&results.iter().map(f).collect::<Vec<_>>());
    let r = ReadResult {
        store: store.to_owned(),
        endpoint: endpoint.to_owned(),
        concurrency: c,
        runs,
        seconds_per_run: secs,
        rps: pick(|r| r.rps),
        p50_ms: pick(|r| r.p50_ms),
        p99_ms: pick(|r| r.p99_ms),
        errors: results.iter().map(|r| r.errors).sum(),
        cpu_ms_per_request,
        page_bytes: None,
    };
    log(&format!(
        "reads {store} {endpoint} c={c}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        r.rps.median, r.p50_ms.median, r.p99_ms.median, r.errors
    ));
    r
}

pub const READ_CONCURRENCIES: [usize; 3] = [1, 16, 64];

/// A timeline row as the store's page query answers it.
#[derive(scylla::DeserializeRow)]
#[allow(dead_code)]
pub struct RawRow {
    pub id: String,
    pub actor: String,
    pub verb: String,
    pub object: String,
    pub target: Option<String>,
    pub time_us: i64,
    pub foreign_id: Option<String>,
    pub extra: Option<String>,
    pub recipients: Option<Vec<String>>,
}

/// The standalone server (release binary) on Cassandra and a fresh SQS queue.
pub async fn launch_server(ctx: &Ctx, log_name: &str) -> Result<(Server, SqsQueue), BoxError> {
    launch_server_with(ctx, log_name, &[]).await
}

/// [`launch_server`] with more settings.
pub async fn launch_server_with(
    ctx: &Ctx,
    log_name: &str,
    more: &[(&'static str, String)],
) -> Result<(Server, SqsQueue), BoxError> {
    let queue = fresh_queue("bench_reads").await?;
    let mut envs = vec![
        ("FEEDS_STORE", "cassandra".to_owned()),
        ("FEEDS_QUEUE", "sqs".to_owned()),
        ("FEEDS_CASSANDRA_KEYSPACE", KEYSPACE.to_owned()),
        ("FEEDS_QUEUE_URL", queue.queue_url().to_owned()),
        ("FEEDS_LOG_FORMAT", "json".to_owned()),
    ];
    envs.extend(feed_env());
    envs.extend(more.iter().cloned());
    let server = Server::launch(&ctx.server_bin, &envs, &ctx.out.join(log_name));
    match server {
        Ok(server) => Ok((server, queue)),
        Err(e) => {
            delete_queue(&queue).await;
            Err(e)
        }
    }
}

/// Workload 3 on Cassandra: the standalone server (release binary) on Cassandra + SQS.
pub async fn reads(ctx: &Ctx, cass: &Cass) -> Result<Vec<ReadResult>, BoxError> {
    crate::seed::write_timeline(cass.store.as_ref(), READER, &reader_timeline()).await?;
    let (server, queue) = launch_server(ctx, "server-cassandra.log").await?;
    let token = token_for(READER)?;
    let client = http_client();
    crate::seed::settle().await;
    // The first reads recompute the marked days; then every page must be full.
    for (endpoint, what) in [("flat", "activities"), ("aggregated", "groups")] {
        check_page(&client, &server.base, endpoint, &token, 25)
            .await
            .map_err(|e| format!("cassandra {endpoint} page of {READER} ({what}): {e}"))?;
    }
    let server_cpu = ctx.cpu.with("feeds-server", Some(server.pid()));
    let mut out = Vec::new();
    for &c in &READ_CONCURRENCIES {
        for endpoint in ["flat", "aggregated"] {
            let url = format!("{}/feeds/{endpoint}?limit=25", server.base);
            out.push(
                read_config(
                    ctx,
                    "cassandra",
                    endpoint,
                    c,
                    &server_cpu,
                    http_get(client.clone(), url, token.clone()),
                )
                .await,
            );
        }
        let (raw, st) = (cass.raw.clone(), cass.timeline_page.clone());
        let op = move || {
            let (raw, st) = (raw.clone(), st.clone());
            async move {
                let Ok(r) = raw.execute_unpaged(&st, (READER, "g", "", 25i32)).await else {
                    return false;
                };
                let Ok(rows) = r.into_rows_result() else {
                    return false;
                };
                let Ok(iter) = rows.rows::<RawRow>() else {
                    return false;
                };
                let rows: Result<Vec<RawRow>, _> = iter.collect();
                matches!(rows, Ok(v) if v.len() == 25)
            }
        };
        out.push(read_config(ctx, "cassandra", "raw", c, &ctx.cpu, op).await);
    }
    server.stop();
    delete_queue(&queue).await;
    Ok(out)
}
