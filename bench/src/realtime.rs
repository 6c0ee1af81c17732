//! Workload 8: realtime through the standalone server's `GET /realtime`. How long after the `201`
//! of `POST /activities` each of 100 connected followers holds the `activity` message, on both
//! stores; and how many idle connections one server holds in 1 GiB, from its resident memory
//! before and after opening them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use feeds::BoxError;
use feeds_testkit::server::Server;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::cass::{delete_queue, launch_server_with, token_for};
use crate::load::http_client;
use crate::stats::{percentile, sorted, summarize, Summary};
use crate::{embedded, log, Ctx};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one post may take to reach every follower before the workload fails.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub store: String,
    pub followers: usize,
    pub posts: usize,
    /// From the `201` to each follower's message, over every (post, follower).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_ms: Summary,
    /// From the `201` to the last follower's message, per post.
    pub last_follower_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub store: String,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_connection: f64,
    pub connections_per_gib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RealtimeResult {
    pub latency: Vec<LatencyResult>,
    pub memory: Vec<MemoryResult>,
}

impl Ctx {
    /// (followers, posts, idle connections) of the realtime workload.
    fn realtime_sizes(&self) -> (usize, usize, usize) {
        if self.tiny {
            (20, 5, 200)
        } else {
            (100, 50, 5_000)
        }
    }
}

pub async fn realtime(ctx: &Ctx) -> Result<RealtimeResult, BoxError> {
    let (followers, posts, idle) = ctx.realtime_sizes();
    let mut out = RealtimeResult {
        latency: Vec::new(),
        memory: Vec::new(),
    };

    let path = ctx.tmp.join("realtime.db");
    drop(embedded::open(&path)?);
    let server = embedded::launch_server(ctx, &path, "server-realtime-sqlite.log")?;
    out.latency
        .push(latency(&server, "sqlite", followers, posts).await?);
    out.memory.push(memory(&server, "sqlite", idle).await?);
    drop(server);
    let _ = std::fs::remove_file(&path);

    let (server, queue) = launch_server_with(ctx, "server-realtime-cassandra.log", &[]).await?;
    let result = latency(&server, "cassandra", followers, posts).await;
    drop(server);
    delete_queue(&queue).await;
    out.latency.push(result?);
    Ok(out)
}

fn ws_url(server: &Server, token: &str) -> String {
    format!(
        "{}/realtime?token={token}",
        server.base.replacen("http", "ws", 1)
    )
}

async fn connect(server: &Server, user: &str) -> Result<Socket, BoxError> {
    let (socket, _) = tokio_tungstenite::connect_async(ws_url(server, &token_for(user)?))
        .await
        .map_err(|e| format!("/realtime for {user}: {e}"))?;
    Ok(socket)
}

/// Each follower's socket read by a task of its own, which stamps every `activity` message's id
/// with the moment it was read.
fn listen(mut socket: Socket, tx: mpsc::UnboundedSender<(String, Instant)>) {
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let at = Instant::now();
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v["type"] == "activity" && v["feed"] == "flat" {
                if let Some(id) = v["activity"]["id"].as_str() {
                    if tx.send((id.to_owned(), at)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

async fn latency(
    server: &Server,
    store: &str,
    followers: usize,
    posts: usize,
) -> Result<LatencyResult, BoxError> {
    let author = format!("rt_author_{store}_{}", crate::seed::run_tag());
    let client = http_client();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in 0..followers {
        let follower = format!("{author}_f{i}");
        let r = client
            .post(format!("{}/follow", server.base))
            .bearer_auth(token_for(&follower)?)
            .header("content-type", "application/json")
            .body(json!({"follower": follower, "following": author}).to_string())
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("POST /follow for {follower}: {}", r.status()).into());
        }
        listen(connect(server, &follower).await?, tx.clone());
    }
    drop(tx);
    log(&format!(
        "realtime ({store}): {followers} followers connected"
    ));
    let token = token_for(&author)?;
    let mut all = Vec::with_capacity(followers * posts);
    let mut last = Vec::with_capacity(posts);
    // Messages that arrive before their post's `201` is read: stamped, kept until it is.
    let mut early: HashMap<String, Vec<Instant>> = HashMap::new();
    for i in 0..posts {
        let r = client
            .post(format!("{}/activities", server.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(
                json!({"actor": author, "verb": "post", "object": format!("obj_rt_{i}")})
                    .to_string(),
            )
            .send()
            .await?;
        let status = r.status();
        let body: Value = serde_json::from_slice(&r.bytes().await?)?;
        let answered = Instant::now();
        if status.as_u16() != 201 {
            return Err(format!("POST /activities answered {status}: {body}").into());
        }
        let id = body["id"].as_str().ok_or("no id in the answer")?.to_owned();
        let mut got = early.remove(&id).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + DELIVERY_LIMIT;
        while got.len() < followers {
            let (seen, at) = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| {
                    format!(
                        "realtime ({store}): {} of {followers} followers got {id} within {DELIVERY_LIMIT:?}",
                        got.len()
                    )
                })?
                .ok_or("every follower's connection closed")?;
            if seen == id {
                got.push(at);
            } else {
                early.entry(seen).or_default().push(at);
            }
        }
        let ms: Vec<f64> = got
            .iter()
            .map(|at| at.saturating_duration_since(answered).as_secs_f64() * 1e3)
            .collect();
        last.push(ms.iter().copied().fold(0.0, f64::max));
        all.extend(ms);
        // Posts apart, as a person's are: each one's latency is its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = sorted(&all);
    let r = LatencyResult {
        store: store.to_owned(),
        followers,
        posts,
        p50_ms: percentile(&s, 50.0),
        p99_ms: percentile(&s, 99.0),
        latency_ms: summarize(&all),
        last_follower_ms: summarize(&last),
    };
    log(&format!(
        "realtime ({store}): post to message p50 {:.1} ms, p99 {:.1} ms over {posts} posts x {followers} followers",
        r.p50_ms, r.p99_ms
    ));
    Ok(r)
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}").into())
}

/// `n` idle connections, each of its own user; the server's resident memory before and after.
async fn memory(server: &Server, store: &str, n: usize) -> Result<MemoryResult, BoxError> {
    let settle = Duration::from_secs(2);
    tokio::time::sleep(settle).await;
    let before = rss_kib(server.pid())?;
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        sockets.push(connect(server, &format!("rt_idle_{i}")).await?);
        if (i + 1) % 1_000 == 0 {
            log(&format!("realtime ({store}): {} idle connections", i + 1));
        }
    }
    tokio::time::sleep(settle).await;
    let after = rss_kib(server.pid())?;
    let per = after.saturating_sub(before) as f64 / n as f64;
    let r = MemoryResult {
        store: store.to_owned(),
        connections: n,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: per,
        connections_per_gib: if per > 0.0 {
            (1024.0 * 1024.0) / per
        } else {
            f64::INFINITY
        },
    };
    log(&format!(
        "realtime ({store}): {n} idle connections, {per:.1} KiB each, {:.0} per GiB",
        r.connections_per_gib
    ));
    drop(sockets);
    Ok(r)
}
