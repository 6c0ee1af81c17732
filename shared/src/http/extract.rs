//! What a handler needs from a request, as axum extractors: the authenticated [`Principal`], a
//! JSON body, and the pagination query. Each rejects with the contract's error.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::App;
use crate::auth::Principal;
use crate::limits::{Admission, RateClass};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a refused body is read (and so drained) before answering.
const DRAIN_BYTES: usize = 1024 * 1024;
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;

/// Middleware on every route but `/health`: verifies the token and counts the request against the
/// principal's rate limit, then hands the [`Principal`] to the handler; or answers `401` or `429`,
/// before the body is looked at, as the contract orders its checks.
/// A refused request's body is drained first (up to 1 MiB): a connection left with unread bytes
/// cannot be reused, and a keep-alive client that sends its next request on it sees it drop.
pub(crate) async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let refused = match app.verifier.verify_header(value) {
        Ok(principal) => match admit(&app, &principal, request.method()).await {
            Ok(()) => {
                let mut request = request;
                request.extensions_mut().insert(principal);
                return next.run(request).await;
            }
            Err(e) => e,
        },
        Err(e) => ApiError::from(e),
    };
    let _ = to_bytes(request.into_body(), DRAIN_BYTES).await;
    refused.into_response()
}

/// The rate limit, after authentication and before anything else: `feeds:admin` principals are
/// not limited; a `GET` is a read, anything else a write.
async fn admit(app: &App, principal: &Principal, method: &Method) -> Result<(), ApiError> {
    if principal.admin {
        return Ok(());
    }
    let class = if method == Method::GET {
        RateClass::Read
    } else {
        RateClass::Write
    };
    match app.limiter.admit(&principal.sub, class).await? {
        Admission::Admitted => Ok(()),
        Admission::Refused { retry_after_secs } => Err(ApiError::rate_limited(retry_after_secs)),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::internal("a route that needs a principal is not authenticated")
        })
    }
}

/// A JSON body: `413` over the limit, `415` when not JSON, `400` when it does not parse into `T`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        json_body(&parts.headers, body).await.map(JsonBody)
    }
}

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
    // Every body is an object: serde would also read an array of the fields in order as one.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body is not valid: a JSON object is expected",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the body is not valid: {e}")))
}

/// `?limit=N&cursor=C` of every list; other parameters are ignored.
pub struct ListQuery {
    pub limit: usize,
    pub cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).map_err(|_| {
                ApiError::bad_request("invalid_query", "the query string does not parse")
            })?;
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
}
