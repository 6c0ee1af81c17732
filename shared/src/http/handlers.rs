//! One handler per route: take what the extractors give, call the service, answer.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, BytesMut};
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{JsonBody, ListQuery};
use super::App;
use crate::aggregate::GroupPosition;
use crate::auth::Principal;
use crate::cursor::{CursorCodec, InvalidCursor};
use crate::model::{Activity, FollowBatch, FollowRequest, NewActivity};
use crate::notify::MarkRequest;
use crate::service::{FlatPosition, Side};
use crate::update::ActivityPatch;

type Answer = Result<Response, ApiError>;

#[derive(Serialize)]
struct Page<T> {
    results: Vec<T>,
    next: Option<String>,
}

/// Bytes a result of a page usually takes as JSON: the buffer is sized once, where `Json` starts
/// at 128 bytes and copies a page's body several times while it grows.
const RESULT_JSON_BYTES: usize = 384;

impl<T: Serialize> IntoResponse for Page<T> {
    /// What `Json(page)` answers.
    fn into_response(self) -> Response {
        let capacity = 64 + self.results.len() * RESULT_JSON_BYTES;
        let mut body = BytesMut::with_capacity(capacity).writer();
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body.into_inner().freeze(),
            )
                .into_response(),
            Err(e) => ApiError::internal(format!("cannot encode the page: {e}")).into_response(),
        }
    }
}

/// A page from rows read one beyond `limit`: the extra row says whether a next page exists, and
/// `next` is the cursor of the last row kept.
fn page<T: Serialize>(
    mut rows: Vec<T>,
    limit: usize,
    position: impl Fn(&T) -> String,
    list: &str,
    cursors: &CursorCodec,
) -> Response {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more
        .then(|| {
            rows.last()
                .map(|last| cursors.encode(list, &position(last)))
        })
        .flatten();
    Page {
        results: rows,
        next,
    }
    .into_response()
}

fn created_or_ok(created: bool, body: impl Serialize) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

impl App {
    /// The position a cursor of `list` stands for.
    fn position(&self, list: &str, q: &ListQuery) -> Result<Option<String>, InvalidCursor> {
        q.cursor
            .as_deref()
            .map(|c| self.cursors.decode(list, c))
            .transpose()
    }
}

pub(super) async fn health(State(app): State<App>) -> Response {
    let health = app.feeds.health().await;
    let mut failing = serde_json::Map::new();
    if let Err(e) = health.store {
        failing.insert("store".into(), json!(e.to_string()));
    }
    if let Err(e) = health.queue {
        failing.insert("queue".into(), json!(e.to_string()));
    }
    if failing.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    }
    let names: Vec<&str> = failing.keys().map(String::as_str).collect();
    let message = format!("unreachable: {}", names.join(", "));
    let body = json!({"status": "unavailable", "failing": failing, "error": {"code": "unavailable", "message": message}});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

pub(super) async fn follow(
    State(app): State<App>,
    principal: Principal,
    JsonBody(req): JsonBody<FollowRequest>,
) -> Answer {
    let (edge, created) = app.feeds.follow(&principal, req).await?;
    Ok(created_or_ok(created, edge))
}

pub(super) async fn follow_batch(
    State(app): State<App>,
    principal: Principal,
    JsonBody(batch): JsonBody<FollowBatch>,
) -> Answer {
    let results = app.feeds.follow_batch(&principal, batch).await?;
    Ok(Json(json!({ "results": results })).into_response())
}

