//! The HTTP contract end to end: the real server binary, over HTTP, once on the embedded default
//! (SQLite and its in-process queue) and once on Cassandra and ElasticMQ (SQS). Every test uses fresh
//! user names, so runs never see each other's data.

use std::sync::OnceLock;
use std::time::Duration;

use feeds_testkit::api::{ids, Api};
use feeds_testkit::server::Server;
use feeds_testkit::services::TestQueue;
use feeds_testkit::snapshot::{assert_unchanged, snapshot};
use feeds_testkit::tokens::{admin_token, token};
use feeds_testkit::unique;
use feeds_testkit::wait::{eventually, until_drained};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_feeds-server");

/// How long fan-out may take.
const FANOUT: Duration = Duration::from_secs(60);

fn embedded() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::embedded(BIN, "e2e-embedded", &[]).0)
}

/// On a queue of its own (the settings of the template's `fanout` queue), so that "the queue is
/// drained" speaks of this server's fan-out only.
async fn cassandra() -> &'static Server {
    static SERVER: tokio::sync::OnceCell<Server> = tokio::sync::OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let queue = TestQueue::create("e2e", 30, 5).await;
            Server::cassandra_sqs(BIN, "e2e-cassandra", "feeds_e2e", queue.url(), &[])
        })
        .await
}

async fn walkthrough_follow_post_read_aggregated(server: &Server) {
    let api = Api::new(server);
    let (u1, u2) = (unique("usr_01"), unique("usr_02"));
    let followed = api.follow(&u2, &u1).await;
    assert_eq!(followed.status, StatusCode::CREATED, "{}", followed.body);
    assert_eq!(followed.body["follower"], json!(u2));
    assert_eq!(followed.body["following"], json!(u1));
    let again = api.follow(&u2, &u1).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["created_at"], followed.body["created_at"],
        "an existing edge keeps its created_at"
    );

    let posted = api
        .post(&u1, json!({"actor": u1, "verb": "post", "object": "obj_50", "target": "usr_73", "time": "2026-11-29T10:00:00Z", "foreign_id": "post:123", "extra": {"text": "hello"}}))
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let activity = posted.body.clone();
    assert_eq!(activity["time"], json!("2026-11-29T10:00:00Z"));
    assert_eq!(activity["extra"], json!({"text": "hello"}));

    let own = api.get(&format!("/feeds/user/{u1}"), &token(&u2)).await;
    assert_eq!(
        own.body["results"][0], activity,
        "at once in the actor's own feed"
    );

    let t2 = token(&u2);
    eventually(
        "the activity reaches usr_02's aggregated feed",
        FANOUT,
        || async {
            let page = api.get("/feeds/aggregated", &t2).await;
            page.body["results"]
                .as_array()
                .is_some_and(|g| !g.is_empty())
        },
    )
    .await;
    let page = api.get("/feeds/aggregated", &t2).await;
    let group = &page.body["results"][0];
    assert_eq!(group["group"], json!("post:2026-11-29"));
    assert_eq!(group["verb"], json!("post"));
    assert_eq!(group["activity_count"], json!(1));
    assert_eq!(group["actor_count"], json!(1));
    assert_eq!(group["actors"], json!([u1]));
    assert_eq!(group["activities"][0], activity);
    assert_eq!(group["created_at"], json!("2026-11-29T10:00:00Z"));
    assert_eq!(group["updated_at"], json!("2026-11-29T10:00:00Z"));
    assert_eq!(page.body["next"], Value::Null);
    assert_eq!(
        api.flat_ids(&u2).await,
        vec![activity["id"].as_str().unwrap().to_owned()]
    );

    let followers = api.get(&format!("/users/{u1}/followers"), &t2).await;
    assert_eq!(followers.body["results"][0]["user"], json!(u2));
    assert_eq!(
        followers.body["results"][0]["since"],
        followed.body["created_at"]
    );
    let following = api.get(&format!("/users/{u2}/following"), &t2).await;
    assert_eq!(following.body["results"][0]["user"], json!(u1));
}

