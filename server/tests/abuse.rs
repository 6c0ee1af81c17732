//! Hostile and malformed requests against the real server binary on the embedded default, over
//! HTTP: forged and broken tokens, every route as its owner, as another user, as a `feeds:admin`
//! service and without a token, bodies over the limit, wrong content types, deep and huge JSON,
//! bad updates, follow batches and notification marks, and bad cursors and limits. Each is answered
//! with the status docs/API.md gives, as a JSON error, and changes nothing: every feed, list and
//! count it could touch is read before and after.

use std::sync::OnceLock;
use std::time::Duration;

use feeds::cursor::CursorCodec;
use feeds_testkit::api::{answer, ids, Answer, Api};
use feeds_testkit::server::Server;
use feeds_testkit::snapshot::{assert_unchanged, snapshot};
use feeds_testkit::tokens::{admin_token, token};
use feeds_testkit::wait::{eventually, until_drained};
use feeds_testkit::{concurrently, unique};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server's cursor secret, so that the tests can make cursors that are correctly signed.
const CURSOR_SECRET: &str = "abuse test cursor secret";

/// The rate limits keep their defaults (600 writes and 3000 reads a minute per principal): each test
/// acts as users of its own and none comes near them, so every refusal here is for its own flaw.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::embedded(
            env!("CARGO_BIN_EXE_feeds-server"),
            "abuse",
            &[("FEEDS_CURSOR_SECRET", CURSOR_SECRET.into())],
        )
        .0
    })
}

fn api() -> Api {
    Api::new(server())
}

/// Users in a small world: `you` follows `me`, `me` follows `third`; `me` and `third` have posted
/// once each, `me`'s activity addressed to `you` and `third`'s to `me`, and the fan-out has run:
/// each of `me` and `you` has one unseen, unread notification group.
struct World {
    me: String,
    you: String,
    third: String,
    my_activity: String,
    third_activity: String,
}

impl World {
    async fn new(api: &Api, me: Option<&str>) -> World {
        let me = me.map(str::to_owned).unwrap_or_else(|| unique("me"));
        let (you, third) = (unique("you"), unique("third"));
        assert_eq!(api.follow(&you, &me).await.status, StatusCode::CREATED);
        assert_eq!(api.follow(&me, &third).await.status, StatusCode::CREATED);
        let mine = api
            .post(&me, json!({"actor": me, "object": "mine", "to": [you]}))
            .await;
        assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.body);
        let theirs = api
            .post(
                &third,
                json!({"actor": third, "object": "theirs", "to": [me]}),
            )
            .await;
        let (my_activity, third_activity) = (
            mine.body["id"].as_str().unwrap().to_owned(),
            theirs.body["id"].as_str().unwrap().to_owned(),
        );
        eventually(
            "the world's fan-out ran",
            Duration::from_secs(30),
            || async {
                api.flat_ids(&you).await == [my_activity.clone()]
                    && api.flat_ids(&me).await == [third_activity.clone()]
                    && notified(api, &you).await == [my_activity.clone()]
                    && notified(api, &me).await == [third_activity.clone()]
            },
        )
        .await;
        World {
            me,
            you,
            third,
            my_activity,
            third_activity,
        }
    }

    fn users(&self) -> Vec<&str> {
        vec![&self.me, &self.you, &self.third]
    }

    /// `PATCH /activities/{id}` of `me`'s activity.
    fn my_activity_path(&self) -> String {
        format!("/activities/{}", self.my_activity)
    }
}

/// The ids of the activities in `user`'s notification feed's first page, group by group.
async fn notified(api: &Api, user: &str) -> Vec<String> {
    let page = api.get("/feeds/notification?limit=100", &token(user)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| ids(g["activities"].as_array().unwrap()))
        .collect()
}

/// The method of the route at `path` that takes a body: `PATCH` for an activity, `POST` elsewhere.
fn body_method(path: &str) -> Method {
    if path.starts_with("/activities/") {
        Method::PATCH
    } else {
        Method::POST
    }
}

/// A valid body for every route that takes one, each acting for the world's `me` (`follow` is the
/// body of `POST /follow`).
fn valid_bodies(w: &World, follow: &Value) -> Vec<(String, Value)> {
    let mark = json!({"all": true});
    vec![
        ("/activities".into(), json!({"actor": w.me, "object": "o"})),
        ("/follow".into(), follow.clone()),
        ("/follow/batch".into(), json!({"follows": [follow]})),
        (w.my_activity_path(), json!({"set": {"extra.note": "n"}})),
        ("/feeds/notification/seen".into(), mark.clone()),
        ("/feeds/notification/read".into(), mark),
    ]
}

/// One request with full control of its headers.
struct Call {
    method: Method,
    path: String,
    authorization: Option<HeaderValue>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
}

impl Call {
    fn new(method: Method, path: impl Into<String>) -> Call {
        Call {
            method,
            path: path.into(),
            authorization: None,
            content_type: None,
            body: None,
        }
    }

    fn bearer(mut self, token: &str) -> Call {
        self.authorization = Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        self
    }

    fn auth(mut self, value: Option<HeaderValue>) -> Call {
        self.authorization = value;
        self
    }

    fn json(mut self, body: &Value) -> Call {
        self.content_type = Some("application/json");
        self.body = Some(body.to_string().into_bytes());
        self
    }

