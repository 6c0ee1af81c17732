//! Before and after: everything a request could have changed for some users, read back in full, to
//! prove that a refused request changed nothing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::api::Api;
use crate::tokens::token;
use crate::wait::{until_drained, FanoutQueue};

/// Once the fan-out has run whatever was queued (`queue` drained, so that counts have settled):
/// every feed and list of `users`, read in full, the first page of their aggregated and
/// notification feeds (with the unseen and unread counts), and their counts.
pub async fn snapshot(api: &Api, queue: &FanoutQueue, users: &[&str]) -> Vec<Value> {
    until_drained(queue, Duration::from_secs(60)).await;
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
        for path in [
            "/feeds/aggregated?limit=100".to_owned(),
            "/feeds/notification?limit=100".to_owned(),
            format!("/users/{u}"),
        ] {
            let answer = api.get(&path, &t).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
            out.push(answer.body);
        }
    }
    out
}

/// Waits until the fan-out has run whatever the requests since `before` queued, then asserts that
/// the snapshot of `users` is still `before`.
pub async fn assert_unchanged(
    api: &Api,
    queue: &FanoutQueue,
    users: &[&str],
    before: &[Value],
    what: &str,
) {
    assert_eq!(
        snapshot(api, queue, users).await,
        before,
        "{what} changed stored data"
    );
}
