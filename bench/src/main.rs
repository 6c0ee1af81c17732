//! `feeds-bench`: the project's benchmark. `scripts/bench.sh` builds it, starts what it needs and
//! runs `feeds-bench all`; each workload is also a subcommand. Results go to `<out>/ours.json`.
//!
//! Workloads (all Cassandra ones in the `feeds_bench` keyspace of the local node):
//! 1. fan-out rate through the Lambda code path (chunked jobs through ElasticMQ) vs the raw write
//!    ceiling; 2. delivery latency after `POST /activities`; 3. feed reads through the standalone
//!    server vs the raw read ceiling; 3b. aggregated reads of a busy day vs a quiet one; 3c. the
//!    tombstones a page reads after many trims; 3d. a pulled author with 100,000 followers: its
//!    post's statements, and its followers' reads against a pushed-only reader; 5. fan-out and
//!    reads on the embedded SQLite store, with a bare HTTP round trip beside its reads; 6. Lambda
//!    costs; 7. Amazon Keyspaces request units per operation, counted from the statements run;
//! 8. realtime: post-to-message latency on connected followers, and connections per GiB.
//!
//! (Workload 4, Stream-Framework, is `bench/peer/`.)

mod bare;
mod busy;
mod cass;
mod costs;
mod embedded;
mod lambda;
mod load;
mod pulled;
mod realtime;
mod seed;
mod stats;
mod tombstones;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use feeds::BoxError;
use serde_json::{json, Value};

/// The benchmark's own keyspace.
pub const KEYSPACE: &str = "feeds_bench";

#[derive(Parser)]
#[command(name = "feeds-bench", about = "The feeds benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `tiny`: N = 100 only, few repetitions (a smoke check); `full`: the recorded sizes.
    #[arg(long, value_enum, default_value = "full", global = true)]
    size: Size,
    /// Where `ours.json` and the logs go.
    #[arg(long, default_value = "bench/results", global = true)]
    out: PathBuf,
    /// The standalone server's release binary.
    #[arg(
        long,
        default_value = "target/bench/release/feeds-server",
        global = true
    )]
    server_bin: PathBuf,
    /// Where the functions' release binaries are.
    #[arg(long, default_value = "target/bench/release", global = true)]
    functions_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Size {
    Tiny,
    Full,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Every workload below, in order.
    All,
    /// 1. Fan-out rate vs the raw write ceiling (Cassandra).
    Fanout,
    /// 2. Delivery latency (Cassandra + SQS).
    Delivery,
    /// 3. Feed reads through the standalone server vs the raw read ceiling (Cassandra).
    Reads,
    /// 3b. Aggregated reads of a reader with 10,000 activities today vs one with 100 (Cassandra
    /// and SQLite).
    BusyDay,
    /// 3c. Tombstones read per page after 100,000 deliveries into one feed (Cassandra tracing).
    Tombstones,
    /// 3d. A pulled author with 100,000 followers: its post's statements, and its followers'
    /// reads against a pushed-only reader (Cassandra).
    Pulled,
    /// 5. Fan-out and reads on the embedded SQLite store.
    Embedded,
    /// 6. Lambda initialisation, event latency, peak RSS; bootstrap sizes.
    Lambda,
    /// 7. Amazon Keyspaces request units per operation, counted from the statements run.
    Keyspaces,
    /// 8. Realtime: a post's message on 100 connected followers, and connections per GiB.
    Realtime,
}

pub struct Ctx {
    pub tiny: bool,
    pub out: PathBuf,
    pub tmp: PathBuf,
    pub root: PathBuf,
    pub server_bin: PathBuf,
    pub functions_dir: PathBuf,
    /// This process, and the local Cassandra and ElasticMQ (their pids from scripts/bench.sh).
    pub cpu: stats::Cpu,
}

impl Ctx {
    /// (followers, repetitions) of the fan-out workloads.
    pub fn fanout_sizes(&self) -> &'static [(usize, usize)] {
        if self.tiny {
            &[(100, 3)]
        } else {
            &[(1_000, 7), (10_000, 5), (100_000, 3)]
        }
    }

    /// (followers, posts) of the delivery-latency workload.
    pub fn delivery_sizes(&self) -> &'static [(usize, usize)] {
        if self.tiny {
            &[(100, 10)]
        } else {
            &[(100, 100), (10_000, 20)]
        }
    }

    /// (runs, seconds per run) of each read configuration. Tiny: short runs, since a smoke check
    /// goes through three dozen read configurations.
    pub fn read_runs(&self) -> (usize, f64) {
        if self.tiny {
            (2, 0.3)
        } else {
            (5, 3.0)
        }
    }
}