    fn raw(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Call {
        self.content_type = content_type;
        self.body = Some(body.into());
        self
    }

    async fn send(self, api: &Api) -> Answer {
        let mut req = api
            .http
            .request(self.method, format!("{}{}", api.base, self.path));
        if let Some(a) = self.authorization {
            req = req.header("authorization", a);
        }
        if let Some(ct) = self.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = self.body {
            req = req.body(b);
        }
        answer(req.send().await.expect("request")).await
    }
}

/// `{"error": {"code", "message"}}` with `status`.
fn assert_error(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: answered {}", answer.body);
    assert!(
        answer.body["error"]["code"].is_string() && answer.body["error"]["message"].is_string(),
        "{what}: not a JSON error: {}",
        answer.body
    );
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn far_future() -> i64 {
    4_102_444_800 // 2100-01-01T00:00:00Z
}

/// Tokens signed with the committed development key (ES256, `kid` `dev-1`), or for the HMAC case
/// with the development public key's PEM text as the HS256 secret, made once with a standard JWT
/// library; all expire in 2100. Their claims:
mod signed {
    /// `{"exp":4102444800,"iat":1795946400}`: no `sub`.
    pub const NO_SUB: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTc5NTk0NjQwMH0.hwuqbuvbEyrmpJE_RZOMY_X2tbYefztXi4dRu5mi0YUlNIAXT-cst2hdtNPHOUFlpig-k_i1yvvhU1rqdSZ4AQ";
    /// `{"sub":"","exp":4102444800}`.
    pub const EMPTY_SUB: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJzdWIiOiIiLCJleHAiOjQxMDI0NDQ4MDB9.n4hOGiitKlEhvE5qMytM_c41XRWk2JfcW-AA8N5NRR3pGms9LJKodMdCkI-20s6ofaLc_kQ-mWzhtU08T8p4bg";
    /// `{"sub":42,"exp":4102444800}`.
    pub const NUMERIC_SUB: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJzdWIiOjQyLCJleHAiOjQxMDI0NDQ4MDB9.DYReYbDHUHc5lK5klh3_a9IQvqZhMkt5ZKqk7vlvqrKxixstWHf6H4GxiqK51HY7obZ9CjBz6BKHd4nuOcmt7A";
    /// `{"sub":"usr_01"}`: no `exp`.
    pub const NO_EXP: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJzdWIiOiJ1c3JfMDEifQ.ergT2udTC3llaKHxYg8uG1OyVwq_y61RtS6ncY_Vm6qVbFVwKvf35q3CuO_uM1OmWmIwi4GwJGJe7Dn4hIMPNg";
    /// `{"sub":"usr_01","exp":"4102444800"}`: `exp` as a string.
    pub const STRING_EXP: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJzdWIiOiJ1c3JfMDEiLCJleHAiOiI0MTAyNDQ0ODAwIn0.yNq-K6RA1bhB4OIbN20trCwBDMOJMY9wIzFBQndjCl12gDBlZ59pVyjj8AuD53ZO4PrcPhWtFQk8Uqn7xYj5Hg";
    /// `{"sub":"usr_01","exp":4102444800,"nbf":4102441200}`: not valid before 2099-12-31T23:00Z.
    pub const NOT_YET_VALID: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRldi0xIn0.eyJzdWIiOiJ1c3JfMDEiLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6NDEwMjQ0MTIwMH0.xE-DP0vX8S_AVEkP6APcMO9HYXDeyb5mofzq9_nF7reeVUzlt5cnIXi_nrfgpd6s9FsuY6woUsnIYA18oF_Fog";
    /// `{"alg":"HS256"}` `{"sub":"usr_01","exp":4102444800}`, HMAC keyed with the public key's PEM.
    pub const HS256_PUBLIC_KEY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c3JfMDEiLCJleHAiOjQxMDI0NDQ4MDB9.G88KdJ4gY2KJrHTrqJILylIJy8vaga65z10J_kGSewU";
}

/// A P-256 key that the server does not trust (made for this test only).
const UNTRUSTED_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiUsDBCeT5ClrVL94
zrsqnMxxhdi70anlBhOecRU3OCKhRANCAATI+QjjYSkM0eSydGzIJOAmPOlHati4
g5t9qcx2vymq6lcwd+rvzwj3Sk58G13uLBhMVrHfZBLhLeBtc0J7SjZl
-----END PRIVATE KEY-----
";

/// The signed tokens above act for `usr_01`: this test owns that user on its server.
const SIGNED_SUB: &str = "usr_01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_tokens_are_401_on_every_route_and_change_nothing() {
    let api = api();
    let w = World::new(&api, Some(SIGNED_SUB)).await;
    let me = w.me.clone();
    let valid = token(&me);
    let (header, rest) = valid.split_once('.').unwrap();
    let (claims, signature) = rest.split_once('.').unwrap();
    let claims_json = json!({"sub": me, "exp": far_future()}).to_string();
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64url(claims_json.as_bytes())
        )
    };
    let with_header =
        |h: Value| format!("{}.{claims}.{signature}", b64url(h.to_string().as_bytes()));
    let mut bad_signature = signature.to_owned().into_bytes();
    bad_signature[10] = if bad_signature[10] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let bad_signature = format!(
        "{header}.{claims}.{}",
        String::from_utf8(bad_signature).unwrap()
    );
    let expired = feeds::auth::mint_token(
        feeds::auth::DEV_PRIVATE_KEY_PEM,
        &me,
        &[],
        chrono::Utc::now() - chrono::Duration::minutes(10),
        None,
        None,
    )
    .unwrap();
    let wrong_key = feeds::auth::mint_token(
        UNTRUSTED_KEY_PEM,
        &me,
        &["feeds:admin"],
        chrono::Utc::now() + chrono::Duration::hours(1),
        None,
        None,
    )
    .unwrap();
    let bearer = |t: &str| Some(HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
    let cases: Vec<(&str, Option<HeaderValue>, &str)> = vec![
        ("no Authorization header", None, "missing_authorization"),
        (
            "empty header",
            Some(HeaderValue::from_static("")),
            "missing_authorization",
        ),
        (
            "Basic scheme",
            Some(HeaderValue::from_static("Basic dXNyXzAxOnB3")),
            "unsupported_auth_scheme",
        ),
        (
            "bare token without scheme",
            Some(HeaderValue::from_str(&valid).unwrap()),
            "unsupported_auth_scheme",
        ),
        (
            "Bearer without token",
            Some(HeaderValue::from_static("Bearer ")),
            "malformed_token",
        ),
        (
            "header bytes that are not text",
            Some(HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap()),
            "unsupported_auth_scheme",
        ),
        (
            "alg none",
            bearer(&unsigned("none")),
            "disallowed_algorithm",
        ),
        (
            "alg None",
            bearer(&unsigned("None")),
            "disallowed_algorithm",
        ),
        (
            "alg none with the real signature",
            bearer(&format!("{}{signature}", unsigned("none"))),
            "disallowed_algorithm",
        ),
        (
            "HS256 keyed with the public key",
            bearer(signed::HS256_PUBLIC_KEY),
            "disallowed_algorithm",
        ),
        (
            "HS256 header on an ES256 signature",
            bearer(&with_header(json!({"alg": "HS256", "kid": "dev-1"}))),
            "disallowed_algorithm",
        ),
        (
            "ES384 header on an ES256 signature",
            bearer(&with_header(json!({"alg": "ES384", "kid": "dev-1"}))),
            "unknown_key",
        ),
        (
            "RS256 header on an ES256 signature",
            bearer(&with_header(json!({"alg": "RS256", "kid": "dev-1"}))),
            "unknown_key",
        ),
        (
            "another kid",
            bearer(&with_header(json!({"alg": "ES256", "kid": "attacker"}))),
            "invalid_signature",
        ),
        ("expired", bearer(&expired), "token_expired"),
        (
            "signed by another key",
            bearer(&wrong_key),
            "invalid_signature",
        ),
        (
            "altered signature",
            bearer(&bad_signature),
            "invalid_signature",
        ),
        (
            "altered claims",
            bearer(&format!(
                "{header}.{}.{signature}",
                b64url(
                    json!({"sub": "svc", "exp": far_future(), "scope": "feeds:admin"})
                        .to_string()
                        .as_bytes()
                )
            )),
            "invalid_signature",
        ),
        (
            "signature cut to 48 bytes",
            bearer(&format!("{header}.{claims}.{}", &signature[..64])),
            "invalid_signature",
        ),
        ("no sub", bearer(signed::NO_SUB), "missing_claim"),
        ("empty sub", bearer(signed::EMPTY_SUB), "invalid_claim"),
        ("numeric sub", bearer(signed::NUMERIC_SUB), "missing_claim"),
        ("no exp", bearer(signed::NO_EXP), "missing_claim"),
        (
            "exp as a string",
            bearer(signed::STRING_EXP),
            "missing_claim",
        ),
        (
            "nbf in the future",
            bearer(signed::NOT_YET_VALID),
            "token_not_yet_valid",
        ),
        ("two segments", bearer("abc.def"), "malformed_token"),
        (
            "four segments",
            bearer(&format!("{valid}.x")),
            "malformed_token",
        ),
        ("not base64", bearer("%%%.%%%.%%%"), "malformed_token"),
        (
            "header not JSON",
            bearer(&format!("{}.{claims}.{signature}", b64url(b"alg=ES256"))),
            "malformed_token",
        ),
        (
            "a token of 9 KiB",
            bearer(&format!("{header}.{}.{signature}", "A".repeat(9 * 1024))),
            "malformed_token",
        ),
        (
            "legacy JWT scheme with a forged token",
            Some(HeaderValue::from_str(&format!("JWT {}", unsigned("none"))).unwrap()),
            "disallowed_algorithm",
        ),
    ];

    let users = w.users();
    let before = snapshot(&api, server().queue(), &users).await;
    for (name, authorization, code) in &cases {
        let calls = vec![
            Call::new(Method::POST, "/activities").json(&json!({"actor": me, "object": "forged"})),
            Call::new(Method::POST, "/follow")
                .json(&json!({"follower": me, "following": "victim"})),
            Call::new(Method::DELETE, format!("/follow/{me}/{}", w.third)),
            Call::new(Method::DELETE, format!("/activities/{}", w.my_activity)),
            Call::new(Method::GET, "/feeds/flat"),
            Call::new(Method::GET, "/feeds/aggregated"),
            Call::new(Method::GET, format!("/feeds/user/{me}")),
            Call::new(Method::GET, format!("/users/{me}/followers")),
            Call::new(Method::GET, format!("/users/{me}/following")),
            Call::new(Method::POST, "/follow/batch")
                .json(&json!({"follows": [{"follower": me, "following": "victim"}]})),
            Call::new(Method::PATCH, w.my_activity_path())
                .json(&json!({"set": {"extra.forged": true}, "unset": ["target"]})),
            Call::new(Method::GET, "/feeds/notification"),
            Call::new(Method::POST, "/feeds/notification/seen").json(&json!({"all": true})),
            Call::new(Method::POST, "/feeds/notification/read").json(&json!({"all": true})),
            Call::new(Method::GET, format!("/users/{me}")),
            Call::new(Method::DELETE, format!("/users/{me}")),
        ];
        for call in calls {
            let what = format!("{name}: {} {}", call.method, call.path);
            let answer = call.auth(authorization.clone()).send(&api).await;
            assert_error(&answer, StatusCode::UNAUTHORIZED, &what);
            assert_eq!(answer.body["error"]["code"], json!(code), "{what}");
        }
    }
    assert_unchanged(
        &api,
        server().queue(),
        &users,
        &before,
        "a request with a bad token",
    )
    .await;
    // The valid token still works: the cases failed for their flaw, not for the user.
    assert_eq!(api.get("/feeds/flat", &valid).await.status, StatusCode::OK);
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Owner,
    Other,
    Admin,
    Nobody,
}

