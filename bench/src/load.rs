//! Closed-loop load: `c` workers, each sending its next request when the previous one answered,
//! for a fixed time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feeds::BoxError;
use serde::Serialize;

use crate::stats::{percentile, sorted};

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

/// One GET of the first page (`limit=25`) of `/feeds/{endpoint}`: fails unless it answers `200`
/// with `expected` results. Answers its latency in milliseconds and its body.
pub async fn check_page(
    client: &reqwest::Client,
    base: &str,
    endpoint: &str,
    token: &str,
    expected: usize,
) -> Result<(f64, axum::body::Bytes), BoxError> {
    let t = Instant::now();
    let r = client
        .get(format!("{base}/feeds/{endpoint}?limit=25"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await?;
    let status = r.status();
    let body = r.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        return Err(format!("answered {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    let page: serde_json::Value = serde_json::from_slice(&body)?;
    let n = page["results"].as_array().map_or(0, Vec::len);
    if n != expected {
        return Err(format!(
            "the first page holds {n} results, not {expected}: the feed was not set up as the \
             fan-out leaves it"
        )
        .into());
    }
    Ok((ms, body))
}