pub fn log(line: &str) {
    eprintln!("feeds-bench: {line}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feeds-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let root = std::env::current_dir()?;
    std::fs::create_dir_all(&cli.out)?;
    let tmp = root.join("target/bench-tmp");
    std::fs::create_dir_all(&tmp)?;
    let ctx = Ctx {
        tiny: cli.size == Size::Tiny,
        out: cli.out.clone(),
        tmp,
        root: root.clone(),
        server_bin: root.join(&cli.server_bin),
        functions_dir: root.join(&cli.functions_dir),
        cpu: stats::Cpu {
            procs: vec![("feeds-bench".to_owned(), None)],
        }
        .with("cassandra", env_pid("FEEDS_BENCH_CASSANDRA_PID"))
        .with("elasticmq", env_pid("FEEDS_BENCH_ELASTICMQ_PID")),
    };
    let path = ctx.out.join("ours.json");
    // Subcommands add to what an earlier run of the same size wrote.
    let mut doc: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|d: &Value| d["meta"]["size"] == json!(size_name(cli.size)))
        .unwrap_or_else(|| json!({}));
    doc["meta"] = json!({
        "size": size_name(cli.size),
        "started": chrono::Utc::now().to_rfc3339(),
        "keyspace": KEYSPACE,
        "fanout_chunk_size": cass::fanout_settings().chunk_size,
        "fanout_consumers": cass::CONSUMERS,
        "write_concurrencies": cass::WRITE_CONCURRENCIES,
        "read_concurrencies": cass::READ_CONCURRENCIES,
        "reader_timeline_rows": cass::READER_ROWS,
        "feed_max_length": cass::FEED_MAX_LENGTH,
        "aggregate_by": cass::GROUPING.feed(),
    });
    let all = cli.command == Command::All;
    let wants = |c: Command| all || cli.command == c;
    let t0 = Instant::now();
    let write = |doc: &Value| -> Result<(), BoxError> {
        std::fs::write(&path, serde_json::to_string_pretty(doc)?)?;
        Ok(())
    };
    // Each workload's wall time too: the tiny run has a budget (CI), the full one a schedule.
    let save = |doc: &mut Value, workload: &str, started: Instant| {
        let seconds = started.elapsed().as_secs_f64();
        doc["meta"]["workload_seconds"][workload] = json!(seconds);
        log(&format!("{workload}: {seconds:.0} s"));
        write(doc)
    };
    let needs_cassandra = [
        Command::Fanout,
        Command::Delivery,
        Command::Reads,
        Command::BusyDay,
        Command::Tombstones,
        Command::Pulled,
        Command::Lambda,
        Command::Keyspaces,
        Command::Realtime,
    ]
    .into_iter()
    .any(wants);
    let cassandra = if needs_cassandra {
        Some(cass::open().await?)
    } else {
        None
    };
    if wants(Command::Fanout) {
        let started = Instant::now();
        let r = cass::fanout_rate(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["fanout"] = serde_json::to_value(r)?;
        save(&mut doc, "fanout", started)?;
    }
    if wants(Command::Delivery) {
        let started = Instant::now();
        let r = cass::delivery(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["delivery"] = serde_json::to_value(r)?;
        save(&mut doc, "delivery", started)?;
    }
    if wants(Command::Reads) {
        let started = Instant::now();
        let r = cass::reads(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["reads"] = serde_json::to_value(r)?;
        save(&mut doc, "reads", started)?;
    }
    if wants(Command::BusyDay) {
        let started = Instant::now();
        let r = busy::busy_day(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["busy_day"] = serde_json::to_value(r)?;
        save(&mut doc, "busy_day", started)?;
    }
    if wants(Command::Tombstones) {
        let started = Instant::now();
        let r = tombstones::tombstones(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["tombstones"] = serde_json::to_value(r)?;
        save(&mut doc, "tombstones", started)?;
    }
    if wants(Command::Pulled) {
        let started = Instant::now();
        let r = pulled::pulled(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["pulled"] = serde_json::to_value(r)?;
        save(&mut doc, "pulled", started)?;
    }
    if wants(Command::Embedded) {
        let started = Instant::now();
        doc["sqlite_fanout"] = serde_json::to_value(embedded::fanout_rate(&ctx).await?)?;
        save(&mut doc, "sqlite_fanout", started)?;
        let started = Instant::now();
        doc["sqlite_reads"] = serde_json::to_value(embedded::reads(&ctx).await?)?;
        save(&mut doc, "sqlite_reads", started)?;
    }
    if wants(Command::Lambda) {
        let started = Instant::now();
        let queue = cass::fresh_queue("bench_lambda").await?;
        let r = lambda::costs(&ctx, queue.queue_url()).await;
        cass::delete_queue(&queue).await;
        doc["lambda"] = serde_json::to_value(r?)?;
        doc["bootstrap"] = serde_json::to_value(lambda::bootstraps(&ctx))?;
        save(&mut doc, "lambda", started)?;
    }
    if wants(Command::Keyspaces) {
        let started = Instant::now();
        let r = costs::keyspaces_units(&ctx, cassandra.as_ref().unwrap()).await?;
        doc["keyspaces"] = serde_json::to_value(r)?;
        save(&mut doc, "keyspaces", started)?;
    }
    if wants(Command::Realtime) {
        let started = Instant::now();
        doc["realtime"] = serde_json::to_value(realtime::realtime(&ctx).await?)?;
        save(&mut doc, "realtime", started)?;
    }
    doc["meta"]["seconds"] = json!(t0.elapsed().as_secs_f64());
    doc["meta"]["finished"] = json!(chrono::Utc::now().to_rfc3339());
    write(&doc)?;
    log(&format!(
        "done in {:.0} s; results in {}",
        t0.elapsed().as_secs_f64(),
        path.display()
    ));
    Ok(())
}

fn env_pid(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn size_name(s: Size) -> &'static str {
    match s {
        Size::Tiny => "tiny",
        Size::Full => "full",
    }
}
