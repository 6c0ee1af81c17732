//! The HTTP API of API.md as one `axum` router: the standalone server serves all of it, each Lambda
//! function serves its own routes through `lambda_http`.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::aggregate::{self, GroupPosition, Grouping};
use crate::auth::{Principal, Verifier};
use crate::cursor::CursorCodec;
use crate::error::ApiError;
use crate::fanout::FanoutJob;
use crate::model::{check_user_id, Activity, ActivityId, FollowEdge, FollowRequest, NewActivity};
use crate::queue::Queue;
use crate::store::{IdRange, Store};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const DRAIN_BYTES: usize = 1024 * 1024;
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;

/// Everything a request needs, built once per process (or Lambda execution environment).
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub verifier: Arc<Verifier>,
    pub cursors: CursorCodec,
    pub grouping: Grouping,
}

/// Which routes a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Every route: the standalone server.
    All,
    /// `POST /follow`, `DELETE /follow/{follower}/{following}`.
    Follow,
    /// `POST /activities`, `DELETE /activities/{id}`.
    PostActivity,
    /// The feeds and the follower lists.
    GetFeed,
}

pub fn router(app: App, routes: Routes) -> Router {
    let all = routes == Routes::All;
    let mut r = Router::new().route("/health", get(health));
    if all || routes == Routes::Follow {
        r = r
            .route("/follow", post(follow))
            .route("/follow/{follower}/{following}", delete(unfollow));
    }
    if all || routes == Routes::PostActivity {
        r = r
            .route("/activities", post(post_activity))
            .route("/activities/{id}", delete(delete_activity));
    }
    if all || routes == Routes::GetFeed {
        r = r
            .route("/feeds/flat", get(flat_feed))
            .route("/feeds/aggregated", get(aggregated_feed))
            .route("/feeds/user/{user}", get(user_feed))
            .route("/users/{user}/followers", get(followers))
            .route("/users/{user}/following", get(following));
    }
    r.fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(app)
}

#[derive(Serialize)]
struct Page<T> {
    results: Vec<T>,
    next: Option<String>,
}

impl App {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        Ok(self.verifier.verify_header(value)?)
    }

    /// Authenticates a request that carries a body. A refused request's body is drained first (up
    /// to the same 1 MiB as `json_body`): a connection left with unread bytes cannot be reused, and
    /// a keep-alive client that sends its next request on it sees the connection drop.
    async fn authenticate_with_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Principal, Body), ApiError> {
        match self.authenticate(headers) {
            Ok(principal) => Ok((principal, body)),
            Err(e) => {
                let _ = to_bytes(body, DRAIN_BYTES).await;
                Err(e)
            }
        }
    }
}

/// Reads a JSON body after authentication: `413` over the limit, `415` when not JSON, `400` when it
/// does not parse into `T`.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    // Read (and so drain) up to 1 MiB even when over the limit: a connection closed with unread
    // bytes is reset, and the client would lose the 413.
    let bytes = match to_bytes(body, DRAIN_BYTES).await {
        Ok(bytes) if bytes.len() <= MAX_BODY_BYTES => bytes,
        _ => return Err(ApiError::payload_too_large(MAX_BODY_BYTES)),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::unsupported_media_type());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the body is not valid: {e}")))
}

struct ListQuery {
    limit: usize,
    cursor: Option<String>,
}

fn list_query(raw: Option<String>) -> Result<ListQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string does not parse"))?;
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        cursor: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("`limit` must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => q.cursor = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

/// Reads one more row than asked, to know whether a next page exists.
fn paginate<T>(
    mut rows: Vec<T>,
    limit: usize,
    position: impl Fn(&T) -> String,
    list: &str,
    cursors: &CursorCodec,
) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last()
            .map(|last| cursors.encode(list, &position(last)))
    } else {
        None
    };
    Page {
        results: rows,
        next,
    }
}

async fn health(State(app): State<App>) -> Response {
    let (store, queue) = tokio::join!(app.store.health(), app.queue.health());
    let mut failing = serde_json::Map::new();
    if let Err(e) = store {
        failing.insert("store".into(), json!(e.to_string()));
    }
    if let Err(e) = queue {
        failing.insert("queue".into(), json!(e.to_string()));
    }
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        let names: Vec<&str> = failing.keys().map(String::as_str).collect();
        let message = format!("unreachable: {}", names.join(", "));
        let body = json!({"status": "unavailable", "failing": failing, "error": {"code": "unavailable", "message": message}});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn follow(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (principal, body) = app.authenticate_with_body(&headers, body).await?;
    let req: FollowRequest = json_body(&headers, body).await?;
    check_user_id("follower", &req.follower)?;
    check_user_id("following", &req.following)?;
    if req.follower == req.following {
        return Err(ApiError::bad_request(
            "self_follow",
            "a user cannot follow themselves",
        ));
    }
    if !principal.may_act_for(&req.follower) {
        return Err(ApiError::forbidden(
            "only the follower (or a feeds:admin service) may follow",
        ));
    }
    let edge = FollowEdge {
        follower: req.follower,
        following: req.following,
        created_at: crate::model::truncate_to_micros(Utc::now()),
    };
    let (edge, created) = app.store.follow(&edge).await?;
    // Backfill also on an existing edge: a retry after a failed enqueue must still backfill.
    app.queue
        .send(&[FanoutJob::Backfill {
            follower: edge.follower.clone(),
            followee: edge.following.clone(),
        }])
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(edge)).into_response())
}