async fn pagination_walk_returns_each_activity_once_newest_first(server: &Server) {
    let api = Api::new(server);
    let reader = unique("reader");
    let actors: Vec<String> = (0..3).map(|i| unique(&format!("actor{i}"))).collect();
    for actor in &actors {
        assert_eq!(api.follow(&reader, actor).await.status, StatusCode::CREATED);
    }
    let mut posted = Vec::new();
    for i in 0..150 {
        let actor = &actors[i % 3];
        // Times spread over several days and out of order: ids sort by `time`, not by arrival.
        let time = format!(
            "2026-11-{:02}T{:02}:{:02}:00Z",
            10 + (i * 7) % 5,
            (i * 13) % 24,
            i % 60
        );
        let a = api
            .post(
                actor,
                json!({"actor": actor, "object": format!("obj_{i}"), "time": time}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        posted.push(a.body);
    }
    let t = token(&reader);
    eventually(
        "all 150 activities reach the reader's timeline",
        FANOUT,
        || async { api.walk("/feeds/flat", &t).await.len() == 150 },
    )
    .await;
    let walked = api.walk_by("/feeds/flat", &t, 7).await;
    let walked_ids = ids(&walked);
    let mut expected = posted.clone();
    expected.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap(),
                v["id"].as_str().unwrap().to_owned(),
            )
        };
        key(b).cmp(&key(a))
    });
    assert_eq!(
        walked_ids,
        ids(&expected),
        "each activity exactly once, newest first"
    );
    let user_feed = api
        .walk_by(&format!("/feeds/user/{}", actors[0]), &t, 7)
        .await;
    assert_eq!(user_feed.len(), 50);
    let groups = {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("/feeds/aggregated?limit=2&cursor={c}"),
                None => "/feeds/aggregated?limit=2".to_owned(),
            };
            let page = api.get(&url, &t).await;
            assert_eq!(page.status, StatusCode::OK);
            all.extend(page.body["results"].as_array().unwrap().clone());
            match page.body["next"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break all,
            }
        }
    };
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "post:2026-11-14",
            "post:2026-11-13",
            "post:2026-11-12",
            "post:2026-11-11",
            "post:2026-11-10"
        ]
    );
    let counted: u64 = groups
        .iter()
        .map(|g| g["activity_count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 150, "every activity in exactly one group");
    assert!(groups
        .iter()
        .all(|g| g["activities"].as_array().unwrap().len() == 15 && g["actor_count"] == json!(3)));
}

async fn follow_backfills_and_unfollow_purges(server: &Server) {
    let api = Api::new(server);
    let (star, fan, other) = (unique("star"), unique("fan"), unique("other"));
    for i in 0..3 {
        assert_eq!(
            api.post(&star, json!({"actor": star, "object": format!("o{i}")}))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    assert_eq!(api.follow(&fan, &other).await.status, StatusCode::CREATED);
    let kept = api
        .post(&other, json!({"actor": other, "object": "kept"}))
        .await
        .body;
    assert_eq!(api.follow(&fan, &star).await.status, StatusCode::CREATED);
    eventually(
        "the star's earlier activities are backfilled",
        FANOUT,
        || async { api.flat_ids(&fan).await.len() == 4 },
    )
    .await;

    let gone = api
        .send(
            Method::DELETE,
            &format!("/follow/{fan}/{star}"),
            Some(&token(&fan)),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    eventually(
        "no activity of the unfollowed user remains",
        FANOUT,
        || async { api.flat_ids(&fan).await == vec![kept_id.clone()] },
    )
    .await;
    let again = api
        .send(
            Method::DELETE,
            &format!("/follow/{fan}/{star}"),
            Some(&token(&fan)),
            None,
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::NO_CONTENT,
        "unfollowing twice is fine"
    );
    let following = api
        .get(&format!("/users/{fan}/following"), &token(&fan))
        .await;
    assert_eq!(following.body["results"].as_array().unwrap().len(), 1);
}

async fn delete_removes_activity_from_followers_feeds(server: &Server) {
    let api = Api::new(server);
    let (actor, f1, f2) = (unique("actor"), unique("f1"), unique("f2"));
    api.follow(&f1, &actor).await;
    api.follow(&f2, &actor).await;
    let a = api
        .post(
            &actor,
            json!({"actor": actor, "object": "doomed", "foreign_id": "x:1"}),
        )
        .await
        .body;
    let b = api
        .post(&actor, json!({"actor": actor, "object": "stays"}))
        .await
        .body;
    let (a_id, b_id) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    eventually("both activities are delivered", FANOUT, || async {
        api.flat_ids(&f1).await.len() == 2 && api.flat_ids(&f2).await.len() == 2
    })
    .await;

    let other = api
        .send(
            Method::DELETE,
            &format!("/activities/{a_id}"),
            Some(&token(&f1)),
            None,
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::FORBIDDEN,
        "deleting another actor's activity"
    );
    let deleted = api
        .send(
            Method::DELETE,
            &format!("/activities/{a_id}"),
            Some(&token(&actor)),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    eventually("the deleted activity is in no feed", FANOUT, || async {
        api.flat_ids(&f1).await == vec![b_id.clone()]
            && api.flat_ids(&f2).await == vec![b_id.clone()]
    })
    .await;
    assert_eq!(
        ids(&api
            .walk_by(&format!("/feeds/user/{actor}"), &token(&actor), 10)
            .await),
        vec![b_id.clone()]
    );
    let missing = api
        .send(
            Method::DELETE,
            &format!("/activities/{a_id}"),
            Some(&token(&actor)),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"]["code"], json!("not_found"));
    let reused = api
        .post(
            &actor,
            json!({"actor": actor, "object": "again", "foreign_id": "x:1"}),
        )
        .await;
    assert_eq!(
        reused.status,
        StatusCode::CREATED,
        "a deleted activity's foreign_id may be used again"
    );
}

async fn repost_with_same_foreign_id_is_idempotent(server: &Server) {
    let api = Api::new(server);
    let (actor, fan) = (unique("actor"), unique("fan"));
    api.follow(&fan, &actor).await;
    let first = api
        .post(
            &actor,
            json!({"actor": actor, "object": "o1", "foreign_id": "post:1"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = api
        .post(
            &actor,
            json!({"actor": actor, "object": "different", "verb": "like", "foreign_id": "post:1"}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body, first.body, "answers the activity first stored");
    let admin_retry = api
        .send(
            Method::POST,
            "/activities",
            Some(&admin_token()),
            Some(json!({"actor": actor, "object": "o1", "foreign_id": "post:1"})),
        )
        .await;
    assert_eq!(
        admin_retry.status,
        StatusCode::OK,
        "a feeds:admin service may post for the actor"
    );
    eventually("the activity is delivered", FANOUT, || async {
        api.flat_ids(&fan).await.len() == 1
    })
    .await;
    until_drained(server.queue(), FANOUT).await;
    assert_eq!(api.flat_ids(&fan).await.len(), 1, "delivered once");
    assert_eq!(
        api.walk_by(&format!("/feeds/user/{actor}"), &token(&actor), 10)
            .await
            .len(),
        1,
        "stored once"
    );
}

/// A refused request: the status it gets, method, path, token, body, and what it is.
type BadRequest = (
    StatusCode,
    Method,
    String,
    Option<String>,
    Option<String>,
    &'static str,
);

async fn bad_requests_are_refused_and_change_nothing(server: &Server) {
    let api = Api::new(server);
    let (me, you) = (unique("me"), unique("you"));
    api.follow(&you, &me).await;
    let existing = api
        .post(&me, json!({"actor": me, "object": "o"}))
        .await
        .body;
    let existing_id = existing["id"].as_str().unwrap().to_owned();
    let second = api.post(&me, json!({"actor": me, "object": "o1"})).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    eventually("the setup is delivered", FANOUT, || async {
        api.flat_ids(&you).await.len() == 2
    })
    .await;
    let before = snapshot(&api, server.queue(), &[&me, &you]).await;
    let mine = token(&me);

    let expired = feeds::auth::mint_token(
        feeds::auth::DEV_PRIVATE_KEY_PEM,
        &me,
        &[],
        chrono::Utc::now() - chrono::Duration::hours(1),
        None,
        None,
    )
    .unwrap();
    let post_body = json!({"actor": me, "object": "o2"});
    let cases: Vec<BadRequest> = vec![
        // 401: no token, a bad token, an expired token, on every kind of route.
        (
            StatusCode::UNAUTHORIZED,
            Method::POST,
            "/activities".into(),
            None,
            Some(post_body.to_string()),
            "no token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::POST,
            "/activities".into(),
            Some("not.a.jwt".into()),
            Some(post_body.to_string()),
            "malformed token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::POST,
            "/activities".into(),
            Some(expired.clone()),
            Some(post_body.to_string()),
            "expired token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::POST,
            "/follow".into(),
            None,
            Some(json!({"follower": me, "following": "x"}).to_string()),
            "follow without token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::DELETE,
            format!("/follow/{you}/{me}"),
            None,
            None,
            "unfollow without token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::DELETE,
            format!("/activities/{existing_id}"),
            Some(expired.clone()),
            None,
            "delete with expired token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::GET,
            "/feeds/flat".into(),
            None,
            None,
            "feed without token",
        ),
        (
            StatusCode::UNAUTHORIZED,
            Method::GET,
            format!("/users/{me}/followers"),
            None,
            None,
            "list without token",
        ),
        // 401 comes before 400 and 413.
        (
            StatusCode::UNAUTHORIZED,
            Method::POST,
            "/activities".into(),
            None,
            Some("{not json".into()),
            "bad body without token",
        ),
        // 400: bodies and parameters.
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some("{not json".into()),
            "invalid JSON",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me}).to_string()),
            "missing object",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "color": 1}).to_string()),
            "unknown field",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": 7}).to_string()),
            "wrong type",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "verb": "Shout!"}).to_string()),
            "bad verb",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "time": "yesterday"}).to_string()),
            "bad time",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o o"}).to_string()),
            "bad object id",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "extra": {"k": "x".repeat(9000)}}).to_string()),
            "extra over 8 KiB",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "extra": "text"}).to_string()),
            "extra not an object",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "to": (0..101).map(|i| format!("u{i}")).collect::<Vec<_>>()}).to_string()),
            "to with 101 distinct users",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "to": [you, "a/b"]}).to_string()),
            "to with a bad id",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(json!({"actor": me, "object": "o", "to": you}).to_string()),
            "to not a list",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/follow".into(),
            Some(mine.clone()),
            Some(json!({"follower": me, "following": me}).to_string()),
            "follow oneself",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/follow".into(),
            Some(mine.clone()),
            Some(json!({"follower": me}).to_string()),
            "follow without following",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::POST,
            "/follow".into(),
            Some(mine.clone()),
            Some(json!({"follower": me, "following": "a/b"}).to_string()),
            "follow a bad id",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            "/feeds/flat?limit=0".into(),
            Some(mine.clone()),
            None,
            "limit 0",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            "/feeds/flat?limit=101".into(),
            Some(mine.clone()),
            None,
            "limit 101",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            "/feeds/flat?limit=ten".into(),
            Some(mine.clone()),
            None,
            "limit not a number",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            "/feeds/flat?cursor=garbage".into(),
            Some(mine.clone()),
            None,
            "cursor does not parse",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            "/feeds/aggregated?cursor=abc.def".into(),
            Some(mine.clone()),
            None,
            "aggregated cursor altered",
        ),
        (
            StatusCode::BAD_REQUEST,
            Method::GET,
            format!("/users/{me}/followers?cursor=x"),
            Some(mine.clone()),
            None,
            "list cursor",
        ),
        // 413 and 415.
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Method::POST,
            "/activities".into(),
            Some(mine.clone()),
            Some(
                json!({"actor": me, "object": "o", "extra": {"k": "x".repeat(70_000)}}).to_string(),
            ),
            "body over 64 KiB",
        ),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Method::POST,
            "/follow".into(),
            Some(mine.clone()),
            Some(" ".repeat(65 * 1024)),
            "follow body over 64 KiB",
        ),
        // 403: acting for someone else.
        (
            StatusCode::FORBIDDEN,
            Method::POST,
            "/activities".into(),
            Some(token(&you)),
            Some(post_body.to_string()),
            "post as someone else",
        ),
        (
            StatusCode::FORBIDDEN,
            Method::POST,
            "/follow".into(),
            Some(mine.clone()),
            Some(json!({"follower": you, "following": "zzz"}).to_string()),
            "follow for someone else",
        ),
        (
            StatusCode::FORBIDDEN,
            Method::DELETE,
            format!("/follow/{you}/{me}"),
            Some(mine.clone()),
            None,
            "unfollow for someone else",
        ),
        (
            StatusCode::FORBIDDEN,
            Method::DELETE,
            format!("/activities/{existing_id}"),
            Some(token(&you)),
            None,
            "delete someone else's activity",
        ),
        // 404 and 405.
        (
            StatusCode::NOT_FOUND,
            Method::GET,
            "/nowhere".into(),
            Some(mine.clone()),
            None,
            "unknown path",
        ),
        (
            StatusCode::NOT_FOUND,
            Method::DELETE,
            "/activities/00000000000000000000000000000000".into(),
            Some(mine.clone()),
            None,
            "unknown activity",
        ),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Method::GET,
            "/follow".into(),
            Some(mine.clone()),
            None,
            "GET /follow",
        ),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Method::PUT,
            "/activities".into(),
            Some(mine.clone()),
            Some(post_body.to_string()),
            "PUT /activities",
        ),
    ];
    for (expected, method, path, tok, body, name) in cases {
        let mut req = api
            .http
            .request(method.clone(), format!("{}{path}", server.base));
        if let Some(t) = &tok {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expected, "{name}: {method} {path} answered {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{name}: error body {body}"
        );
    }
    let wrong_type = api
        .http
        .post(format!("{}/activities", server.base))
        .header("authorization", format!("Bearer {mine}"))
        .header("content-type", "text/plain")
        .body(post_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // `you`'s flat feed holds two activities: its first page of one has a cursor.
    let foreign_cursor = api.get("/feeds/flat?limit=1", &token(&you)).await;
    let c = foreign_cursor.body["next"]
        .as_str()
        .unwrap_or_else(|| panic!("a second page: {}", foreign_cursor.body));
    assert_eq!(
        api.get(&format!("/feeds/flat?cursor={c}"), &mine)
            .await
            .status,
        StatusCode::BAD_REQUEST,
        "another list's cursor"
    );
    assert_unchanged(&api, server.queue(), &[&me, &you], &before, "a bad request").await;
}

