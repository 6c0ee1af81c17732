//! The HTTP API as one `axum` router: the standalone server serves all of it, each Lambda function
//! serves its own routes through `lambda_http`. Handlers are thin: the extractors authenticate and
//! parse, the service does the work, and `error` maps every failure to the contract's answer.

use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use crate::auth::Verifier;
use crate::cursor::CursorCodec;
use crate::limits::Limiter;
use crate::service::Feeds;

pub mod error;
mod extract;
mod handlers;
mod observe;

pub use error::ApiError;
pub use extract::MAX_BODY_BYTES;

/// Everything a request needs, built once per process (or Lambda execution environment).
#[derive(Clone)]
pub struct App {
    pub feeds: Feeds,
    pub verifier: Arc<Verifier>,
    pub cursors: CursorCodec,
    pub limiter: Arc<Limiter>,
}

/// Which routes a router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Every route: the standalone server.
    All,
    /// `POST /follow`, `POST /follow/batch`, `DELETE /follow/{follower}/{following}`,
    /// `DELETE /users/{user}`.
    Follow,
    /// `POST /activities`, `PATCH /activities/{id}`, `DELETE /activities/{id}`.
    PostActivity,
    /// The feeds (with the notification feed's marks) and the follower lists.
    GetFeed,
}

pub fn router(app: App, routes: Routes) -> Router {
    use handlers::*;
    // Authentication runs only for a route and method that exist: `404` and `405` come first.
    let authed = |m: MethodRouter<App>| {
        m.route_layer(from_fn_with_state(app.clone(), extract::authenticate))
    };
    let all = routes == Routes::All;
    let mut r = Router::new().route("/health", get(health));
    if all || routes == Routes::Follow {
        r = r
            .route("/follow", authed(post(follow)))
            .route("/follow/batch", authed(post(follow_batch)))
            .route("/follow/{follower}/{following}", authed(delete(unfollow)))
            .route("/users/{user}", authed(delete(erase_user)));
    }
    if all || routes == Routes::PostActivity {
        r = r.route("/activities", authed(post(post_activity))).route(
            "/activities/{id}",
            authed(delete(delete_activity).patch(update_activity)),
        );
    }
    // A feed read is timed from before its authentication.
    let feed = |name: &'static str, m: MethodRouter<App>| {
        authed(m).route_layer(from_fn_with_state(name, observe::timed))
    };
    if all || routes == Routes::GetFeed {
        r = r
            .route("/feeds/flat", feed("flat", get(flat_feed)))
            .route(
                "/feeds/aggregated",
                feed("aggregated", get(aggregated_feed)),
            )
            .route("/feeds/user/{user}", feed("user", get(user_feed)))
            .route(
                "/feeds/notification",
                feed("notification", get(notification_feed)),
            )
            .route("/feeds/notification/seen", authed(post(mark_seen)))
            .route("/feeds/notification/read", authed(post(mark_read)))
            .route("/users/{user}", authed(get(user_counts)))
            .route("/users/{user}/followers", authed(get(followers)))
            .route("/users/{user}/following", authed(get(following)));
    }
    r.fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(from_fn(observe::traced))
        .with_state(app)
}
