//! What the test crates and the benchmark share, so that each exists once: the standalone server
//! as a child process ([`server`]), development tokens ([`tokens`]), an HTTP client acting as users
//! ([`api`]), before/after snapshots of stored data ([`snapshot`]), bounded and deterministic waits
//! ([`wait`]), a Lambda Runtime API ([`runtime_api`]), the store conformance suite
//! ([`conformance`]), the local services ([`services`]), moto as API Gateway's Management API
//! ([`moto`]), the text of realtime messages ([`realtime`]) and the local stand-in for Lambda's SQS
//! trigger ([`trigger`]). Traffic goes to 127.0.0.1 only.

pub mod api;
pub mod conformance;
pub mod moto;
pub mod realtime;
pub mod remains;
pub mod runtime_api;
pub mod server;
pub mod services;
pub mod snapshot;
pub mod tokens;
pub mod trigger;
pub mod wait;

use std::sync::Arc;

pub use feeds::BoxError;

/// `name` and 12 random hex digits: every run uses fresh names, so runs never see each other's data.
pub fn unique(name: &str) -> String {
    format!("{name}_{:012x}", rand::random::<u64>() >> 16)
}

/// Runs `f` on every item, at most `limit` at a time, on the runtime's threads; answers the
/// results in the items' order.
pub async fn concurrently<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let permits = permits.clone();
        let work = f(item);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            (i, work.await)
        });
    }
    let mut out: Vec<(usize, R)> = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
