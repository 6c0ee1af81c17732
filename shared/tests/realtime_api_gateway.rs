//! The deployed realtime path, end to end against real stand-ins: the realtime function's handler
//! on API Gateway WebSocket events (`$connect` with the token as `?token=` or in the header,
//! `$disconnect`), its connections recorded in Cassandra, posts, deletes, follows and marks
//! through the functions' router, their jobs run by the fan-out function's handler on the SQS
//! events Lambda builds from ElasticMQ's messages, and moto's server as API Gateway's Management
//! API. Its recorder shows what each connection got: the texts server/tests/realtime.rs checks the
//! standalone server's WebSocket against, byte for byte.
//!
//! moto accepts every connection id and never answers 410 Gone, so forgetting a connection that
//! is gone is checked by realtime/apigw.rs's tests (the decision) and only on AWS (the answer).
//! Needs Cassandra and ElasticMQ (the test command starts both) and `moto_server`
//! (scripts/python-tools.sh installs it; the test runs it when it is missing).

use std::sync::Arc;

use aws_lambda_events::event::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use feeds::config::{self, Backends, Defaults, Settings};
use feeds::fanout::Fanout;
use feeds::http::{router, App, Routes};
use feeds::lambda::handle_websocket_event;
use feeds::realtime::apigw::ManagementApi;
use feeds::settings::Env;
use feeds::store::cassandra::CassandraStore;
use feeds::store::{Connection, Store};
use feeds_testkit::moto::Moto;
use feeds_testkit::realtime::{activity_message, counts_message, removed_message};
use feeds_testkit::services::{cassandra_store, event, TestQueue};
use feeds_testkit::tokens::token;
use feeds_testkit::unique;
use feeds_testkit::wait::drain_sqs;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEYSPACE: &str = "feeds_realtime_api_gateway";

/// The deployment: the functions over one store and queue, the fan-out posting to moto.
struct Deployed {
    store: Arc<CassandraStore>,
    queue: TestQueue,
    app: App,
    fanout: Fanout,
    moto: Moto,
}

/// Where a `$connect` carries its token.
enum TokenIn {
    Query(String),
    Header(String),
    Nowhere,
}

/// An id as API Gateway gives them (base64 text); fresh on every run.
fn connection_id() -> String {
    let hex = unique("c").replace('_', "");
    format!("{hex}AMC=")
}

impl Deployed {
    async fn start() -> Deployed {
        let moto = Moto::start().await;
        let store = cassandra_store(KEYSPACE).await;
        let queue = TestQueue::create("realtime_api_gateway", 30, 5).await;
        // An actor with a second follower becomes a pulled author.
        let env = Env::from_pairs([("FEEDS_PULL_THRESHOLD", "1")]);
        let settings = Settings::read(&env, Defaults::EMBEDDED).unwrap();
        let backends = Backends::new(store.clone(), queue.queue.clone(), settings.fanout);
        let app = config::app(&settings, &backends).unwrap();
        let api = ManagementApi::new(&moto.url).await;
        let fanout = backends.fanout.clone().with_realtime(Arc::new(api));
        Deployed {
            store,
            queue,
            app,
            fanout,
            moto,
        }
    }

    /// The realtime function's answer to `$connect` of connection `id`.
    async fn connect(&self, id: &str, token: TokenIn) -> ApiGatewayProxyResponse {
        let mut sample: Value = serde_json::from_str(&event("realtime-connect.json")).unwrap();
        sample["requestContext"]["connectionId"] = json!(id);
        let query = sample.as_object_mut().unwrap();
        query.remove("queryStringParameters");
        query.remove("multiValueQueryStringParameters");
        match token {
            TokenIn::Query(t) => {
                sample["queryStringParameters"] = json!({ "token": t });
                sample["multiValueQueryStringParameters"] = json!({ "token": [t] });
            }
            TokenIn::Header(t) => {
                sample["headers"]["Authorization"] = json!(format!("Bearer {t}"));
                sample["multiValueHeaders"]["Authorization"] = json!([format!("Bearer {t}")]);
            }
            TokenIn::Nowhere => {}
        }
        self.websocket(sample).await
    }

