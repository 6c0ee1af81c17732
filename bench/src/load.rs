//! Closed-loop load: `c` workers, each sending its next request when the previous one answered,
//! for a fixed time; and the standalone server, started as a child process.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{percentile, sorted};
use crate::BoxError;

/// One timed run at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub requests: usize,
    pub errors: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `op` from `c` concurrent workers for `duration`; `op` answers whether the request succeeded.
pub async fn closed_loop<F, Fut>(c: usize, duration: Duration, op: F) -> RunResult
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..c)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = op().await;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if !ok {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w.await.expect("load worker");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = sorted(&all);
    RunResult {
        requests: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile(&s, 50.0),
        p99_ms: percentile(&s, 99.0),
    }
}

/// A GET that counts as successful only with a `200` and a whole body.
pub fn http_get(
    client: reqwest::Client,
    url: String,
    token: String,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Clone + Send + Sync + 'static
{
    let auth = Arc::new(format!("Bearer {token}"));
    let url = Arc::new(url);
    move || {
        let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
        Box::pin(async move {
            match client
                .get(url.as_str())
                .header("authorization", auth.as_str())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        })
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The standalone server, stopped (by closing its standard input, then killed) when dropped.
pub struct Server {
    child: tokio::process::Child,
    pub base: String,
}

impl Server {
    pub async fn start(
        bin: &Path,
        envs: &[(&str, String)],
        log: &Path,
    ) -> Result<Server, BoxError> {
        let port = free_port();
        let log_file = std::fs::File::create(log)?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.env("FEEDS_BIND", format!("127.0.0.1:{port}"))
            .env("FEEDS_EXIT_ON_STDIN_EOF", "1")
            .env("FEEDS_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/health", server.base)).send().await {
                if r.status().is_success() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer /health within 60 s (log: {})",
                    bin.display(),
                    log.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
