//! Workload 6: each function's release binary started as Lambda starts it, against a Runtime API
//! served by `feeds_testkit::runtime_api` (`/2018-06-01/runtime/invocation/next`, `/response`, `/error`, `/init/error`):
//! initialisation (process start → its first `next` request), first-event and warm-event latency
//! (`next` answered → `/response` received), peak RSS (VmHWM); and the bootstrap sizes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use feeds::BoxError;
use feeds_testkit::runtime_api::{lambda_command, peak_rss_kib, Answer, RuntimeApi};
use serde::Serialize;

use crate::stats::{summarize, Summary};
use crate::{log, Ctx, KEYSPACE};

pub const FUNCTIONS: [(&str, &str, &str); 5] = [
    ("follow", "FollowFunction", "follow.json"),
    (
        "post-activity",
        "PostActivityFunction",
        "post-activity.json",
    ),
    ("get-feed", "GetFeedFunction", "get-feed-flat.json"),
    ("fanout", "FanoutFunction", "fanout.json"),
    ("realtime", "RealtimeFunction", "realtime-connect.json"),
];

/// Warm events after the first, per run.
const WARM_EVENTS: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct LambdaResult {
    pub function: String,
    /// `embedded` (FEEDS_STORE=sqlite FEEDS_QUEUE=embedded: no database connection) or
    /// `cassandra+sqs` (connects to Cassandra and prepares its statements during init).
    pub mode: String,
    pub runs: usize,
    pub init_ms: Summary,
    pub first_event_ms: Summary,
    pub warm_event_ms: Summary,
    pub peak_rss_mib: Summary,
    pub binary_bytes: u64,
}

struct Run {
    init_ms: f64,
    first_ms: f64,
    warm_ms: f64,
    rss_mib: f64,
}

async fn one_run(
    ctx: &Ctx,
    function: &str,
    bin: &Path,
    event: &str,
    envs: &[(String, String)],
    run: usize,
) -> Result<Run, BoxError> {
    let mut api = RuntimeApi::start().await?;
    let ids: Vec<String> = (0..=WARM_EVENTS)
        .map(|i| format!("{function}-{run}-{i}-{:08x}", rand::random::<u32>()))
        .collect();
    for id in &ids {
        api.push(id, event);
    }
    let log_file = std::fs::File::create(ctx.out.join(format!("lambda-{function}.log")))?;
    let mut cmd = lambda_command(bin, function, &api, log_file)?;
    cmd.env(
        "FEEDS_JWT_PUBLIC_KEY_FILE",
        ctx.root.join("etc/dev-keys/dev-public.pem"),
    );
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let mut done: HashMap<String, Duration> = HashMap::new();
    while done.len() < ids.len() {
        let got = tokio::select! {
            r = api.outcome(Duration::from_secs(60)) => r,
            status = child.wait() => {
                return Err(format!("{function} exited early ({:?}); see lambda-{function}.log", status?).into());
            }
        };
        let outcome = got.ok_or_else(|| format!("{function}: no answer within 60 s"))?;
        if let Answer::Error(body) = &outcome.answer {
            return Err(format!("{function} reported an error for {}: {body}", outcome.id).into());
        }
        done.insert(outcome.id.clone(), outcome.latency());
    }
    let rss_kib = peak_rss_kib(pid).unwrap_or(0);
    let _ = child.kill().await;
    let first_next = api.first_next().ok_or("no next call")?;
    let lat = |id: &String| done[id].as_secs_f64() * 1e3;
    let warm: Vec<f64> = ids[1..].iter().map(lat).collect();
    Ok(Run {
        init_ms: (first_next - started).as_secs_f64() * 1e3,
        first_ms: lat(&ids[0]),
        warm_ms: summarize(&warm).median,
        rss_mib: rss_kib as f64 / 1024.0,
    })
}

pub async fn costs(ctx: &Ctx, queue_url: &str) -> Result<Vec<LambdaResult>, BoxError> {
    let runs = if ctx.tiny { 2 } else { 10 };
    let mut out = Vec::new();
    for (function, _, event_file) in FUNCTIONS {
        let bin = ctx.functions_dir.join(function);
        let event = std::fs::read_to_string(ctx.root.join("events").join(event_file))?;
        for mode in ["embedded", "cassandra+sqs"] {
            let mut results = Vec::new();
            for run in 0..runs {
                let envs: Vec<(String, String)> = if mode == "embedded" {
                    let db = ctx.tmp.join(format!("lambda-{function}-{run}.db"));
                    let _ = std::fs::remove_file(&db);
                    vec![
                        ("FEEDS_STORE".into(), "sqlite".into()),
                        ("FEEDS_QUEUE".into(), "embedded".into()),
                        ("FEEDS_SQLITE_PATH".into(), db.display().to_string()),
                    ]
                } else {
                    vec![
                        ("FEEDS_STORE".into(), "cassandra".into()),
                        ("FEEDS_QUEUE".into(), "sqs".into()),
                        ("FEEDS_CASSANDRA_KEYSPACE".into(), KEYSPACE.into()),
                        ("FEEDS_QUEUE_URL".into(), queue_url.into()),
                    ]
                };
                let envs: Vec<(String, String)> = envs
                    .into_iter()
                    .chain(
                        crate::cass::feed_env()
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v)),
                    )
                    .collect();
                results.push(one_run(ctx, function, &bin, &event, &envs, run).await?);
                if mode == "embedded" {
                    let db = ctx.tmp.join(format!("lambda-{function}-{run}.db"));
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                    }
                }
            }
            let pick = |f: fn(&Run) -> f64| summarize(&results.iter().map(f).collect::<Vec<_>>());
            let r = LambdaResult {
                function: function.to_owned(),
                mode: mode.to_owned(),
                runs,
                init_ms: pick(|r| r.init_ms),
                first_event_ms: pick(|r| r.first_ms),
                warm_event_ms: pick(|r| r.warm_ms),
                peak_rss_mib: pick(|r| r.rss_mib),
                binary_bytes: std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0),
            };
            log(&format!(
                "lambda {function} ({mode}): init {:.1} ms, first {:.2} ms, warm {:.2} ms, peak RSS {:.1} MiB",
                r.init_ms.median, r.first_event_ms.median, r.warm_event_ms.median, r.peak_rss_mib.median
            ));
            out.push(r);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub function: String,
    pub path: String,
    /// `None`: not built.
    pub bytes: Option<u64>,
    pub modified: Option<String>,
}

/// The arm64 bootstraps `sam build` left in `.aws-sam/build/<LogicalId>/bootstrap`.
pub fn bootstraps(ctx: &Ctx) -> Vec<Bootstrap> {
    FUNCTIONS
        .iter()
        .map(|(function, logical, _)| {
            let path = ctx
                .root
                .join(".aws-sam/build")
                .join(logical)
                .join("bootstrap");
            let meta = std::fs::metadata(&path).ok();
            Bootstrap {
                function: function.to_string(),
                path: format!(".aws-sam/build/{logical}/bootstrap"),
                bytes: meta.as_ref().map(|m| m.len()),
                modified: meta
                    .and_then(|m| m.modified().ok())
                    .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            }
        })
        .collect()
}