/// The routes of docs/API.md, each acting on or for the world's `me`.
#[derive(Debug, Clone, Copy)]
enum Route {
    Follow,
    Unfollow,
    Post,
    Delete,
    FlatFeed,
    AggregatedFeed,
    UserFeed,
    Followers,
    Following,
    Health,
    FollowBatch,
    Update,
    NotificationFeed,
    MarkSeen,
    MarkRead,
    UserCounts,
    Erase,
}

impl Route {
    const ALL: [Route; 17] = [
        Route::Follow,
        Route::Unfollow,
        Route::Post,
        Route::Delete,
        Route::FlatFeed,
        Route::AggregatedFeed,
        Route::UserFeed,
        Route::Followers,
        Route::Following,
        Route::Health,
        Route::FollowBatch,
        Route::Update,
        Route::NotificationFeed,
        Route::MarkSeen,
        Route::MarkRead,
        Route::UserCounts,
        Route::Erase,
    ];

    fn call(self, w: &World) -> Call {
        let me = &w.me;
        match self {
            Route::Follow => Call::new(Method::POST, "/follow")
                .json(&json!({"follower": me, "following": unique("newcomer")})),
            Route::Unfollow => Call::new(Method::DELETE, format!("/follow/{me}/{}", w.third)),
            Route::Post => {
                Call::new(Method::POST, "/activities").json(&json!({"actor": me, "object": "o"}))
            }
            Route::Delete => Call::new(Method::DELETE, format!("/activities/{}", w.my_activity)),
            Route::FlatFeed => Call::new(Method::GET, "/feeds/flat"),
            Route::AggregatedFeed => Call::new(Method::GET, "/feeds/aggregated"),
            Route::UserFeed => Call::new(Method::GET, format!("/feeds/user/{me}")),
            Route::Followers => Call::new(Method::GET, format!("/users/{me}/followers")),
            Route::Following => Call::new(Method::GET, format!("/users/{me}/following")),
            Route::Health => Call::new(Method::GET, "/health"),
            // A new edge and one that exists.
            Route::FollowBatch => Call::new(Method::POST, "/follow/batch").json(&json!({
                "follows": [
                    {"follower": me, "following": unique("newcomer")},
                    {"follower": me, "following": w.third},
                ]
            })),
            Route::Update => Call::new(Method::PATCH, w.my_activity_path())
                .json(&json!({"set": {"extra.note": "changed"}})),
            Route::NotificationFeed => Call::new(Method::GET, "/feeds/notification"),
            Route::MarkSeen => {
                Call::new(Method::POST, "/feeds/notification/seen").json(&json!({"all": true}))
            }
            Route::MarkRead => {
                Call::new(Method::POST, "/feeds/notification/read").json(&json!({"all": true}))
            }
            Route::UserCounts => Call::new(Method::GET, format!("/users/{me}")),
            Route::Erase => Call::new(Method::DELETE, format!("/users/{me}")),
        }
    }