/// `to` is checked, its repeats dropped in order, and it travels with the activity into every copy;
/// an activity without it shows `[]`.
async fn to_is_kept_in_order_and_served_everywhere(server: &Server) {
    let api = Api::new(server);
    let (actor, fan, a, b) = (unique("actor"), unique("fan"), unique("a"), unique("b"));
    api.follow(&fan, &actor).await;
    let hundred: Vec<String> = (0..100).map(|i| format!("{a}_{i}")).collect();
    let mut with_repeats = hundred.clone();
    with_repeats.extend(hundred.iter().take(10).cloned());
    let full = api
        .post(
            &actor,
            json!({"actor": actor, "object": "o1", "to": with_repeats}),
        )
        .await;
    assert_eq!(
        full.status,
        StatusCode::CREATED,
        "100 distinct users: {}",
        full.body
    );
    assert_eq!(
        full.body["to"],
        json!(hundred),
        "repeats dropped, order kept"
    );
    let posted = api
        .post(
            &actor,
            json!({"actor": actor, "object": "o2", "to": [b, a, b, actor]}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    assert_eq!(posted.body["to"], json!([b, a, actor]));
    let plain = api
        .post(&actor, json!({"actor": actor, "object": "o3"}))
        .await;
    assert_eq!(plain.body["to"], json!([]), "absent: []");
    let nulled = api
        .post(&actor, json!({"actor": actor, "object": "o4", "to": null}))
        .await;
    assert_eq!(nulled.body["to"], json!([]), "null: []");
    eventually("delivered", FANOUT, || async {
        api.flat_ids(&fan).await.len() == 4
    })
    .await;
    let by_object = |list: &Value| -> Vec<(String, Value)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|x| (x["object"].as_str().unwrap().to_owned(), x["to"].clone()))
            .collect()
    };
    let expected = vec![
        ("o4".to_owned(), json!([])),
        ("o3".to_owned(), json!([])),
        ("o2".to_owned(), json!([b, a, actor])),
        ("o1".to_owned(), json!(hundred)),
    ];
    let flat = api.get("/feeds/flat?limit=10", &token(&fan)).await;
    assert_eq!(by_object(&flat.body["results"]), expected, "flat feed");
    let mine = api
        .get(&format!("/feeds/user/{actor}?limit=10"), &token(&fan))
        .await;
    assert_eq!(by_object(&mine.body["results"]), expected, "user feed");
    let grouped = api.get("/feeds/aggregated?limit=10", &token(&fan)).await;
    let groups = grouped.body["results"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{}", grouped.body);
    assert_eq!(
        by_object(&groups[0]["activities"]),
        expected,
        "aggregated feed"
    );
}

/// A batch: every edge checked and authorized before any is written, answered in order, each new
/// edge backfilled.
async fn batch_follow_is_all_or_nothing(server: &Server) {
    let api = Api::new(server);
    let (me, a, b, other) = (unique("me"), unique("a"), unique("b"), unique("other"));
    api.post(&a, json!({"actor": a, "object": "oa"})).await;
    api.post(&b, json!({"actor": b, "object": "ob"})).await;
    assert_eq!(api.follow(&me, &a).await.status, StatusCode::CREATED);
    let mine = token(&me);
    let batch = |follows: Value| {
        api.send(
            Method::POST,
            "/follow/batch",
            Some(&mine),
            Some(json!({ "follows": follows })),
        )
    };
    let refused = [
        (
            json!([{"follower": me, "following": b}, {"follower": me, "following": me}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"follower": me, "following": b}, {"follower": me, "following": "a/b"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"follower": me, "following": b}, {"follower": me}]),
            StatusCode::BAD_REQUEST,
        ),
        (json!([]), StatusCode::BAD_REQUEST),
        (
            json!((0..101)
                .map(|i| json!({"follower": me, "following": format!("u{i}")}))
                .collect::<Vec<_>>()),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"follower": me, "following": b}, {"follower": other, "following": b}]),
            StatusCode::FORBIDDEN,
        ),
        // Validity before authorization: a bad edge anywhere is 400 even beside another's edge.
        (
            json!([{"follower": other, "following": b}, {"follower": me, "following": me}]),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (follows, status) in refused {
        let answer = batch(follows.clone()).await;
        assert_eq!(answer.status, status, "{follows}: {}", answer.body);
    }
    until_drained(server.queue(), FANOUT).await;
    assert_eq!(
        api.following(&me).await,
        std::slice::from_ref(&a),
        "nothing was written"
    );

    let answer = batch(json!([
        {"follower": me, "following": b},
        {"follower": me, "following": a},
        {"follower": me, "following": b},
    ]))
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().unwrap();
    let summary: Vec<(&str, bool)> = results
        .iter()
        .map(|r| {
            (
                r["following"].as_str().unwrap(),
                r["created"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(b.as_str(), true), (a.as_str(), false), (b.as_str(), false)]
    );
    assert_eq!(results[0]["created_at"], results[2]["created_at"]);
    assert!(results.iter().all(|r| r["follower"] == json!(me)));
    let mut following = api.following(&me).await;
    following.sort();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort();
    assert_eq!(following, expected);
    eventually("the new edge is backfilled", FANOUT, || async {
        api.flat_ids(&me).await.len() == 2
    })
    .await;
}

async fn counts_of(api: &Api, user: &str, reader: &str) -> (u64, u64, u64) {
    let answer = api.get(&format!("/users/{user}"), &token(reader)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["user"], json!(user));
    let n = |k: &str| answer.body[k].as_u64().unwrap();
    (n("followers"), n("following"), n("activities"))
}

/// `GET /users/{user}`: exact once the queue has drained, through retries of a follow, a delete,
/// and a follow and an unfollow of the same edge racing.
async fn user_counts_are_exact(server: &Server) {
    let api = Api::new(server);
    let (star, a, b, reader) = (unique("star"), unique("a"), unique("b"), unique("reader"));
    assert_eq!(
        counts_of(&api, &star, &reader).await,
        (0, 0, 0),
        "nobody yet"
    );
    for _ in 0..3 {
        api.follow(&a, &star).await;
    }
    api.follow(&b, &star).await;
    api.follow(&star, &a).await;
    let first = api
        .post(&star, json!({"actor": star, "object": "o1"}))
        .await;
    api.post(
        &star,
        json!({"actor": star, "object": "o2", "foreign_id": "f"}),
    )
    .await;
    api.post(
        &star,
        json!({"actor": star, "object": "o2", "foreign_id": "f"}),
    )
    .await;
    let id = first.body["id"].as_str().unwrap();
    let deleted = api.delete_activity(&star, id).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    until_drained(server.queue(), FANOUT).await;
    assert_eq!(counts_of(&api, &star, &reader).await, (2, 1, 1));
    assert_eq!(counts_of(&api, &a, &reader).await, (1, 1, 0));

    // Follows and unfollows of one edge at once: the count agrees with the edge left.
    let racer = unique("racer");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (api, racer, star) = (Api::new(server), racer.clone(), star.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                api.follow(&racer, &star).await.status
            } else {
                api.unfollow(&racer, &star).await.status
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_success());
    }
    until_drained(server.queue(), FANOUT).await;
    let edge = api.following(&racer).await.contains(&star) as u64;
    assert_eq!(counts_of(&api, &star, &reader).await.0, 2 + edge);
    assert_eq!(counts_of(&api, &racer, &reader).await.1, edge);
    let bad = api.get("/users/a%2Fb", &token(&reader)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

async fn health_answers_without_a_token(server: &Server) {
    let api = Api::new(server);
    let health = api.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body, json!({"status": "ok"}));
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded_default {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::embedded()).await }
            )*
        }
        mod cassandra_and_sqs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() { super::$scenario(super::cassandra().await).await }
            )*
        }
    };
}

on_both_backends!(
    health_answers_without_a_token,
    walkthrough_follow_post_read_aggregated,
    pagination_walk_returns_each_activity_once_newest_first,
    follow_backfills_and_unfollow_purges,
    delete_removes_activity_from_followers_feeds,
    repost_with_same_foreign_id_is_idempotent,
    bad_requests_are_refused_and_change_nothing,
    to_is_kept_in_order_and_served_everywhere,
    batch_follow_is_all_or_nothing,
    user_counts_are_exact,
);
