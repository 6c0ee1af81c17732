//! `GET /realtime`: a WebSocket per connected principal, fed by the fan-out. The token comes in
//! the `Authorization` header or as `?token=`; a bad or missing one is `401` before the upgrade.
//! Each connection is recorded in the store, as API Gateway's `$connect` records its own, so the
//! fan-out finds its recipients the same way on both; this process's [`Hub`] is the transport
//! that reaches them. Idle connections get a ping every 30 s.

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
use feeds::realtime::{self, Sent, Transport};
use feeds::store::{Connection, Store};
use serde::Deserialize;
use tokio::sync::mpsc;

/// Messages a connection may fall behind by before newer ones are dropped for it.
const BACKLOG: usize = 256;
const PING_EVERY: Duration = Duration::from_secs(30);
/// A connection's records are written again this often: they expire after
/// `feeds::store::CONNECTION_TTL` (two hours), and a connection here has no time limit.
const RECORD_EVERY: Duration = Duration::from_secs(60 * 60);

/// This process's connections, by id.
pub struct Hub {
    connections: Mutex<HashMap<String, mpsc::Sender<String>>>,
    next_id: AtomicU64,
    /// Begins every id this process gives: processes sharing a store never take each other's
    /// connections for their own.
    prefix: String,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            connections: Mutex::default(),
            next_id: AtomicU64::new(0),
            prefix: format!("srv-{:016x}-", rand::random::<u64>()),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<String>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, user: &str) -> (Connection, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", self.prefix);
        self.lock().insert(id.clone(), tx);
        let connection = Connection {
            user: user.to_owned(),
            id,
        };
        (connection, rx)
    }

    fn unregister(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[async_trait::async_trait]
impl Transport for Hub {
    fn idle(&self) -> bool {
        self.lock().is_empty()
    }

    async fn send(&self, id: &str, text: &str) -> Sent {
        let mut connections = self.lock();
        let Some(tx) = connections.get(id) else {
            return match id.starts_with(&self.prefix) {
                true => Sent::Gone,
                false => Sent::Elsewhere,
            };
        };
        match tx.try_send(text.to_owned()) {
            Ok(()) => Sent::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => {
                Sent::Failed("the connection is behind: message dropped".into())
            }
            // Upgraded never, or closed without unregistering.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                connections.remove(id);
                Sent::Gone
            }
        }
    }
}

#[derive(Clone)]
struct Realtime {
    hub: Arc<Hub>,
    verifier: Arc<Verifier>,
    store: Arc<dyn Store>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The largest frame or message a client may send.
const CLIENT_FRAME_LIMIT: usize = 4 * 1024;

/// The `/realtime` route, for the standalone server's router.
pub fn router(hub: Arc<Hub>, verifier: Arc<Verifier>, store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/realtime", get(connect))
        .with_state(Realtime {
            hub,
            verifier,
            store,
        })
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
    let principal = match rt
        .verifier
        .verify_header_or_token(authorization, query.token.as_deref())
    {
        Ok(principal) => principal,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // In the hub before it is recorded: a message sent in between finds it.
    let (connection, rx) = rt.hub.register(&principal.sub);
    if let Err(e) = realtime::connect(rt.store.as_ref(), &connection).await {
        rt.hub.unregister(&connection.id);
        return ApiError::from(e).into_response();
    }
    // A client sends only pongs and a close: small buffers and limits keep an idle connection
    // cheap (the default read buffer alone is 128 KiB) and a large frame from it refused.
    upgrade
        .read_buffer_size(CLIENT_FRAME_LIMIT)
        .max_frame_size(CLIENT_FRAME_LIMIT)
        .max_message_size(CLIENT_FRAME_LIMIT)
        .on_upgrade(move |socket| serve(socket, rt, connection, rx))
}

async fn serve(
    mut socket: WebSocket,
    rt: Realtime,
    connection: Connection,
    mut rx: mpsc::Receiver<String>,
) {
    let (user, id) = (connection.user.as_str(), connection.id.as_str());
    tracing::info!(user, connection = id, "realtime connection opened");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut record = tokio::time::interval(RECORD_EVERY);
    record.tick().await;
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
            _ = record.tick() => {
                if let Err(e) = realtime::connect(rt.store.as_ref(), &connection).await {
                    tracing::warn!(user, connection = id, error = %e, "cannot record a realtime connection again");
                }
            }
        }
    }
    rt.hub.unregister(id);
    if let Err(e) = realtime::disconnect(rt.store.as_ref(), id).await {
        tracing::warn!(user, connection = id, error = %e, "cannot forget a closed realtime connection; it expires");
    }
    tracing::info!(user, connection = id, "realtime connection closed");
}
