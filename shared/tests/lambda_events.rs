//! Each function's handler, as `lambda_http` / `lambda_runtime` run it, on each sample event in
//! `events/`: the events are real API Gateway HTTP API (v2), WebSocket and SQS shapes, with
//! development tokens.

use std::sync::Arc;

use aws_lambda_events::event::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::event::sqs::SqsEvent;
use feeds::http::{router, App, Routes};
use feeds::lambda::handle_websocket_event;
use feeds::model::{parse_time, Activity};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::store::sqlite::SqliteStore;
use feeds::store::{Connection, IdRange, Store};
use feeds_testkit::services::{event, in_memory};
use feeds_testkit::tokens::assert_dev_key;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::Service;
use lambda_http::{Adapter, Context, LambdaEvent};
use serde_json::Value;

const SAMPLE_ACTIVITY: &str = "000661675b3528007c4f9a1e2b8d3f60";

struct Fixture {
    store: Arc<SqliteStore>,
    queue: EmbeddedQueue,
    app: App,
}

async fn fixture() -> Fixture {
    assert_dev_key();
    let (backends, store, queue) = in_memory().await;
    let app = feeds_testkit::services::app(&backends);
    Fixture { store, queue, app }
}

fn sample_activity() -> Activity {
    Activity {
        id: SAMPLE_ACTIVITY.into(),
        actor: "usr_01".into(),
        verb: "post".into(),
        object: "obj_50".into(),
        target: None,
        time: parse_time("2026-11-29T10:00:00Z").unwrap(),
        foreign_id: None,
        to: vec!["usr_02".into()],
        extra: None,
    }
}

/// Runs an HTTP event through the function's router exactly as `lambda_http::run` does.
async fn invoke(app: &App, routes: Routes, name: &str) -> (u16, Value) {
    let request: LambdaRequest = serde_json::from_str(&event(name))
        .unwrap_or_else(|e| panic!("{name} is not an HTTP API event: {e}"));
    let mut adapter = Adapter::from(router(app.clone(), routes));
    let response = adapter
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    let response = serde_json::to_value(response).unwrap();
    let status = response["statusCode"].as_u64().unwrap() as u16;
    let body = match response["body"].as_str() {
        Some(text) if !text.is_empty() => serde_json::from_str(text).unwrap(),
        _ => Value::Null,
    };
    (status, body)
}

#[tokio::test]
async fn follow_function_answers_its_sample_events() {
    let f = fixture().await;
    let (status, body) = invoke(&f.app, Routes::Follow, "follow.json").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["follower"].as_str(), body["following"].as_str()),
        (Some("usr_02"), Some("usr_01"))
    );
    assert!(f.store.is_following("usr_02", "usr_01").await.unwrap());
    assert_eq!(
        f.queue.depth().await.unwrap().0,
        3,
        "a backfill job and the recounts of both users are enqueued"
    );
    let (status, _) = invoke(&f.app, Routes::Follow, "unfollow.json").await;
    assert_eq!(status, 204);
    assert!(!f.store.is_following("usr_02", "usr_01").await.unwrap());
    let (status, body) = invoke(&f.app, Routes::Follow, "follow-batch.json").await;
    assert_eq!(status, 200, "{body}");
    let created: Vec<(&str, bool)> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["following"].as_str().unwrap(),
                r["created"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(created, [("usr_01", true), ("usr_03", true)]);
    assert!(f.store.is_following("usr_02", "usr_03").await.unwrap());
    let waiting = f.queue.depth().await.unwrap().0;
    let (status, body) = invoke(&f.app, Routes::Follow, "erase-user.json").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, serde_json::json!({"status": "accepted"}));
    assert_eq!(
        f.queue.depth().await.unwrap().0,
        waiting + 1,
        "the erasure is enqueued"
    );
    let (status, body) = invoke(&f.app, Routes::Follow, "get-feed.json").await;
    assert_eq!(status, 404, "a function serves only its own routes: {body}");
}

#[tokio::test]
async fn post_activity_function_answers_its_sample_events() {
    let f = fixture().await;
    let (status, body) = invoke(&f.app, Routes::PostActivity, "post-activity.json").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["actor"], "usr_01");
    let stored = f
        .store
        .user_feed("usr_01", IdRange::default(), 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(serde_json::to_value(&stored[0]).unwrap(), body);

    f.store.put_activity(&sample_activity()).await.unwrap();
    let (status, body) = invoke(&f.app, Routes::PostActivity, "update-activity.json").await;
    assert_eq!(status, 200, "{body}");
    let mut updated = sample_activity();
    updated.target = Some("usr_09".into());
    updated.extra = serde_json::json!({"likes": 3}).as_object().cloned();
    assert_eq!(body, serde_json::to_value(&updated).unwrap());
    assert_eq!(
        f.store.get_activity(SAMPLE_ACTIVITY).await.unwrap(),
        Some(updated)
    );
    let (status, body) = invoke(&f.app, Routes::PostActivity, "delete-activity.json").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(f.store.get_activity(SAMPLE_ACTIVITY).await.unwrap(), None);
}

