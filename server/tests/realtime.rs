//! `GET /realtime` end to end, on both backends, with a real WebSocket client: a bad or missing
//! token is `401` before the upgrade; a follower connected with `?token=` (or the header) gets
//! the activity a followee posts, its removal when it is deleted, and a recipient gets the
//! notification and its counts; the activities of a pulled author reach its connected followers
//! (connected before or after they follow it), and no longer once they unfollow; a notification
//! mark that changes the counts pushes them. Messages are checked byte for byte where the
//! deployed service's test (shared/tests/realtime_api_gateway.rs) checks the same texts.

use std::time::Duration;

use feeds_testkit::api::{Answer, Api};
use feeds_testkit::realtime::{activity_message, counts_message, removed_message};
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::until_drained;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");
const WAIT: Duration = Duration::from_secs(20);
/// How long the fan-out may take to settle: an `Adopt` that runs before its author's mark is
/// visible is retried after the queue's visibility timeout (30 s).
const DRAIN: Duration = Duration::from_secs(90);

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

/// The next text message, as it came, skipping pings.
async fn next_text(socket: &mut Socket) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("a realtime message in time")
            .expect("the connection stays open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return text.as_str().to_owned();
        }
    }
}

/// The next JSON message, skipping pings.
async fn next(socket: &mut Socket) -> Value {
    serde_json::from_str(&next_text(socket).await).unwrap()
}

/// The next `n` text messages, sorted: what one change pushes, whose order is not fixed.
async fn next_sorted(socket: &mut Socket, n: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(n);
    for _ in 0..n {
        texts.push(next_text(socket).await);
    }
    texts.sort();
    texts
}

fn sorted(mut texts: Vec<String>) -> Vec<String> {
    texts.sort();
    texts
}

async fn post(api: &Api, actor: &str, body: Value) -> Answer {
    let posted = api.post(actor, body).await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    posted
}