    async fn disconnect(&self, id: &str) -> ApiGatewayProxyResponse {
        let mut sample: Value = serde_json::from_str(&event("realtime-disconnect.json")).unwrap();
        sample["requestContext"]["connectionId"] = json!(id);
        self.websocket(sample).await
    }

    async fn websocket(&self, event: Value) -> ApiGatewayProxyResponse {
        let event: ApiGatewayWebsocketProxyRequest =
            serde_json::from_value(event).expect("an API Gateway WebSocket event");
        handle_websocket_event(self.store.as_ref(), &self.app.verifier, event).await
    }

    /// A request of `user` to the functions' routes: the status and the body as it came.
    async fn call(
        &self,
        method: &str,
        path: &str,
        user: &str,
        body: Value,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", token(user)))
            .header("content-type", "application/json")
            .body(match body {
                Value::Null => Body::empty(),
                body => Body::from(body.to_string()),
            })
            .unwrap();
        let answer = router(self.app.clone(), Routes::All)
            .oneshot(request)
            .await
            .unwrap();
        let status = answer.status();
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn follow(&self, follower: &str, following: &str) {
        let body = json!({"follower": follower, "following": following});
        let (status, text) = self.call("POST", "/follow", follower, body).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }

    /// Posts as `actor`; answers the activity's id and its JSON as the API answered it.
    async fn post(&self, actor: &str, body: Value) -> (String, String) {
        let (status, text) = self.call("POST", "/activities", actor, body).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, text)
    }

    /// Runs every job the calls enqueued, as the fan-out function does.
    async fn fan_out(&self) {
        let failed = drain_sqs(&self.queue.queue, &self.fanout).await;
        assert_eq!(failed, Vec::<String>::new(), "fan-out messages failed");
    }

    /// What connection `id` got, in order.
    async fn pushed(&self, id: &str) -> Vec<String> {
        self.moto.posted_to(id).await
    }

    async fn connections(&self, user: &str) -> Vec<Connection> {
        self.store.connections(&[user.to_owned()]).await.unwrap()
    }
}

fn sorted(mut texts: Vec<String>) -> Vec<String> {
    texts.sort();
    texts
}