#[tokio::test]
async fn get_feed_function_answers_its_sample_events() {
    let f = fixture().await;
    f.store
        .follow(&feeds::model::FollowEdge {
            follower: "usr_02".into(),
            following: "usr_01".into(),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    f.store.put_activity(&sample_activity()).await.unwrap();
    // Delivered as the fan-out does it: the timeline row and its aggregated group.
    let fanout = feeds::fanout::Fanout::new(
        f.store.clone(),
        Arc::new(f.queue.clone()),
        Default::default(),
    );
    let deliver = feeds::queue::FanoutJob::Deliver {
        activity_id: SAMPLE_ACTIVITY.into(),
        actor: "usr_01".into(),
        after: None,
    };
    fanout.run(&deliver).await.unwrap();
    let notify = feeds::queue::FanoutJob::Notify {
        activity_id: SAMPLE_ACTIVITY.into(),
        from: 0,
    };
    fanout.run(&notify).await.unwrap();
    let (status, body) = invoke(&f.app, Routes::GetFeed, "get-feed.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["group"], "post:2026-11-29");
    assert_eq!(body["results"][0]["activities"][0]["id"], SAMPLE_ACTIVITY);
    for name in ["get-feed-flat.json", "get-feed-user.json"] {
        let (status, body) = invoke(&f.app, Routes::GetFeed, name).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["results"][0]["id"], SAMPLE_ACTIVITY, "{name}");
    }
    let (status, body) = invoke(&f.app, Routes::GetFeed, "get-feed-notification.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["group"], "post:obj_50:2026-11-29");
    assert_eq!(
        (body["unseen"].as_u64(), body["is_seen"].as_bool()),
        (Some(1), None)
    );
    let (status, body) = invoke(&f.app, Routes::GetFeed, "notification-seen.json").await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"unseen": 0, "unread": 1}))
    );
    let (status, body) = invoke(&f.app, Routes::GetFeed, "notification-read.json").await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"unseen": 0, "unread": 0}))
    );
    let (status, body) = invoke(&f.app, Routes::GetFeed, "user-counts.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"user": "usr_01", "followers": 1, "following": 0, "activities": 1})
    );
    let (status, body) = invoke(&f.app, Routes::GetFeed, "followers.json").await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["user"], "usr_02");
    let (status, body) = invoke(&f.app, Routes::GetFeed, "health.json").await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
}

#[tokio::test]
async fn fanout_function_answers_its_sample_event() {
    let f = fixture().await;
    f.store
        .follow(&feeds::model::FollowEdge {
            follower: "usr_02".into(),
            following: "usr_01".into(),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    f.store.put_activity(&sample_activity()).await.unwrap();
    let event: SqsEvent = serde_json::from_str(&event("fanout.json")).expect("an SQS event");
    // The first message carries the trace of the post that sent it; the second, none.
    let traces: Vec<_> = event
        .records
        .iter()
        .map(|r| feeds::lambda::queue_message(r.clone()).trace)
        .collect();
    assert_eq!(
        traces[0].start().trace_id,
        "6a3b2c205e0d8a1f9c2b4d6e8f0a1b2c"
    );
    assert!(traces[0].aws_trace_header.is_some() && traces[0].origin_ms.is_some());
    assert_eq!(traces[1], Default::default());
    let fanout = feeds::fanout::Fanout::new(
        f.store.clone(),
        Arc::new(f.queue.clone()),
        Default::default(),
    );
    let response = feeds::lambda::handle_sqs_event(&fanout, event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    let timeline = f
        .store
        .timeline("usr_02", IdRange::default(), 10)
        .await
        .unwrap();
    assert_eq!(
        timeline,
        vec![sample_activity()],
        "delivered (and backfilled) exactly once"
    );
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(
        wire,
        serde_json::json!({"batchItemFailures": []}),
        "the shape Lambda reads"
    );
}

#[tokio::test]
async fn realtime_function_answers_its_sample_events() {
    let f = fixture().await;
    let websocket = |name: &str| -> ApiGatewayWebsocketProxyRequest {
        serde_json::from_str(&event(name))
            .unwrap_or_else(|e| panic!("{name} is not an API Gateway WebSocket event: {e}"))
    };
    let id = "Xq3vKdTRoAMCJkQ=";
    let connect = websocket("realtime-connect.json");
    let answer = handle_websocket_event(f.store.as_ref(), &f.app.verifier, connect).await;
    assert_eq!(answer.status_code, 200, "{answer:?}");
    assert_eq!(
        f.store.connection_user(id).await.unwrap().as_deref(),
        Some("usr_02")
    );
    assert_eq!(
        f.store.connections(&["usr_02".into()]).await.unwrap(),
        [Connection {
            user: "usr_02".into(),
            id: id.into()
        }]
    );
    let disconnect = websocket("realtime-disconnect.json");
    let answer = handle_websocket_event(f.store.as_ref(), &f.app.verifier, disconnect).await;
    assert_eq!(answer.status_code, 200, "{answer:?}");
    assert_eq!(f.store.connection_user(id).await.unwrap(), None);
    assert_eq!(f.store.connections(&["usr_02".into()]).await.unwrap(), []);

    // Without its token: refused, as `GET /realtime` refuses it.
    let mut anonymous = websocket("realtime-connect.json");
    anonymous.query_string_parameters = Default::default();
    let answer = handle_websocket_event(f.store.as_ref(), &f.app.verifier, anonymous).await;
    assert_eq!(answer.status_code, 401);
    assert_eq!(f.store.connection_user(id).await.unwrap(), None);
    let wire = serde_json::to_value(&answer).unwrap();
    let body: Value = serde_json::from_str(wire["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "missing_authorization");
}
