//! An HTTP client of one server, acting as users with development tokens.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::server::Server;
use crate::tokens::token;

/// A JSON answer: status, headers, and the body parsed (`Null` when empty, a string when not JSON)
/// and as it came.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: Client,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Api {
            base: server.base.clone(),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn follow(&self, follower: &str, following: &str) -> Answer {
        self.send(
            Method::POST,
            "/follow",
            Some(&token(follower)),
            Some(json!({"follower": follower, "following": following})),
        )
        .await
    }

    pub async fn unfollow(&self, follower: &str, following: &str) -> Answer {
        self.send(
            Method::DELETE,
            &format!("/follow/{follower}/{following}"),
            Some(&token(follower)),
            None,
        )
        .await
    }

    pub async fn post(&self, actor: &str, body: Value) -> Answer {
        self.send(Method::POST, "/activities", Some(&token(actor)), Some(body))
            .await
    }

    /// `DELETE /activities/{id}` as `user`.
    pub async fn delete_activity(&self, user: &str, id: &str) -> Answer {
        let path = format!("/activities/{id}");
        self.send(Method::DELETE, &path, Some(&token(user)), None)
            .await
    }

    /// Every item of a paginated list, walking pages of 100 to `next: null`.
    pub async fn walk(&self, path: &str, token: &str) -> Vec<Value> {
        self.walk_by(path, token, 100).await
    }

    /// Every item of a paginated list, walking pages of `limit` (none longer) to `next: null`.
    pub async fn walk_by(&self, path: &str, token: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
                None => format!("{path}{sep}limit={limit}"),
            };
            let page = self.get(&url, token).await;
            assert_eq!(page.status, StatusCode::OK, "{url}: {}", page.body);
            let results = page.body["results"].as_array().unwrap();
            assert!(results.len() <= limit, "{url}: {} items", results.len());
            out.extend(results.iter().cloned());
            match page.body["next"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
    }

    /// The ids of a user's whole flat feed, newest first.
    pub async fn flat_ids(&self, user: &str) -> Vec<String> {
        ids(&self.walk("/feeds/flat", &token(user)).await)
    }

    /// The ids of a user's own feed, newest first.
    pub async fn user_ids(&self, user: &str) -> Vec<String> {
        ids(&self
            .walk(&format!("/feeds/user/{user}"), &token(user))
            .await)
    }

    /// The users `user` follows.
    pub async fn following(&self, user: &str) -> Vec<String> {
        self.users(&format!("/users/{user}/following"), user).await
    }

    /// The followers of `user`.
    pub async fn followers(&self, user: &str) -> Vec<String> {
        self.users(&format!("/users/{user}/followers"), user).await
    }

    async fn users(&self, path: &str, user: &str) -> Vec<String> {
        self.walk(path, &token(user))
            .await
            .iter()
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Reads a response as an [`Answer`].
pub async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
    };
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// The `id`s of activities, in order.
pub fn ids(activities: &[Value]) -> Vec<String> {
    activities
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}
