//! `GET /realtime` end to end, on both backends, with a real WebSocket client: a bad or missing
//! token is `401` before the upgrade; a follower connected with `?token=` (or the header) gets
//! the activity a followee posts, its removal when it is deleted, and a recipient gets the
//! notification and its counts.

use std::time::Duration;

use feeds_testkit::api::Api;
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const WAIT: Duration = Duration::from_secs(20);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(server: &Server, query: &str) -> String {
    format!("{}/realtime{query}", server.base.replacen("http", "ws", 1))
}

async fn connect(server: &Server, user: &str, in_header: bool) -> Socket {
    let (url, header) = match in_header {
        true => (ws_url(server, ""), Some(format!("Bearer {}", token(user)))),
        false => (ws_url(server, &format!("?token={}", token(user))), None),
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(value) = header {
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    socket
}

/// The next JSON message, skipping pings.
async fn next(socket: &mut Socket) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("a realtime message in time")
            .expect("the connection stays open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn realtime_messages_follow_the_feeds(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let (star, fan, friend) = (unique("star"), unique("fan"), unique("friend"));

    // Refused before the upgrade.
    for query in [String::new(), "?token=forged".to_owned()] {
        let refused = tokio_tungstenite::connect_async(ws_url(server, &query)).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{query}")
            }
            other => panic!("{query}: expected 401, got {other:?}"),
        }
    }

    api.follow(&fan, &star).await;
    until_drained(queue, WAIT).await;
    let mut fan_socket = connect(server, &fan, false).await;
    let mut friend_socket = connect(server, &friend, true).await;

    let posted = api
        .post(
            &star,
            json!({"actor": star, "object": "o1", "to": [friend]}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let id = posted.body["id"].clone();
    let arrived = next(&mut fan_socket).await;
    assert_eq!(
        arrived,
        json!({"type": "activity", "feed": "flat", "activity": posted.body})
    );
    let mut notified = vec![
        next(&mut friend_socket).await,
        next(&mut friend_socket).await,
    ];
    notified.sort_by_key(|m| m["type"].as_str().unwrap().to_owned());
    assert_eq!(
        notified,
        [
            json!({"type": "activity", "feed": "notification", "activity": posted.body}),
            json!({"type": "counts", "unseen": 1, "unread": 1}),
        ]
    );

    let gone = api.delete_activity(&star, id.as_str().unwrap()).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(
        next(&mut fan_socket).await,
        json!({"type": "removed", "feed": "flat", "id": id})
    );
    let mut removed = vec![
        next(&mut friend_socket).await,
        next(&mut friend_socket).await,
    ];
    removed.sort_by_key(|m| m["type"].as_str().unwrap().to_owned());
    assert_eq!(
        removed,
        [
            json!({"type": "counts", "unseen": 0, "unread": 0}),
            json!({"type": "removed", "feed": "notification", "id": id}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, _) = Server::embedded(BIN, "realtime-embedded", &[]);
    realtime_messages_follow_the_feeds(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("realtime", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "realtime-cassandra",
        "feeds_realtime",
        queue.url(),
        &[],
    );
    realtime_messages_follow_the_feeds(&server).await;
}