fn without_repeats(mut texts: Vec<String>) -> Vec<String> {
    texts.sort();
    texts.dedup();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_get_what_the_standalone_server_sends() {
    let d = Deployed::start().await;
    let (star, fan, fan2, friend) = (
        unique("star"),
        unique("fan"),
        unique("fan2"),
        unique("friend"),
    );
    let (fan_id, fan2_id, friend_id) = (connection_id(), connection_id(), connection_id());

    // Refused before the connection exists: nothing recorded.
    for (token, code) in [
        (TokenIn::Nowhere, "missing_authorization"),
        (TokenIn::Query("forged".into()), "malformed_token"),
        (TokenIn::Header("forged".into()), "malformed_token"),
    ] {
        let refused = d.connect(&fan_id, token).await;
        assert_eq!(refused.status_code, 401);
        let body = match refused.body {
            Some(aws_lambda_events::encodings::Body::Text(text)) => text,
            other => panic!("an error body, not {other:?}"),
        };
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    assert_eq!(d.store.connection_user(&fan_id).await.unwrap(), None);

    for (id, user, token) in [
        (&fan_id, &fan, TokenIn::Query(token(&fan))),
        (&fan2_id, &fan2, TokenIn::Header(token(&fan2))),
        (&friend_id, &friend, TokenIn::Query(token(&friend))),
    ] {
        assert_eq!(d.connect(id, token).await.status_code, 200);
        assert_eq!(
            d.connections(user).await,
            [Connection {
                user: user.clone(),
                id: id.clone()
            }]
        );
    }

    // Fanned out: the follower gets the activity, the recipient the notification and its counts.
    d.follow(&fan, &star).await;
    d.fan_out().await;
    let (p1, p1_text) = d
        .post(
            &star,
            json!({"actor": star, "object": "o1", "to": [friend]}),
        )
        .await;
    d.fan_out().await;
    assert_eq!(
        d.pushed(&fan_id).await,
        [activity_message("flat", &p1_text)]
    );
    assert_eq!(
        sorted(d.pushed(&friend_id).await),
        sorted(vec![
            activity_message("notification", &p1_text),
            counts_message(1, 1)
        ])
    );

    // A mark that changes the counts pushes them.
    let (status, marked) = d
        .call(
            "POST",
            "/feeds/notification/read",
            &friend,
            json!({"all": true}),
        )
        .await;
    let marked: Value = serde_json::from_str(&marked).unwrap();
    assert_eq!(
        (status, marked),
        (StatusCode::OK, json!({"unseen": 0, "unread": 0}))
    );
    d.fan_out().await;
    assert_eq!(d.pushed(&friend_id).await[2..], [counts_message(0, 0)]);

    // A deletion.
    let (status, _) = d
        .call("DELETE", &format!("/activities/{p1}"), &star, Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    d.fan_out().await;
    assert_eq!(d.pushed(&fan_id).await[1..], [removed_message("flat", &p1)]);
    assert_eq!(
        sorted(d.pushed(&friend_id).await[3..].to_vec()),
        sorted(vec![
            removed_message("notification", &p1),
            counts_message(0, 0)
        ])
    );

    // A second follower: the next post makes the star a pulled author, and its followers'
    // connections are recorded under it when it is adopted. The activity that made it one may
    // reach them twice (pushed, and adopted).
    d.follow(&fan2, &star).await;
    d.fan_out().await;
    let (_, p2_text) = d.post(&star, json!({"actor": star, "object": "o2"})).await;
    d.fan_out().await;
    assert!(d.store.is_pulled_author(&star).await.unwrap());
    for id in [&fan_id, &fan2_id] {
        let got = d.pushed(id).await;
        let p2_from = if id == &fan_id { 2 } else { 0 };
        assert_eq!(
            without_repeats(got[p2_from..].to_vec()),
            [activity_message("flat", &p2_text)],
            "{id}"
        );
    }
    let (fan_seen, fan2_seen) = (
        d.pushed(&fan_id).await.len(),
        d.pushed(&fan2_id).await.len(),
    );
    let (p3, p3_text) = d.post(&star, json!({"actor": star, "object": "o3"})).await;
    d.fan_out().await;
    assert_eq!(
        d.pushed(&fan_id).await[fan_seen..],
        [activity_message("flat", &p3_text)]
    );
    assert_eq!(
        d.pushed(&fan2_id).await[fan2_seen..],
        [activity_message("flat", &p3_text)]
    );
    let mut under_star = d.store.pulled_connections(&star).await.unwrap();
    under_star.sort();
    let mut expected = vec![
        Connection {
            user: fan.clone(),
            id: fan_id.clone(),
        },
        Connection {
            user: fan2.clone(),
            id: fan2_id.clone(),
        },
    ];
    expected.sort();
    assert_eq!(under_star, expected);

    // Disconnected: every record of the connection is gone, and nothing more is posted to it.
    assert_eq!(d.disconnect(&fan_id).await.status_code, 200);
    assert_eq!(d.connections(&fan).await, []);
    assert_eq!(d.store.connection_user(&fan_id).await.unwrap(), None);
    assert_eq!(
        d.store.pulled_connections(&star).await.unwrap(),
        [Connection {
            user: fan2.clone(),
            id: fan2_id.clone()
        }]
    );
    let (status, _) = d
        .call("DELETE", &format!("/activities/{p3}"), &star, Value::Null)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    d.fan_out().await;
    assert_eq!(d.pushed(&fan_id).await.len(), fan_seen + 1);
    assert_eq!(
        d.pushed(&fan2_id).await[fan2_seen + 1..],
        [removed_message("flat", &p3)]
    );
    // A second `$disconnect` (API Gateway may repeat it) changes nothing.
    assert_eq!(d.disconnect(&fan_id).await.status_code, 200);
}