async fn unfollow(
    State(app): State<App>,
    headers: HeaderMap,
    Path((follower, following)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let principal = app.authenticate(&headers)?;
    check_user_id("follower", &follower)?;
    check_user_id("following", &following)?;
    if !principal.may_act_for(&follower) {
        return Err(ApiError::forbidden(
            "only the follower (or a feeds:admin service) may unfollow",
        ));
    }
    app.store.unfollow(&follower, &following).await?;
    app.queue
        .send(&[FanoutJob::Purge {
            follower,
            followee: following,
            before: None,
        }])
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn post_activity(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (principal, body) = app.authenticate_with_body(&headers, body).await?;
    let new: NewActivity = json_body(&headers, body).await?;
    let activity = new.into_activity(Utc::now())?;
    if !principal.may_act_for(&activity.actor) {
        return Err(ApiError::forbidden(
            "only the actor (or a feeds:admin service) may post its activities",
        ));
    }
    let (stored, created) = app.store.put_activity(&activity).await?;
    let job = FanoutJob::Deliver {
        activity_id: stored.id.clone(),
        actor: stored.actor.clone(),
        after: None,
    };
    // Enqueued on a repeat too: the first attempt may have stored the activity and then failed to enqueue.
    if let Err(e) = app.queue.send(&[job]).await {
        if created {
            // Without its fan-out the activity must not stay: the client's retry stores it again.
            if let Err(undo) = app.store.delete_activity(&stored).await {
                tracing::error!(activity_id = %stored.id, error = %undo, "cannot undo an activity whose fan-out was not enqueued");
            }
        }
        return Err(e.into());
    }
    tracing::info!(activity_id = %stored.id, actor = %stored.actor, created, "activity posted");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored)).into_response())
}

async fn delete_activity(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = app.authenticate(&headers)?;
    if !ActivityId::is_valid(&id) {
        return Err(ApiError::not_found(format!("no activity {id}")));
    }
    let activity = app
        .store
        .get_activity(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no activity {id}")))?;
    if !principal.may_act_for(&activity.actor) {
        return Err(ApiError::forbidden(
            "only the actor (or a feeds:admin service) may delete its activities",
        ));
    }
    // Enqueue the removal first: if the delete then fails, the retry finds the activity and repeats both.
    app.queue
        .send(&[FanoutJob::Retract {
            activity_id: id,
            actor: activity.actor.clone(),
            after: None,
        }])
        .await?;
    app.store.delete_activity(&activity).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A flat list of activities keyed by id: the flat feed and the user feed.
async fn activity_page(
    app: &App,
    list: String,
    query: Option<String>,
    user: &str,
    timeline: bool,
) -> Result<Response, ApiError> {
    let q = list_query(query)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| app.cursors.decode(&list, c))
        .transpose()?;
    let range = IdRange {
        before: before.as_deref(),
        not_before: None,
    };
    let rows = if timeline {
        app.store.timeline(user, range, q.limit + 1).await?
    } else {
        app.store.user_feed(user, range, q.limit + 1).await?
    };
    let page = paginate(
        rows,
        q.limit,
        |a: &Activity| a.id.clone(),
        &list,
        &app.cursors,
    );
    Ok(Json(page).into_response())
}

async fn flat_feed(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let principal = app.authenticate(&headers)?;
    activity_page(
        &app,
        format!("flat:{}", principal.sub),
        query,
        &principal.sub,
        true,
    )
    .await
}

async fn user_feed(
    State(app): State<App>,
    headers: HeaderMap,
    Path(user): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    app.authenticate(&headers)?;
    check_user_id("user", &user)?;
    activity_page(&app, format!("user:{user}"), query, &user, false).await
}

async fn aggregated_feed(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let principal = app.authenticate(&headers)?;
    let q = list_query(query)?;
    let list = format!("aggregated:{}", principal.sub);
    let from = match &q.cursor {
        Some(c) => Some(
            GroupPosition::decode(&app.cursors.decode(&list, c)?).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "the cursor is not one this list issued")
            })?,
        ),
        None => None,
    };
    let (groups, next) = aggregate::page(
        app.store.as_ref(),
        &principal.sub,
        from,
        q.limit,
        app.grouping,
    )
    .await?;
    let next = next.map(|p| app.cursors.encode(&list, &p.encode()));
    Ok(Json(Page {
        results: groups,
        next,
    })
    .into_response())
}

async fn relations(
    app: &App,
    headers: &HeaderMap,
    user: String,
    query: Option<String>,
    followers: bool,
) -> Result<Response, ApiError> {
    app.authenticate(headers)?;
    check_user_id("user", &user)?;
    let q = list_query(query)?;
    let list = format!(
        "{}:{user}",
        if followers { "followers" } else { "following" }
    );
    let after = q
        .cursor
        .as_deref()
        .map(|c| app.cursors.decode(&list, c))
        .transpose()?;
    let rows = if followers {
        app.store
            .followers(&user, after.as_deref(), q.limit + 1)
            .await?
    } else {
        app.store
            .following(&user, after.as_deref(), q.limit + 1)
            .await?
    };
    Ok(Json(paginate(
        rows,
        q.limit,
        |r| r.user.clone(),
        &list,
        &app.cursors,
    ))
    .into_response())
}

async fn followers(
    State(app): State<App>,
    headers: HeaderMap,
    Path(user): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    relations(&app, &headers, user, query, true).await
}

async fn following(
    State(app): State<App>,
    headers: HeaderMap,
    Path(user): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    relations(&app, &headers, user, query, false).await
}