async fn mark(api: &Api, user: &str, what: &str, expected: Value) {
    let path = format!("/feeds/notification/{what}");
    let body = Some(json!({"all": true}));
    let marked = api
        .send(Method::POST, &path, Some(&token(user)), body)
        .await;
    assert_eq!(
        (marked.status, marked.body),
        (StatusCode::OK, expected),
        "{what}"
    );
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
    until_drained(queue, DRAIN).await;
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
    let arrived = next_text(&mut fan_socket).await;
    assert_eq!(arrived, activity_message("flat", &posted.text));
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

/// With `FEEDS_PULL_THRESHOLD=1`, an actor with a second follower becomes a pulled author: its
/// activities are in no timeline, and are pushed to its followers' connections all the same.
async fn pulled_authors_activities_are_pushed(server: &Server) {
    let api = Api::new(server);
    let queue = server.queue();
    let star = unique("star");
    let (fan1, fan2, fan3) = (unique("fan1"), unique("fan2"), unique("fan3"));
    api.follow(&fan1, &star).await;
    api.follow(&fan2, &star).await;
    until_drained(queue, DRAIN).await;
    let p0 = post(&api, &star, json!({"actor": star, "object": "o0"})).await;
    until_drained(queue, DRAIN).await;

    // Connected after it became a pulled author.
    let mut fan1_socket = connect(server, &fan1, false).await;
    let p1 = post(&api, &star, json!({"actor": star, "object": "o1"})).await;
    assert_eq!(
        next_text(&mut fan1_socket).await,
        activity_message("flat", &p1.text)
    );

    // Connected, then following it: what it pulled is readable from then on, and pushed.
    let mut fan3_socket = connect(server, &fan3, true).await;
    api.follow(&fan3, &star).await;
    assert_eq!(
        next_sorted(&mut fan3_socket, 2).await,
        sorted(vec![
            activity_message("flat", &p0.text),
            activity_message("flat", &p1.text)
        ])
    );
    until_drained(queue, DRAIN).await;
    let p2 = post(&api, &star, json!({"actor": star, "object": "o2"})).await;
    for socket in [&mut fan1_socket, &mut fan3_socket] {
        assert_eq!(next_text(socket).await, activity_message("flat", &p2.text));
    }
    let p2_id = p2.body["id"].as_str().unwrap();
    let gone = api.delete_activity(&star, p2_id).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    for socket in [&mut fan1_socket, &mut fan3_socket] {
        assert_eq!(next_text(socket).await, removed_message("flat", p2_id));
    }

    // Unfollowing: what it pulled leaves the feed, and what it pulls next is not pushed.
    let unfollowed = api.unfollow(&fan3, &star).await;
    assert_eq!(unfollowed.status, StatusCode::NO_CONTENT);
    let left = [&p0, &p1].map(|p| removed_message("flat", p.body["id"].as_str().unwrap()));
    assert_eq!(
        next_sorted(&mut fan3_socket, 2).await,
        sorted(left.to_vec())
    );
    until_drained(queue, DRAIN).await;
    let p3 = post(
        &api,
        &star,
        json!({"actor": star, "object": "o3", "to": [fan3]}),
    )
    .await;
    assert_eq!(
        next_text(&mut fan1_socket).await,
        activity_message("flat", &p3.text)
    );
    assert_eq!(
        next_sorted(&mut fan3_socket, 2).await,
        sorted(vec![
            activity_message("notification", &p3.text),
            counts_message(1, 1)
        ]),
        "a notification, and no flat activity"
    );
    until_drained(queue, DRAIN).await;
    mark(&api, &fan3, "read", json!({"unseen": 0, "unread": 0})).await;
    assert_eq!(
        next_text(&mut fan3_socket).await,
        counts_message(0, 0),
        "nothing else was pushed before"
    );
}

/// A mark that changes the notification counts pushes them; one that changes nothing does not.
async fn counts_are_pushed_after_a_mark(server: &Server) {
    let api = Api::new(server);
    let (author, reader) = (unique("author"), unique("reader"));
    let mut socket = connect(server, &reader, false).await;
    let first = post(
        &api,
        &author,
        json!({"actor": author, "object": "o1", "to": [reader]}),
    )
    .await;
    assert_eq!(
        next_sorted(&mut socket, 2).await,
        sorted(vec![
            activity_message("notification", &first.text),
            counts_message(1, 1)
        ])
    );
    until_drained(server.queue(), DRAIN).await;
    mark(&api, &reader, "seen", json!({"unseen": 0, "unread": 1})).await;
    assert_eq!(next_text(&mut socket).await, counts_message(0, 1));
    mark(&api, &reader, "read", json!({"unseen": 0, "unread": 0})).await;
    assert_eq!(next_text(&mut socket).await, counts_message(0, 0));
    // Changes nothing: the next message is the next notification's.
    mark(&api, &reader, "read", json!({"unseen": 0, "unread": 0})).await;
    until_drained(server.queue(), DRAIN).await;
    let second = post(
        &api,
        &author,
        json!({"actor": author, "object": "o2", "to": [reader]}),
    )
    .await;
    assert_eq!(
        next_sorted(&mut socket, 2).await,
        sorted(vec![
            activity_message("notification", &second.text),
            counts_message(1, 1)
        ])
    );
}

/// Every scenario, on one server.
async fn realtime_end_to_end(server: &Server) {
    realtime_messages_follow_the_feeds(server).await;
    pulled_authors_activities_are_pushed(server).await;
    counts_are_pushed_after_a_mark(server).await;
}

fn settings() -> Vec<(&'static str, String)> {
    vec![("FEEDS_PULL_THRESHOLD", "1".to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default() {
    let (server, _) = Server::embedded(BIN, "realtime-embedded", &settings());
    realtime_end_to_end(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_sqs() {
    let queue = TestQueue::create("realtime", 30, 5).await;
    let server = Server::cassandra_sqs(
        BIN,
        "realtime-cassandra",
        "feeds_realtime",
        queue.url(),
        &settings(),
    );
    realtime_end_to_end(&server).await;
}