pub(super) async fn unfollow(
    State(app): State<App>,
    principal: Principal,
    Path((follower, following)): Path<(String, String)>,
) -> Answer {
    app.feeds
        .unfollow(&principal, &follower, &following)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn post_activity(
    State(app): State<App>,
    principal: Principal,
    JsonBody(new): JsonBody<NewActivity>,
) -> Answer {
    let (stored, created) = app.feeds.post(&principal, new).await?;
    Ok(created_or_ok(created, stored))
}

pub(super) async fn delete_activity(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
) -> Answer {
    app.feeds.delete(&principal, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn erase_user(
    State(app): State<App>,
    principal: Principal,
    Path(user): Path<String>,
) -> Answer {
    app.feeds.erase_user(&principal, &user).await?;
    let body = Json(json!({"status": "accepted"}));
    Ok((StatusCode::ACCEPTED, body).into_response())
}

pub(super) async fn update_activity(
    State(app): State<App>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<ActivityPatch>,
) -> Answer {
    let updated = app.feeds.update(&principal, &id, patch).await?;
    Ok(Json(updated).into_response())
}

pub(super) async fn flat_feed(
    State(app): State<App>,
    principal: Principal,
    q: ListQuery,
) -> Answer {
    let list = format!("flat:{}", principal.sub);
    let from = app
        .position(&list, &q)?
        .map(|p| FlatPosition::decode(&p).ok_or(InvalidCursor))
        .transpose()?;
    let rows = app
        .feeds
        .flat(&principal.sub, from.as_ref(), q.limit + 1)
        .await?;
    // A next page follows a full one.
    let served = from.map_or(0, |p| p.served) + q.limit;
    let position = |a: &Activity| {
        FlatPosition {
            before: a.id.clone(),
            served,
        }
        .encode()
    };
    Ok(page(rows, q.limit, position, &list, &app.cursors))
}

pub(super) async fn user_feed(
    State(app): State<App>,
    Path(user): Path<String>,
    q: ListQuery,
) -> Answer {
    let list = format!("user:{user}");
    let before = app.position(&list, &q)?;
    let rows = app
        .feeds
        .user_feed(&user, before.as_deref(), q.limit + 1)
        .await?;
    Ok(page(
        rows,
        q.limit,
        |a: &Activity| a.id.clone(),
        &list,
        &app.cursors,
    ))
}

pub(super) async fn aggregated_feed(
    State(app): State<App>,
    principal: Principal,
    q: ListQuery,
) -> Answer {
    let list = format!("aggregated:{}", principal.sub);
    let from = app
        .position(&list, &q)?
        .map(|p| GroupPosition::decode(&p).ok_or(InvalidCursor))
        .transpose()?;
    let (groups, next) = app.feeds.aggregated(&principal.sub, from, q.limit).await?;
    let next = next.map(|p| app.cursors.encode(&list, &p.encode()));
    Ok(Page {
        results: groups,
        next,
    }
    .into_response())
}

#[derive(Serialize)]
struct NotificationAnswer {
    results: Vec<Box<serde_json::value::RawValue>>,
    next: Option<String>,
    unseen: usize,
    unread: usize,
}

pub(super) async fn notification_feed(
    State(app): State<App>,
    principal: Principal,
    q: ListQuery,
) -> Answer {
    let list = format!("notification:{}", principal.sub);
    let from = app
        .position(&list, &q)?
        .map(|p| GroupPosition::decode(&p).ok_or(InvalidCursor))
        .transpose()?;
    let page = app
        .feeds
        .notifications(&principal.sub, from, q.limit)
        .await?;
    Ok(Json(NotificationAnswer {
        results: page.groups,
        next: page.next.map(|p| app.cursors.encode(&list, &p.encode())),
        unseen: page.unseen,
        unread: page.unread,
    })
    .into_response())
}

pub(super) async fn mark_seen(
    state: State<App>,
    principal: Principal,
    body: JsonBody<MarkRequest>,
) -> Answer {
    mark(state, principal, body, false).await
}

pub(super) async fn mark_read(
    state: State<App>,
    principal: Principal,
    body: JsonBody<MarkRequest>,
) -> Answer {
    mark(state, principal, body, true).await
}

async fn mark(
    State(app): State<App>,
    principal: Principal,
    JsonBody(req): JsonBody<MarkRequest>,
    read: bool,
) -> Answer {
    let (unseen, unread) = app
        .feeds
        .mark_notifications(&principal.sub, req, read)
        .await?;
    Ok(Json(json!({"unseen": unseen, "unread": unread})).into_response())
}

pub(super) async fn user_counts(State(app): State<App>, Path(user): Path<String>) -> Answer {
    let counts = app.feeds.user_counts(&user).await?;
    Ok(Json(json!({
        "user": user,
        "followers": counts.followers,
        "following": counts.following,
        "activities": counts.activities,
    }))
    .into_response())
}

pub(super) async fn followers(state: State<App>, user: Path<String>, q: ListQuery) -> Answer {
    relations(state, Side::Followers, user, q).await
}

pub(super) async fn following(state: State<App>, user: Path<String>, q: ListQuery) -> Answer {
    relations(state, Side::Following, user, q).await
}

async fn relations(
    State(app): State<App>,
    side: Side,
    Path(user): Path<String>,
    q: ListQuery,
) -> Answer {
    let list = format!("{}:{user}", side.name());
    let after = app.position(&list, &q)?;
    let rows = app
        .feeds
        .relations(side, &user, after.as_deref(), q.limit + 1)
        .await?;
    Ok(page(rows, q.limit, |r| r.user.clone(), &list, &app.cursors))
}
