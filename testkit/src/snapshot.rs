//! Before and after: everything a request could have changed for some users, read back in full, to
//! prove that a refused request changed nothing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::api::Api;
use crate::tokens::token;
use crate::wait::{until_drained, FanoutQueue};

/// Every feed and list of `users`, read in full, and their aggregated feeds' first page.
pub async fn snapshot(api: &Api, users: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for u in users {
        let t = token(u);
        for path in [
            "/feeds/flat".to_owned(),
            format!("/feeds/user/{u}"),
            format!("/users/{u}/followers"),
            format!("/users/{u}/following"),
        ] {
            out.push(Value::Array(api.walk(&path, &t).await));
        }
        let aggregated = api.get("/feeds/aggregated?limit=100", &t).await;
        assert_eq!(aggregated.status, StatusCode::OK);
        out.push(aggregated.body);
    }
    out
}

/// Waits until the fan-out has run whatever the requests since `before` queued (`queue` drained),
/// then asserts that the snapshot of `users` is still `before`.
pub async fn assert_unchanged(
    api: &Api,
    queue: &FanoutQueue,
    users: &[&str],
    before: &[Value],
    what: &str,
) {
    until_drained(queue, Duration::from_secs(60)).await;
    assert_eq!(
        snapshot(api, users).await,
        before,
        "{what} changed stored data"
    );
}
