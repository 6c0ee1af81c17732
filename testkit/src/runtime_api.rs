//! A Lambda Runtime API (the `2018-06-01` interface a function's `bootstrap` polls), served on
//! 127.0.0.1 so that a function binary can be started exactly as Lambda starts it: with
//! `AWS_LAMBDA_RUNTIME_API` pointing here. Events are queued with [`RuntimeApi::push`]; the
//! function takes them with `GET …/invocation/next` and answers on `…/{id}/response` or
//! `…/{id}/error` (or `…/init/error` when it cannot start), which [`RuntimeApi::outcome`] returns,
//! with the times the benchmark and the shipped-binary test measure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

/// The request id `…/init/error` is reported under.
pub const INIT: &str = "init";

/// How the function answered one event.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `…/response`: the handler's result (a JSON document).
    Response(String),
    /// `…/error` or `…/init/error`: the error document.
    Error(String),
}

/// One answered event.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub answer: Answer,
    /// `next` handed the event out.
    pub handed: Instant,
    /// The answer arrived.
    pub answered: Instant,
}

impl Outcome {
    pub fn latency(&self) -> Duration {
        self.answered.saturating_duration_since(self.handed)
    }
}

struct Shared {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, String)>>,
    handed: Mutex<HashMap<String, Instant>>,
    first_next: Mutex<Option<Instant>>,
    answers: mpsc::UnboundedSender<Outcome>,
}

impl Shared {
    fn answer(&self, id: String, answer: Answer) {
        let answered = Instant::now();
        let handed = self
            .handed
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or(answered);
        let _ = self.answers.send(Outcome {
            id,
            answer,
            handed,
            answered,
        });
    }
}

pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<(String, String)>,
    answers: mpsc::UnboundedReceiver<Outcome>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Serves the API on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: tokio::sync::Mutex::new(events_rx),
            handed: Mutex::new(HashMap::new()),
            first_next: Mutex::new(None),
            answers: answers_tx,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            events,
            answers,
            server,
        })
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Queues an event under a request id; `next` hands events out in order.
    pub fn push(&self, id: &str, event: &str) {
        let _ = self.events.send((id.to_owned(), event.to_owned()));
    }

    /// The next answer (in the order they arrive), or `None` after `timeout`.
    pub async fn outcome(&mut self, timeout: Duration) -> Option<Outcome> {
        tokio::time::timeout(timeout, self.answers.recv())
            .await
            .ok()
            .flatten()
    }

    /// When the function first asked for an event: the end of its initialisation.
    pub fn first_next(&self) -> Option<Instant> {
        *self.shared.first_next.lock().unwrap()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(api): State<Arc<Shared>>) -> impl IntoResponse {
    api.first_next
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    let Some((id, body)) = api.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    api.handed
        .lock()
        .unwrap()
        .insert(id.clone(), Instant::now());
    let deadline = chrono::Utc::now().timestamp_millis() + 300_000;
    let mut h = HeaderMap::new();
    match HeaderValue::from_str(&id) {
        Ok(v) => h.insert("lambda-runtime-aws-request-id", v),
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, h, "bad id".into()),
    };
    h.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline));
    h.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:000000000000:function:local"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-00000000-000000000000000000000000;Sampled=0"),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, body)
}

async fn response(
    State(api): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    api.answer(id, Answer::Response(body));
    StatusCode::ACCEPTED
}

async fn error(State(api): State<Arc<Shared>>, Path(id): Path<String>, body: String) -> StatusCode {
    api.answer(id, Answer::Error(body));
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<Arc<Shared>>, body: String) -> StatusCode {
    api.answer(INIT.into(), Answer::Error(body));
    StatusCode::ACCEPTED
}

/// Peak resident set size of a running process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A function binary started as Lambda starts it: the Runtime API address and the environment
/// Lambda sets, stdout and stderr into `log`, killed when dropped.
pub fn lambda_command(
    bin: &std::path::Path,
    function: &str,
    api: &RuntimeApi,
    log: std::fs::File,
) -> std::io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("AWS_LAMBDA_RUNTIME_API", api.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(cmd)
}
