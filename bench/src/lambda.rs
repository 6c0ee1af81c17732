//! Workload 6: each function's release binary started as Lambda starts it, against a Runtime API
//! emulated here (`/2018-06-01/runtime/invocation/next`, `/response`, `/error`, `/init/error`):
//! initialisation (process start → its first `next` request), first-event and warm-event latency
//! (`next` answered → `/response` received), peak RSS (VmHWM); and the bootstrap sizes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::stats::{summarize, Summary};
use crate::{log, BoxError, Ctx, KEYSPACE};

pub const FUNCTIONS: [(&str, &str, &str); 4] = [
    ("follow", "FollowFunction", "follow.json"),
    (
        "post-activity",
        "PostActivityFunction",
        "post-activity.json",
    ),
    ("get-feed", "GetFeedFunction", "get-feed-flat.json"),
    ("fanout", "FanoutFunction", "fanout.json"),
];

/// Warm events after the first, per run.
const WARM_EVENTS: usize = 10;

enum Outcome {
    Response,
    Error(String),
}

struct Emulator {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, String)>>,
    /// When each request id was handed out by `next`.
    handed: Mutex<HashMap<String, Instant>>,
    /// When the first `next` arrived.
    first_next: Mutex<Option<Instant>>,
    results: mpsc::UnboundedSender<(String, Instant, Outcome)>,
}

async fn next(State(emu): State<Arc<Emulator>>) -> impl IntoResponse {
    let arrived = Instant::now();
    emu.first_next.lock().unwrap().get_or_insert(arrived);
    let Some((id, body)) = emu.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    // An event queued before `next` arrived is handed out at `arrived`.
    emu.handed
        .lock()
        .unwrap()
        .insert(id.clone(), Instant::now());
    let mut h = HeaderMap::new();
    let deadline = chrono::Utc::now().timestamp_millis() + 300_000;
    h.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    h.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline));
    h.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:000000000000:function:bench"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, body)
}

async fn response(
    State(emu): State<Arc<Emulator>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> StatusCode {
    let _ = body;
    let _ = emu.results.send((id, Instant::now(), Outcome::Response));
    StatusCode::ACCEPTED
}

async fn error(
    State(emu): State<Arc<Emulator>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> StatusCode {
    let _ = emu.results.send((id, Instant::now(), Outcome::Error(body)));
    StatusCode::ACCEPTED
}

async fn init_error(State(emu): State<Arc<Emulator>>, body: String) -> StatusCode {
    let _ = emu
        .results
        .send(("init".into(), Instant::now(), Outcome::Error(body)));
    StatusCode::ACCEPTED
}

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

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn one_run(
    ctx: &Ctx,
    function: &str,
    bin: &Path,
    event: &str,
    envs: &[(String, String)],
    run: usize,
) -> Result<Run, BoxError> {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let emu = Arc::new(Emulator {
        events: tokio::sync::Mutex::new(events_rx),
        handed: Mutex::new(HashMap::new()),
        first_next: Mutex::new(None),
        results: results_tx,
    });
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(emu.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let ids: Vec<String> = (0..=WARM_EVENTS)
        .map(|i| format!("{function}-{run}-{i}-{:08x}", rand::random::<u32>()))
        .collect();
    for id in &ids {
        events_tx.send((id.clone(), event.to_owned()))?;
    }
    let log_file = std::fs::File::create(ctx.out.join(format!("lambda-{function}.log")))?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env(
            "FEEDS_JWT_PUBLIC_KEY_FILE",
            ctx.root.join("etc/dev-keys/dev-public.pem"),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let mut done: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.len() < ids.len() {
        let got = tokio::select! {
            r = tokio::time::timeout_at(deadline, results_rx.recv()) => r,
            status = child.wait() => {
                return Err(format!("{function} exited early ({:?}); see lambda-{function}.log", status?).into());
            }
        };
        let (id, at, outcome) = got
            .map_err(|_| format!("{function}: no answer within 60 s"))?
            .ok_or("emulator stopped")?;
        if let Outcome::Error(body) = outcome {
            return Err(format!("{function} reported an error for {id}: {body}").into());
        }
        done.insert(id, at);
    }
    let rss_kib = vm_hwm_kib(pid).unwrap_or(0);
    let _ = child.kill().await;
    server.abort();
    let first_next = emu.first_next.lock().unwrap().ok_or("no next call")?;
    let handed = emu.handed.lock().unwrap().clone();
    let lat = |id: &String| (done[id] - handed[id]).as_secs_f64() * 1e3;
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