    /// Whether the route acts for the user it names (the follower, the actor), which only that
    /// user or `feeds:admin` may.
    fn acts_for_me(self) -> bool {
        matches!(
            self,
            Route::Follow
                | Route::FollowBatch
                | Route::Unfollow
                | Route::Post
                | Route::Update
                | Route::Delete
                | Route::Erase
        )
    }

    /// docs/API.md: acting for someone else needs `feeds:admin`; reading user feeds, lists and
    /// counts is open to any authenticated principal; the flat, aggregated and notification feeds
    /// and the notification marks are the principal's own.
    fn expected(self, who: Who) -> StatusCode {
        match (self, who) {
            (Route::Health, _) => StatusCode::OK,
            (_, Who::Nobody) => StatusCode::UNAUTHORIZED,
            (_, Who::Other) if self.acts_for_me() => StatusCode::FORBIDDEN,
            (Route::Follow | Route::Post, _) => StatusCode::CREATED,
            (Route::Unfollow | Route::Delete, _) => StatusCode::NO_CONTENT,
            (Route::Erase, _) => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        }
    }

    /// Whether the call as `who` changes what the world's snapshot sees: the writes for `me`
    /// that are allowed, and `me`'s own marks; anything else (another principal's marks are
    /// on its own feed) changes nothing of the world.
    fn changes_world(self, who: Who) -> bool {
        match (self, who) {
            (Route::MarkSeen | Route::MarkRead, Who::Owner) => true,
            _ => self.acts_for_me() && self.expected(who).is_success(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_of_every_route_follows_the_contract() {
    let api = api();
    let mut cells = Vec::new();
    for route in Route::ALL {
        for who in [Who::Owner, Who::Other, Who::Admin, Who::Nobody] {
            cells.push((route, who));
        }
    }
    let results = concurrently(cells, 6, move |(route, who)| {
        let api = api.clone();
        async move {
            let w = World::new(&api, None).await;
            let intruder = unique("intruder");
            let mut users = w.users();
            users.push(&intruder);
            let before = snapshot(&api, server().queue(), &users).await;
            let call = route.call(&w);
            let call = match who {
                Who::Owner => call.bearer(&token(&w.me)),
                Who::Other => call.bearer(&token(&intruder)),
                Who::Admin => call.bearer(&admin_token()),
                Who::Nobody => call,
            };
            let what = format!("{route:?} as {who:?}");
            let answer = call.send(&api).await;
            let expected = route.expected(who);
            if expected.is_client_error() {
                assert_error(&answer, expected, &what);
            } else {
                assert_eq!(answer.status, expected, "{what}: {}", answer.body);
            }
            if !route.changes_world(who) {
                assert_unchanged(&api, server().queue(), &users, &before, &what).await;
            }
            // The flat, aggregated and notification feeds and their marks are always the
            // caller's own.
            let body = &answer.body;
            let results = &body["results"];
            match (route, who) {
                (Route::FlatFeed, Who::Owner) => {
                    assert_eq!(results[0]["id"], json!(w.third_activity), "{what}")
                }
                (Route::AggregatedFeed, Who::Owner) => assert_eq!(
                    results[0]["activities"][0]["id"],
                    json!(w.third_activity),
                    "{what}"
                ),
                (Route::FlatFeed | Route::AggregatedFeed, Who::Other | Who::Admin) => {
                    assert_eq!(results, &json!([]), "{what}: another user's feed")
                }
                (Route::UserFeed, Who::Owner | Who::Other | Who::Admin) => {
                    assert_eq!(results[0]["id"], json!(w.my_activity), "{what}")
                }
                (Route::Followers, Who::Owner | Who::Other | Who::Admin) => {
                    assert_eq!(results[0]["user"], json!(w.you), "{what}")
                }
                (Route::FollowBatch, Who::Owner | Who::Admin) => {
                    let edges: Vec<_> = results
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| (&r["follower"], &r["created"]))
                        .collect();
                    let (me, yes, no) = (json!(w.me), json!(true), json!(false));
                    assert_eq!(edges, [(&me, &yes), (&me, &no)], "{what}: {body}");
                    assert_eq!(results[1]["following"], json!(w.third), "{what}");
                }
                (Route::Update, Who::Owner | Who::Admin) => {
                    assert_eq!(body["id"], json!(w.my_activity), "{what}");
                    assert_eq!(body["actor"], json!(w.me), "{what}");
                    assert_eq!(body["extra"], json!({"note": "changed"}), "{what}");
                }
                (Route::NotificationFeed, Who::Owner) => {
                    assert_eq!(
                        results[0]["activities"][0]["id"],
                        json!(w.third_activity),
                        "{what}"
                    );
                    assert_eq!((&body["unseen"], &body["unread"]), (&json!(1), &json!(1)));
                }
                (Route::NotificationFeed, Who::Other | Who::Admin) => {
                    assert_eq!(results, &json!([]), "{what}: another user's feed")
                }
                (Route::Erase, Who::Owner | Who::Admin) => {
                    assert_eq!(body, &json!({"status": "accepted"}), "{what}");
                    until_drained(server().queue(), Duration::from_secs(60)).await;
                    let own = api
                        .get(&format!("/feeds/user/{}", w.me), &token(&w.you))
                        .await;
                    assert_eq!(own.body["results"], json!([]), "{what}: erased");
                    let gone = api
                        .get(&format!("/users/{}/followers", w.me), &token(&w.you))
                        .await;
                    assert_eq!(gone.body["results"], json!([]), "{what}: no edge left");
                }
                (Route::MarkSeen, Who::Owner) => {
                    assert_eq!(body, &json!({"unseen": 0, "unread": 1}), "{what}")
                }
                (Route::MarkRead, Who::Owner) => {
                    assert_eq!(body, &json!({"unseen": 0, "unread": 0}), "{what}")
                }
                (Route::MarkSeen | Route::MarkRead, Who::Other | Who::Admin) => {
                    assert_eq!(
                        body,
                        &json!({"unseen": 0, "unread": 0}),
                        "{what}: its own feed"
                    )
                }
                (Route::UserCounts, Who::Owner | Who::Other | Who::Admin) => assert_eq!(
                    body,
                    &json!({"user": w.me, "followers": 1, "following": 1, "activities": 1}),
                    "{what}"
                ),
                _ => {}
            }
            (route, who, answer.status)
        }
    })
    .await;
    eprintln!(
        "{} cells: {:?}",
        results.len(),
        results
            .iter()
            .map(|(r, w, s)| format!("{r:?}/{w:?}={}", s.as_u16()))
            .collect::<Vec<_>>()
    );

    // The order of the checks: authentication, then validity, then authorization (an update:
    // its body, the activity, authorization, then the size of the result); and `405` for a known
    // path with another method, `404` for unknown paths.
    let api = self::api();
    let w = World::new(&api, None).await;
    let intruder_name = unique("intruder");
    let intruder = token(&intruder_name);
    let mine = w.my_activity_path();
    let unknown = format!("/activities/{}", "0".repeat(32));
    let bad_patch = json!({"set": {"verb": "like"}});
    let big_patch = json!({"set": {"extra.big": "x".repeat(9 * 1024)}});
    let not_mine = json!({"actor": w.you, "object": "o"});
    let too_big = json!({"actor": w.you, "object": "o", "extra": {"k": "x".repeat(70_000)}});
    let checks: Vec<(&str, Call, StatusCode)> = vec![
        (
            "no token and an invalid body",
            Call::new(Method::POST, "/activities").raw(Some("application/json"), "{nope"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no token and a body over the limit",
            Call::new(Method::POST, "/activities").json(&too_big),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another user's invalid body",
            Call::new(Method::POST, "/activities")
                .bearer(&intruder)
                .json(&json!({"actor": w.you})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another user's body over the limit",
            Call::new(Method::POST, "/activities")
                .bearer(&intruder)
                .json(&too_big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "another user's text/plain body",
            Call::new(Method::POST, "/follow").bearer(&intruder).raw(
                Some("text/plain"),
                json!({"follower": w.me, "following": w.you}).to_string(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "another user's bad id in the path",
            Call::new(Method::DELETE, format!("/follow/{}/a%20b", w.me)).bearer(&intruder),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another user's valid body",
            Call::new(Method::POST, "/activities")
                .bearer(&intruder)
                .json(&not_mine),
            StatusCode::FORBIDDEN,
        ),
        (
            "no token and an invalid update",
            Call::new(Method::PATCH, &mine).raw(Some("application/json"), "{nope"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another user's invalid update of an unknown activity",
            Call::new(Method::PATCH, &unknown)
                .bearer(&intruder)
                .json(&bad_patch),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another user's invalid update",
            Call::new(Method::PATCH, &mine)
                .bearer(&intruder)
                .json(&bad_patch),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another user's update of an unknown activity",
            Call::new(Method::PATCH, &unknown)
                .bearer(&intruder)
                .json(&big_patch),
            StatusCode::NOT_FOUND,
        ),
        (
            "another user's update with a result over the extra limit",
            Call::new(Method::PATCH, &mine)
                .bearer(&intruder)
                .json(&big_patch),
            StatusCode::FORBIDDEN,
        ),
        (
            "an update of an activity id that is no id",
            Call::new(Method::PATCH, "/activities/..%2F..%2Fetc")
                .bearer(&token(&w.me))
                .json(&json!({"unset": ["target"]})),
            StatusCode::NOT_FOUND,
        ),
        (
            "another user's batch with one invalid edge",
            Call::new(Method::POST, "/follow/batch")
                .bearer(&intruder)
                .json(&json!({"follows": [
                    {"follower": w.me, "following": w.you},
                    {"follower": intruder_name, "following": "a b"},
                ]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another user's batch with one edge of its own",
            Call::new(Method::POST, "/follow/batch")
                .bearer(&intruder)
                .json(&json!({"follows": [
                    {"follower": intruder_name, "following": w.me},
                    {"follower": w.me, "following": w.you},
                ]})),
            StatusCode::FORBIDDEN,
        ),
        (
            "GET /activities",
            Call::new(Method::GET, "/activities").bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT /follow/{follower}/{following}",
            Call::new(Method::PUT, format!("/follow/{}/{}", w.me, w.third)).bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST /feeds/flat",
            Call::new(Method::POST, "/feeds/flat")
                .bearer(&token(&w.me))
                .json(&json!({})),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE /users/{user}/followers",
            Call::new(Method::DELETE, format!("/users/{}/followers", w.me)).bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT /activities/{id}",
            Call::new(Method::PUT, &mine)
                .bearer(&token(&w.me))
                .json(&json!({"actor": w.me, "object": "o"})),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PATCH /activities",
            Call::new(Method::PATCH, "/activities")
                .bearer(&token(&w.me))
                .json(&json!({"unset": ["target"]})),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET /follow/batch",
            Call::new(Method::GET, "/follow/batch").bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET /feeds/notification/seen",
            Call::new(Method::GET, "/feeds/notification/seen").bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE /feeds/notification",
            Call::new(Method::DELETE, "/feeds/notification").bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT /users/{user}",
            Call::new(Method::PUT, format!("/users/{}", w.me)).bearer(&token(&w.me)),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "an unknown path",
            Call::new(Method::GET, "/feeds/secret").bearer(&token(&w.me)),
            StatusCode::NOT_FOUND,
        ),
        (
            "an activity id that is no id",
            Call::new(Method::DELETE, "/activities/..%2F..%2Fetc").bearer(&token(&w.me)),
            StatusCode::NOT_FOUND,
        ),
    ];
    let mut users = w.users();
    users.push(&intruder_name);
    let before = snapshot(&api, server().queue(), &users).await;
    for (what, call, expected) in checks {
        let answer = call.send(&api).await;
        assert_error(&answer, expected, what);
    }
    assert_unchanged(&api, server().queue(), &users, &before, "a refused request").await;
}

/// Sends raw bytes over one connection and reads the answer's status and body; `None` when the
/// server closed the connection before answering.
async fn raw_http(request: Vec<u8>) -> Option<(u16, String)> {
    let addr = server().base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A refused POST (no token) whose body arrives after its headers still leaves its keep-alive
/// connection usable: the server reads the body before answering `401`, and the client's next
/// request on the same connection is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_post_leaves_its_keep_alive_connection_usable() {
    let addr = server().base.trim_start_matches("http://").to_owned();
    for path in ["/activities", "/follow"] {
        let body = br#"{"actor": "usr_01", "object": "obj_1"}"#;
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(body).await.unwrap();
        let first = read_one_response(&mut stream).await;
        assert!(first.starts_with("HTTP/1.1 401"), "{path}: {first}");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let second = read_one_response(&mut stream).await;
        assert!(
            second.starts_with("HTTP/1.1 200"),
            "{path}: the next request on the connection: {second:?}"
        );
    }
}

/// Reads one response (head and a Content-Length body) from a keep-alive connection; what was read
/// so far when the connection closes or stays silent for 10 s.
async fn read_one_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return text,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413_and_change_nothing() {
    let api = api();
    let w = World::new(&api, None).await;
    let mine = token(&w.me);
    let users = w.users();
    let before = snapshot(&api, server().queue(), &users).await;
    const LIMIT: usize = 64 * 1024;
    // Valid JSON padded with spaces to an exact size.
    let padded = |body: Value, size: usize| {
        let mut text = body.to_string().into_bytes();
        assert!(text.len() < size);
        text.resize(size, b' ');
        text
    };
    let follow = json!({"follower": w.me, "following": unique("big")});
    for (path, body) in valid_bodies(&w, &follow) {
        let method = body_method(&path);
        for size in [LIMIT + 1, 2 * LIMIT, 1024 * 1024] {
            let answer = Call::new(method.clone(), &path)
                .bearer(&mine)
                .raw(Some("application/json"), padded(body.clone(), size))
                .send(&api)
                .await;
            assert_error(
                &answer,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("{method} {path} {size} B"),
            );
        }
        // Without a Content-Length: chunked, 100 KiB.
        let chunk = padded(body.clone(), 100 * 1024);
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {mine}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
            chunk.len()
        )
        .into_bytes();
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
        let (status, body) = raw_http(request).await.expect("an answer");
        assert_eq!(status, 413, "{method} {path} chunked: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    assert_unchanged(
        &api,
        server().queue(),
        &users,
        &before,
        "a body over the limit",
    )
    .await;

    // At the limit exactly, a valid body is taken.
    let at_limit = Call::new(Method::POST, "/follow")
        .bearer(&mine)
        .raw(Some("application/json"), padded(follow.clone(), LIMIT))
        .send(&api)
        .await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_are_415_and_change_nothing() {
    let api = api();
    let w = World::new(&api, None).await;
    let mine = token(&w.me);
    let users = w.users();
    let before = snapshot(&api, server().queue(), &users).await;
    let post = json!({"actor": w.me, "object": "typed"}).to_string();
    let bodies = valid_bodies(&w, &json!({"follower": w.me, "following": unique("typed")}));
    let refused: [Option<&'static str>; 11] = [
        None,
        Some("text/plain"),
        Some("text/json"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("application/jsonp"),
        Some("application/json-patch"),
        Some("application/*"),
        Some("json"),
        Some(""),
    ];
    for content_type in refused {
        for (path, body) in &bodies {
            let answer = Call::new(body_method(path), path)
                .bearer(&mine)
                .raw(content_type, body.to_string())
                .send(&api)
                .await;
            assert_error(
                &answer,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("{path} as {content_type:?}"),
            );
        }
    }
    assert_unchanged(
        &api,
        server().queue(),
        &users,
        &before,
        "a body of another type",
    )
    .await;

    // JSON with parameters, in any case, or as a `+json` type, is JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/activity+json",
    ] {
        let answer = Call::new(Method::POST, "/activities")
            .bearer(&mine)
            .raw(Some(content_type), post.clone())
            .send(&api)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{content_type}");
    }
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_huge_and_broken_json_is_400_and_changes_nothing() {
    let api = api();
    let w = World::new(&api, None).await;
    let mine = token(&w.me);
    let me = &w.me;
    // An activity whose `extra` has room for 3 KiB more, to overflow by an update.
    let roomy = api
        .post(
            me,
            json!({"actor": me, "object": "roomy", "extra": {"text": "x".repeat(5 * 1024)}}),
        )
        .await;
    assert_eq!(roomy.status, StatusCode::CREATED, "{}", roomy.body);
    let roomy = format!("/activities/{}", roomy.body["id"].as_str().unwrap());
    let users = w.users();
    let before = snapshot(&api, server().queue(), &users).await;
    let group = api.get("/feeds/notification", &mine).await.body["results"][0]["id"].clone();
    assert!(group.is_string(), "`me` has a notification group");
    let updated = &w.my_activity_path();
    let many_keys: serde_json::Map<String, Value> =
        (0..2000).map(|i| (format!("k{i}"), json!(i))).collect();
    // Edges that would each be written, were their batch taken.
    let new_edges = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|_| json!({"follower": me, "following": unique("batched")}))
            .collect()
    };
    let batch = |follows: Vec<Value>| json!({"follows": follows}).to_string().into_bytes();
    let with = |mut follows: Vec<Value>, edge: Value| {
        follows.push(edge);
        batch(follows)
    };
    let mut cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "10,000 nested arrays",
            "/activities",
            nested_arrays(10_000).into_bytes(),
        ),
        (
            "10,000 nested arrays",
            "/follow",
            nested_arrays(10_000).into_bytes(),
        ),
        (
            "5,000 nested objects",
            "/activities",
            format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000)).into_bytes(),
        ),
        (
            "10,000 nested arrays in extra",
            "/activities",
            format!(
                r#"{{"actor":"{me}","object":"o","extra":{{"deep":{}}}}}"#,
                nested_arrays(10_000)
            )
            .into_bytes(),
        ),
        (
            "10,000 nested arrays as the follower",
            "/follow",
            format!(
                r#"{{"follower":{},"following":"x"}}"#,
                nested_arrays(10_000)
            )
            .into_bytes(),
        ),
        (
            "extra of 2,000 keys (over 8 KiB)",
            "/activities",
            json!({"actor": me, "object": "o", "extra": many_keys})
                .to_string()
                .into_bytes(),
        ),
        (
            "an object id of 60,000 characters",
            "/activities",
            json!({"actor": me, "object": "o".repeat(60_000)})
                .to_string()
                .into_bytes(),
        ),
        (
            "30,000 numbers",
            "/activities",
            serde_json::to_vec(&vec![1; 30_000]).unwrap(),
        ),
        (
            "a number out of range",
            "/activities",
            format!(r#"{{"actor":"{me}","object":"o","extra":{{"n":1e400}}}}"#).into_bytes(),
        ),
        (
            "a duplicated field",
            "/activities",
            format!(r#"{{"actor":"{me}","object":"o","object":"p"}}"#).into_bytes(),
        ),
        (
            "a NUL in an id",
            "/activities",
            format!(r#"{{"actor":"{me}","object":"o\u0000"}}"#).into_bytes(),
        ),
        (
            "invalid UTF-8",
            "/activities",
            [
                format!(r#"{{"actor":"{me}","object":""#).into_bytes(),
                vec![0xff, 0xfe],
                b"\"}".to_vec(),
            ]
            .concat(),
        ),
        (
            "a byte-order mark",
            "/activities",
            [
                vec![0xef, 0xbb, 0xbf],
                json!({"actor": me, "object": "o"}).to_string().into_bytes(),
            ]
            .concat(),
        ),
        (
            "trailing garbage",
            "/activities",
            format!(r#"{{"actor":"{me}","object":"o"}} and more"#).into_bytes(),
        ),
        ("an empty body", "/activities", Vec::new()),
        ("only spaces", "/follow", b"   ".to_vec()),
        ("null", "/follow", b"null".to_vec()),
        ("an array", "/follow", b"[]".to_vec()),
        // Serde reads an array of the fields in order as an object; the contract takes objects.
        (
            "the fields as an array",
            "/follow",
            json!([me, "usr_x"]).to_string().into_bytes(),
        ),
        (
            "an activity as an array",
            "/activities",
            json!([me, "post", "o1", null, null, null, [], null])
                .to_string()
                .into_bytes(),
        ),
        (
            "an edge of a batch as an array",
            "/follow/batch",
            json!({"follows": [[me, "usr_x"]]}).to_string().into_bytes(),
        ),
        (
            "a mark as an array",
            "/feeds/notification/read",
            json!([["g"]]).to_string().into_bytes(),
        ),
        ("a string", "/activities", b"\"post\"".to_vec()),
        (
            "an unterminated string",
            "/activities",
            format!(r#"{{"actor":"{me}","object":"o"#).into_bytes(),
        ),
        (
            "a time far out of range",
            "/activities",
            json!({"actor": me, "object": "o", "time": "+999999-01-01T00:00:00Z"})
                .to_string()
                .into_bytes(),
        ),
        (
            "a target of the wrong type",
            "/activities",
            json!({"actor": me, "object": "o", "target": ["x"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "10,000 nested arrays",
            updated,
            nested_arrays(10_000).into_bytes(),
        ),
        (
            "10,000 nested arrays as a key's value",
            updated,
            format!(r#"{{"set":{{"extra.deep":{}}}}}"#, nested_arrays(10_000)).into_bytes(),
        ),
        (
            "trailing garbage",
            updated,
            br#"{"unset":["target"]} and more"#.to_vec(),
        ),
        ("an empty body", updated, Vec::new()),
        ("an array", updated, b"[]".to_vec()),
        (
            "a duplicated field",
            updated,
            br#"{"unset":["target"],"unset":["extra"]}"#.to_vec(),
        ),
        ("an update of nothing", updated, b"{}".to_vec()),
        ("empty lists", updated, br#"{"set":{},"unset":[]}"#.to_vec()),
        (
            "an unknown top-level field",
            updated,
            json!({"set": {"extra.k": 1}, "actor": me})
                .to_string()
                .into_bytes(),
        ),
        (
            "`unset` as a string",
            updated,
            br#"{"unset":"target"}"#.to_vec(),
        ),
        (
            "`set` as a list",
            updated,
            br#"{"set":[["target","usr_9"]]}"#.to_vec(),
        ),
    ];
    for field in ["id", "actor", "verb", "object", "time", "foreign_id", "to"] {
        cases.push((
            "a field that cannot be set",
            updated,
            json!({"set": {field: w.you}}).to_string().into_bytes(),
        ));
        cases.push((
            "a field that cannot be unset",
            updated,
            json!({"unset": [field]}).to_string().into_bytes(),
        ));
    }
    for (what, patch) in [
        (
            "a name in both lists",
            json!({"set": {"target": w.you}, "unset": ["target"]}),
        ),
        (
            "a key of `extra` in both lists",
            json!({"set": {"extra.k": 1}, "unset": ["extra.k"]}),
        ),
        ("a name twice", json!({"unset": ["extra", "extra"]})),
        (
            "`extra` with one of its keys",
            json!({"set": {"extra": {}}, "unset": ["extra.k"]}),
        ),
        ("a target that is no id", json!({"set": {"target": "a b"}})),
        ("a target of null", json!({"set": {"target": null}})),
        ("`extra` set to a list", json!({"set": {"extra": [1]}})),
        ("a key of no bytes", json!({"set": {"extra.": 1}})),
        (
            "a key of 300 bytes",
            json!({"set": {format!("extra.{}", "k".repeat(300)): 1}}),
        ),
        (
            "a whole `extra` over 8 KiB",
            json!({"set": {"extra": {"text": "x".repeat(9 * 1024)}}}),
        ),
    ] {
        cases.push((what, updated, patch.to_string().into_bytes()));
    }
    // Each change is under the limit, the result over it.
    cases.push((
        "a resulting `extra` over 8 KiB",
        &roomy,
        json!({"set": {"extra.more": "y".repeat(3 * 1024 + 512)}})
            .to_string()
            .into_bytes(),
    ));
    cases.extend([
        ("no edges", "/follow/batch", batch(Vec::new())),
        ("101 edges", "/follow/batch", batch(new_edges(101))),
        (
            "a bad id after good edges",
            "/follow/batch",
            with(new_edges(3), json!({"follower": me, "following": "a b"})),
        ),
        (
            "a self-follow after good edges",
            "/follow/batch",
            with(new_edges(3), json!({"follower": me, "following": me})),
        ),
        (
            "an edge without `following` after good edges",
            "/follow/batch",
            with(new_edges(3), json!({"follower": me})),
        ),
        (
            "an edge with an unknown field after good edges",
            "/follow/batch",
            with(
                new_edges(3),
                json!({"follower": me, "following": unique("b"), "since": "2026-01-01T00:00:00Z"}),
            ),
        ),
        (
            "an edge of the wrong type after good edges",
            "/follow/batch",
            with(new_edges(3), json!(me)),
        ),
        (
            "`follows` as one edge",
            "/follow/batch",
            json!({"follows": {"follower": me, "following": unique("b")}})
                .to_string()
                .into_bytes(),
        ),
        (
            "an unknown top-level field",
            "/follow/batch",
            json!({"follows": new_edges(1), "dry_run": true})
                .to_string()
                .into_bytes(),
        ),
        ("null", "/follow/batch", b"null".to_vec()),
        (
            "10,000 nested arrays",
            "/follow/batch",
            nested_arrays(10_000).into_bytes(),
        ),
    ]);
    // Each mark names `me`'s unseen, unread group where it names any, so that a mark taken shows.
    let other_groups = |n: usize| (0..n).map(|i| json!(format!("post:o{i}:2026-11-30")));
    let marks = [
        ("no fields", json!({})),
        ("`groups` of null", json!({"groups": null})),
        ("`all` of null", json!({"all": null})),
        (
            "`groups` of null and all",
            json!({"groups": null, "all": true}),
        ),
        (
            "`all` of null and groups",
            json!({"groups": [group], "all": null}),
        ),
        (
            "both `groups` and `all`",
            json!({"groups": [group], "all": true}),
        ),
        ("`all` false", json!({"all": false})),
        ("no groups", json!({"groups": []})),
        (
            "101 group ids",
            json!({"groups": std::iter::once(group.clone()).chain(other_groups(100)).collect::<Vec<_>>()}),
        ),
        (
            "a group id of no characters",
            json!({"groups": [group, ""]}),
        ),
        (
            "a group id of 300 characters",
            json!({"groups": [group, "g".repeat(300)]}),
        ),
        ("`groups` as a string", json!({"groups": group})),
        ("`all` as a string", json!({"all": "true"})),
        ("an unknown field", json!({"all": true, "user": w.you})),
    ];
    for path in ["/feeds/notification/seen", "/feeds/notification/read"] {
        for (what, body) in &marks {
            cases.push((*what, path, body.to_string().into_bytes()));
        }
        cases.push((
            "10,000 nested arrays as the groups",
            path,
            format!(r#"{{"groups":{}}}"#, nested_arrays(10_000)).into_bytes(),
        ));
    }
    for (what, path, body) in cases {
        let answer = Call::new(body_method(path), path)
            .bearer(&mine)
            .raw(Some("application/json"), body)
            .send(&api)
            .await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            &format!("{what} to {path}"),
        );
    }
    assert_unchanged(&api, server().queue(), &users, &before, "broken JSON").await;
    let health = api.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "the server is still well");
    // The resulting `extra` was refused for its size: a smaller value is taken.
    let smaller = Call::new(Method::PATCH, &roomy)
        .bearer(&mine)
        .json(&json!({"set": {"extra.more": "y".repeat(1024)}}))
        .send(&api)
        .await;
    assert_eq!(smaller.status, StatusCode::OK, "{}", smaller.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_and_limits_are_400_and_change_nothing() {
    let api = api();
    let w = World::new(&api, None).await;
    // Enough rows for two pages of every list at `limit=1`; `extra`'s activities, addressed to
    // `me`, make two more notification groups.
    let extra = unique("extra");
    assert_eq!(api.follow(&extra, &w.me).await.status, StatusCode::CREATED);
    assert_eq!(api.follow(&w.me, &extra).await.status, StatusCode::CREATED);
    for i in 0..2 {
        let body = json!({"actor": w.me, "object": format!("p{i}"), "time": format!("2026-11-2{i}T10:00:00Z")});
        assert_eq!(api.post(&w.me, body).await.status, StatusCode::CREATED);
        let body = json!({"actor": extra, "object": format!("e{i}"), "time": format!("2026-11-2{i}T10:00:00Z"), "to": [w.me]});
        assert_eq!(api.post(&extra, body).await.status, StatusCode::CREATED);
    }
    let me = w.me.clone();
    let mine = token(&me);
    eventually(
        "the extra activities arrive",
        Duration::from_secs(30),
        || async { api.flat_ids(&me).await.len() == 3 },
    )
    .await;
    let mut users = w.users();
    users.push(&extra);
    let before = snapshot(&api, server().queue(), &users).await;

    let lists = [
        "/feeds/flat".to_owned(),
        "/feeds/aggregated".to_owned(),
        format!("/feeds/user/{me}"),
        format!("/users/{me}/followers"),
        format!("/users/{me}/following"),
        "/feeds/notification".to_owned(),
    ];
    let mut issued = Vec::new();
    for list in &lists {
        let page = api.get(&format!("{list}?limit=1"), &mine).await;
        assert_eq!(page.status, StatusCode::OK, "{list}");
        let next = page.body["next"]
            .as_str()
            .unwrap_or_else(|| panic!("{list} has a second page"))
            .to_owned();
        // The cursor works where it was issued.
        let second = api
            .get(&format!("{list}?limit=1&cursor={next}"), &mine)
            .await;
        assert_eq!(second.status, StatusCode::OK, "{list}");
        issued.push(next);
    }
    let codec = CursorCodec::new(CURSOR_SECRET.as_bytes());
    let other_user = codec.encode(&format!("flat:{}", w.you), "0000000000000001");
    for (i, list) in lists.iter().enumerate() {
        let cursor = &issued[i];
        let (payload, tag) = cursor.split_once('.').unwrap();
        let flip = |s: &str, at: usize| {
            let mut b = s.as_bytes().to_vec();
            b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        };
        let mut bad: Vec<(String, String)> = vec![
            ("garbage".into(), "garbage".into()),
            ("empty".into(), String::new()),
            ("a dot only".into(), ".".into()),
            (
                "payload altered".into(),
                format!("{}.{tag}", flip(payload, 2)),
            ),
            ("tag altered".into(), format!("{payload}.{}", flip(tag, 2))),
            (
                "tag cut short".into(),
                format!("{payload}.{}", &tag[..tag.len() - 2]),
            ),
            ("tag missing".into(), format!("{payload}.")),
            ("three parts".into(), format!("{cursor}.{tag}")),
            ("padded base64".into(), format!("{payload}%3D.{tag}")),
            ("a long cursor".into(), "A".repeat(4000)),
            ("non-ASCII".into(), "%C3%A9t%C3%A9.%F0%9F%98%80".into()),
            (
                "signed by another secret".into(),
                CursorCodec::new(b"another secret").encode(
                    &[
                        format!("flat:{me}"),
                        format!("aggregated:{me}"),
                        format!("user:{me}"),
                        format!("followers:{me}"),
                        format!("following:{me}"),
                        format!("notification:{me}"),
                    ][i],
                    "0000000000000001",
                ),
            ),
            ("another user's list".into(), other_user.clone()),
        ];
        for (j, other) in issued.iter().enumerate() {
            if j != i {
                bad.push((format!("the cursor of {}", lists[j]), other.clone()));
            }
        }
        if let Some(kind) = ["aggregated", "notification"]
            .into_iter()
            .find(|kind| *list == format!("/feeds/{kind}"))
        {
            // Correctly signed for this list, but no position a feed of groups issues.
            bad.push((
                "a signed position that does not parse".into(),
                codec.encode(&format!("{kind}:{me}"), "not a position"),
            ));
        }
        for (what, cursor) in bad {
            let answer = api.get(&format!("{list}?cursor={cursor}"), &mine).await;
            assert_error(&answer, StatusCode::BAD_REQUEST, &format!("{list}: {what}"));
        }
        for limit in [
            "0",
            "101",
            "-1",
            "1.5",
            "",
            "ten",
            "1e2",
            "99999999999999999999999",
            "5&limit=500",
        ] {
            let answer = api.get(&format!("{list}?limit={limit}"), &mine).await;
            assert_error(
                &answer,
                StatusCode::BAD_REQUEST,
                &format!("{list}: limit={limit}"),
            );
        }
    }
    assert_unchanged(
        &api,
        server().queue(),
        &users,
        &before,
        "a bad cursor or limit",
    )
    .await;
}
