//! `GET /realtime`: a WebSocket per connected principal, fed by this process's fan-out. The token
//! comes in the `Authorization` header or as `?token=`; a bad or missing one is `401` before the
//! upgrade. Idle connections get a ping every 30 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use feeds::auth::Verifier;
use feeds::http::ApiError;
use feeds::realtime::{self, Events};
use serde::Deserialize;
use tokio::sync::mpsc;

/// Messages a connection may fall behind by before newer ones are dropped for it.
const BACKLOG: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(30);

/// One user's open connections, each with its id.
type Connections = Vec<(u64, mpsc::Sender<String>)>;

/// The connections of this process, by user.
#[derive(Default)]
pub struct Hub {
    connections: Mutex<HashMap<String, Connections>>,
    next_id: AtomicU64,
}

impl Hub {
    fn register(&self, user: &str) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections
            .entry(user.to_owned())
            .or_default()
            .push((id, tx));
        (id, rx)
    }

    fn unregister(&self, user: &str, id: u64) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = connections.get_mut(user) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                connections.remove(user);
            }
        }
    }
}

impl Events for Hub {
    fn listening(&self, user: &str) -> bool {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.contains_key(user)
    }

    fn publish(&self, user: &str, message: &realtime::Message) {
        let text = match serde_json::to_string(message) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a realtime message");
                return;
            }
        };
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for (id, tx) in connections.get(user).into_iter().flatten() {
            if tx.try_send(text.clone()).is_err() {
                tracing::warn!(
                    user,
                    connection = id,
                    "realtime connection behind: message dropped"
                );
            }
        }
    }
}

#[derive(Clone)]
struct Realtime {
    hub: Arc<Hub>,
    verifier: Arc<Verifier>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The largest frame or message a client may send.
const CLIENT_FRAME_LIMIT: usize = 4 * 1024;

/// The `/realtime` route, for the standalone server's router.
pub fn router(hub: Arc<Hub>, verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/realtime", get(connect))
        .with_state(Realtime { hub, verifier })
}

async fn connect(
    State(rt): State<Realtime>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let verified = match (authorization, query.token.as_deref()) {
        (None, Some(token)) => rt.verifier.verify_token(token),
        (header, _) => rt.verifier.verify_header(header),
    };
    let principal = match verified {
        Ok(principal) => principal,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // A client sends only pongs and a close: small buffers and limits keep an idle connection
    // cheap (the default read buffer alone is 128 KiB) and a large frame from it refused.
    upgrade
        .read_buffer_size(CLIENT_FRAME_LIMIT)
        .max_frame_size(CLIENT_FRAME_LIMIT)
        .max_message_size(CLIENT_FRAME_LIMIT)
        .on_upgrade(move |socket| serve(socket, rt.hub, principal.sub))
}

async fn serve(mut socket: WebSocket, hub: Arc<Hub>, user: String) {
    let (id, mut rx) = hub.register(&user);
    tracing::info!(user, connection = id, "realtime connection opened");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(text) = message else { break };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                // Pongs, and anything a client sends: nothing to answer.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    hub.unregister(&user, id);
    tracing::info!(user, connection = id, "realtime connection closed");
}
