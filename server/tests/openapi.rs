//! The OpenAPI document at the repository root (`openapi.json`) against the routes the server really
//! serves, in-process on the embedded default (SQLite in memory and its queue): every documented
//! operation is served, every other method of a documented path is `405`, other paths are `404`, and
//! real responses have the documented status and exactly the documented properties.

use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request};
use axum::Router;
use chrono::DateTime;
use feeds::fanout::Fanout;
use feeds::http::{router, Routes};
use feeds::queue::embedded::EmbeddedQueue;
use feeds_testkit::services::in_memory;
use feeds_testkit::tokens::{assert_dev_key, token};
use feeds_testkit::wait::drain_embedded;
use serde_json::{json, Value};
use tower::ServiceExt;

const DOCUMENT: &str = include_str!("../../openapi.json");

/// The methods checked against every documented path.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The documented paths, and the operations on them.
const PATHS: usize = 15;
const OPERATIONS: usize = 17;

/// An activity id of the shape the service assigns, which no test stores.
const UNKNOWN_ACTIVITY: &str = "000661675b3528007c4f9a1e2b8d3f60";

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(DOCUMENT).expect("openapi.json is not JSON"))
}

/// Follows `$ref`s (`#/...` pointers into the document) until a value that is not a reference.
fn resolve(mut value: &'static Value) -> &'static Value {
    for _ in 0..32 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{reference} points outside the document"));
                value = document()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"));
            }
            None => return value,
        }
    }
    panic!("a $ref chain in the document does not end")
}

/// Every documented (path template, method, operation).
fn operations() -> Vec<(&'static str, &'static str, &'static Value)> {
    let paths = document()["paths"]
        .as_object()
        .expect("the document has paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.as_str(), method, op));
            }
        }
    }
    out
}

/// The documented path template a concrete path matches, if any.
fn template_of(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()
        .expect("the document has paths")
        .keys()
        .map(String::as_str)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    if part.starts_with('{') && part.ends_with('}') {
                        !segment.is_empty()
                    } else {
                        part == segment
                    }
                })
        })
}

/// A path template with concrete, valid ids in place of its parameters.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|part| match part {
            "{id}" => UNKNOWN_ACTIVITY,
            "{follower}" => "usr_02",
            "{following}" | "{user}" => "usr_01",
            other if other.starts_with('{') => {
                panic!("no concrete value for {other} in {template}")
            }
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The JSON schema the document gives for `status` of `method template`: `Ok(None)` for a documented
/// response without a body, `Err` when the status is not documented.
fn response_schema(
    template: &str,
    method: &str,
    status: u16,
) -> Result<Option<&'static Value>, String> {
    let op = &document()["paths"][template][method];
    if !op.is_object() {
        return Err(format!(
            "{} {template} is not documented",
            method.to_uppercase()
        ));
    }
    let response = op["responses"]
        .get(status.to_string())
        .map(resolve)
        .ok_or_else(|| {
            format!(
                "{} {template} does not document status {status}",
                method.to_uppercase()
            )
        })?;
    Ok(response
        .get("content")
        .map(|content| &content["application/json"]["schema"]))
}

/// The schema of a reusable response in `components/responses`.
fn component_response_schema(name: &str) -> &'static Value {
    let response = &document()["components"]["responses"][name];
    assert!(
        response.is_object(),
        "components/responses/{name} is missing"
    );
    &response["content"]["application/json"]["schema"]
}

/// Checks `value` against `schema`: types, `nullable`, `enum`, `date-time` strings, and for objects
/// whose schema lists `properties`, exactly those properties (no more, no fewer), recursively.
fn conforms(value: &Value, schema: &'static Value, at: &str) -> Result<(), String> {
    let schema = resolve(schema);
    if value.is_null() {
        return if schema["nullable"] == json!(true) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema is not nullable"))
        };
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => return Err(format!("{at}: unknown schema type {other}")),
        };
        if !ok {
            return Err(format!("{at}: {value} is not of type {ty}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if schema["format"] == json!("date-time") {
        let text = value.as_str().unwrap_or_default();
        DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("{at}: {text:?} is not a date-time: {e}"))?;
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        let object = value
            .as_object()
            .ok_or_else(|| format!("{at}: {value} is not an object"))?;
        let got: BTreeSet<&str> = object.keys().map(String::as_str).collect();
        let listed: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        if got != listed {
            return Err(format!(
                "{at}: has properties {got:?}, the document lists {listed:?}"
            ));
        }
        for (name, property) in properties {
            conforms(&object[name], property, &format!("{at}.{name}"))?;
        }
    } else if let Some(values) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        for (name, item) in value.as_object().into_iter().flatten() {
            conforms(item, values, &format!("{at}.{name}"))?;
        }
    }
    if let Some(items) = schema.get("items") {
        for (i, item) in value.as_array().into_iter().flatten().enumerate() {
            conforms(item, items, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

struct Fixture {
    router: Router,
    queue: EmbeddedQueue,
    fanout: Fanout,
}

/// A JSON response: status, and the body parsed (`Null` when empty).
struct Answer {
    status: u16,
    body: Value,
}

async fn fixture() -> Fixture {
    assert_dev_key();
    let (backends, _, queue) = in_memory().await;
    let app = feeds_testkit::services::app(&backends);
    Fixture {
        router: router(app, Routes::All),
        queue,
        fanout: backends.fanout.clone(),
    }
}

impl Fixture {
    /// One request through the router; `authorization` is the whole header value.
    async fn raw(
        &self,
        method: &str,
        uri: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
            .uri(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            assert!(
                content_type.starts_with("application/json"),
                "{method} {uri} answered {status} with content type {content_type:?}"
            );
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{method} {uri} answered {status} with a body that is not JSON: {e}")
            })
        };
        Answer { status, body }
    }

    /// A request with a bearer token (or none) and a JSON body (or none).
    async fn call(
        &self,
        method: &str,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let authorization = bearer.map(|t| format!("Bearer {t}"));
        match body {
            Some(body) => {
                self.raw(
                    method,
                    uri,
                    authorization.as_deref(),
                    Some("application/json"),
                    serde_json::to_vec(&body).unwrap(),
                )
                .await
            }
            None => {
                self.raw(method, uri, authorization.as_deref(), None, Vec::new())
                    .await
            }
        }
    }

    /// Calls a documented operation, expects `status`, and checks that the document lists that status
    /// for the operation and that the body has exactly the documented shape. Answers the body.
    async fn expect(
        &self,
        method: &str,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let answer = self.call(method, uri, bearer, body).await;
        assert_eq!(
            answer.status, status,
            "{method} {uri}: unexpected status, body {}",
            answer.body
        );
        documented(method, uri, &answer);
        answer.body
    }
}

/// Asserts that `answer` is a documented response of `method uri` with the documented body.
fn documented(method: &str, uri: &str, answer: &Answer) {
    let path = uri.split('?').next().unwrap_or(uri);
    let template = template_of(path).unwrap_or_else(|| panic!("{path} is not documented"));
    let schema = response_schema(template, method, answer.status)
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}; body {}", answer.body));
    match schema {
        Some(schema) => conforms(&answer.body, schema, "body")
            .unwrap_or_else(|e| panic!("{method} {uri} ({}): {e}", answer.status)),
        None => assert_eq!(
            answer.body,
            Value::Null,
            "{method} {uri} ({}) is documented without a body",
            answer.status
        ),
    }
}

fn all_refs(value: &'static Value, out: &mut Vec<&'static str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(reference)) => out.push(reference),
                    _ => all_refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| all_refs(item, out)),
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_0_3_with_resolving_refs_and_declared_path_parameters() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(
        resolve(&doc["components"]["securitySchemes"]["bearerAuth"])["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    let mut refs = Vec::new();
    all_refs(doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap_or(reference);
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    let mut operation_ids = HashSet::new();
    for (template, method, op) in operations() {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            operation_ids.insert(id),
            "operationId {id:?} of {method} {template} is missing or repeated"
        );
        let declared: HashSet<&str> = doc["paths"][template]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().into_iter().flatten())
            .map(resolve)
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let in_template: HashSet<&str> = template
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(
            declared, in_template,
            "{method} {template}: declared path parameters"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_and_needs_a_token_except_health() {
    let f = fixture().await;
    let ops = operations();
    assert_eq!(ops.len(), OPERATIONS, "the API has seventeen operations");
    for (template, method, op) in ops {
        let uri = concrete(template);
        let body = op
            .get("requestBody")
            .map(|_| json!({"follower": "usr_02", "following": "usr_01"}));
        let answer = f.call(method, &uri, None, body).await;
        let public = op.get("security") == Some(&json!([]));
        let expected = if public { 200 } else { 401 };
        assert_eq!(
            answer.status, expected,
            "{method} {uri} without a token: body {}",
            answer.body
        );
        documented(method, &uri, &answer);
        if !public {
            assert_eq!(answer.body["error"]["code"], "missing_authorization");
        }
    }
}

#[tokio::test]
async fn methods_not_documented_for_a_path_answer_405_with_a_json_error() {
    let f = fixture().await;
    let schema = component_response_schema("MethodNotAllowed");
    let mut checked = 0;
    for (template, item) in document()["paths"].as_object().unwrap() {
        let uri = concrete(template);
        for method in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let answer = f.call(method, &uri, None, None).await;
            assert_eq!(
                answer.status, 405,
                "{method} {uri} is not documented: body {}",
                answer.body
            );
            conforms(&answer.body, schema, "body")
                .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
            assert_eq!(answer.body["error"]["code"], "method_not_allowed");
            checked += 1;
        }
    }
    assert_eq!(checked, PATHS * METHODS.len() - OPERATIONS);
}

#[tokio::test]
async fn undocumented_paths_answer_404_with_a_json_error() {
    let f = fixture().await;
    let schema = component_response_schema("NotFound");
    let paths = [
        "/",
        "/feeds",
        "/feeds/",
        "/feeds/flat/",
        "/feeds/flat/x",
        "/feeds/aggregated/x",
        "/feeds/user",
        "/feeds/user/usr_01/x",
        "/users",
        "/users/u/x",
        "/users/u/followers/x",
        "/users/u/friends",
        "/activities/a/b",
        "/follow/a",
        "/follow/a/b/c",
        "/feeds/notification/x",
        "/feeds/notification/seen/x",
        "/health/x",
        "/Health",
        "/openapi.json",
    ];
    for path in paths {
        assert_eq!(template_of(path), None, "{path} is documented");
        for method in ["get", "post", "delete"] {
            let answer = f.call(method, path, None, None).await;
            assert_eq!(answer.status, 404, "{method} {path}: body {}", answer.body);
            conforms(&answer.body, schema, "body")
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(answer.body["error"]["code"], "not_found");
        }
    }
}

#[tokio::test]
async fn follow_post_read_walkthrough_answers_documented_statuses_and_shapes() {
    let f = fixture().await;
    let reader = token("usr_02");
    let author = token("usr_01");
    let (reader, author) = (Some(reader.as_str()), Some(author.as_str()));

    let health = f.expect("get", "/health", None, None, 200).await;
    assert_eq!(health, json!({"status": "ok"}));

    let full = json!({
        "actor": "usr_01", "verb": "post", "object": "obj_50", "target": "usr_73",
        "time": "2026-11-29T10:00:00Z", "foreign_id": "post:123", "extra": {"text": "hello"}
    });
    let first = f
        .expect("post", "/activities", author, Some(full.clone()), 201)
        .await;
    assert_eq!(first["extra"], json!({"text": "hello"}));
    let mut retry = full.clone();
    retry["object"] = json!("obj_other");
    let again = f
        .expect("post", "/activities", author, Some(retry), 200)
        .await;
    assert_eq!(
        again, first,
        "a repeated foreign_id answers the first activity"
    );
    let minimal = f
        .expect(
            "post",
            "/activities",
            author,
            Some(json!({"actor": "usr_01", "object": "obj_51", "time": "2026-11-29T11:00:00Z"})),
            201,
        )
        .await;
    assert_eq!(
        (
            &minimal["verb"],
            &minimal["target"],
            &minimal["foreign_id"],
            &minimal["extra"]
        ),
        (&json!("post"), &Value::Null, &Value::Null, &Value::Null)
    );
    f.expect(
        "post",
        "/activities",
        author,
        Some(json!({"actor": "usr_01", "verb": "like", "object": "obj_52", "time": "2026-11-28T09:00:00Z"})),
        201,
    )
    .await;

    let edge = f
        .expect(
            "post",
            "/follow",
            reader,
            Some(json!({"follower": "usr_02", "following": "usr_01"})),
            201,
        )
        .await;
    let existing = f
        .expect(
            "post",
            "/follow",
            reader,
            Some(json!({"follower": "usr_02", "following": "usr_01"})),
            200,
        )
        .await;
    assert_eq!(existing, edge, "an existing edge keeps its created_at");
    drain_embedded(&f.queue, &f.fanout).await;

    let flat = f.expect("get", "/feeds/flat", reader, None, 200).await;
    assert_eq!(flat["results"].as_array().unwrap().len(), 3, "{flat}");
    assert_eq!(flat["next"], Value::Null);
    let page = f
        .expect("get", "/feeds/flat?limit=2", reader, None, 200)
        .await;
    let cursor = page["next"].as_str().expect("a next cursor").to_owned();
    let rest = f
        .expect(
            "get",
            &format!("/feeds/flat?limit=2&cursor={cursor}"),
            reader,
            None,
            200,
        )
        .await;
    assert_eq!(rest["results"].as_array().unwrap().len(), 1, "{rest}");

    let aggregated = f
        .expect("get", "/feeds/aggregated", reader, None, 200)
        .await;
    let groups: Vec<&str> = aggregated["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["post:2026-11-29", "like:2026-11-28"]);
    let page = f
        .expect("get", "/feeds/aggregated?limit=1", reader, None, 200)
        .await;
    assert!(page["next"].is_string(), "{page}");

    let own = f
        .expect("get", "/feeds/user/usr_01?limit=100", reader, None, 200)
        .await;
    assert_eq!(own["results"].as_array().unwrap().len(), 3, "{own}");
    let followers = f
        .expect("get", "/users/usr_01/followers", reader, None, 200)
        .await;
    assert_eq!(followers["results"][0]["user"], "usr_02");
    let following = f
        .expect("get", "/users/usr_02/following", reader, None, 200)
        .await;
    assert_eq!(following["results"][0]["user"], "usr_01");

    // The legacy `JWT` scheme reads the same feed.
    let legacy = format!("JWT {}", reader.unwrap());
    let answer = f
        .raw("get", "/feeds/flat", Some(&legacy), None, Vec::new())
        .await;
    assert_eq!(answer.status, 200);
    documented("get", "/feeds/flat", &answer);

    let id = first["id"].as_str().unwrap();
    let before = f.expect("get", "/feeds/flat", reader, None, 200).await;
    let patch = json!({"set": {"target": "usr_09", "extra.likes": 3}, "unset": ["extra.text"]});
    let updated = f
        .expect(
            "patch",
            &format!("/activities/{id}"),
            author,
            Some(patch),
            200,
        )
        .await;
    let mut expected = first.clone();
    expected["target"] = json!("usr_09");
    expected["extra"] = json!({"likes": 3});
    assert_eq!(updated, expected, "only target and extra change");
    let in_place = |page: &Value| -> Value {
        let mut results = page["results"].clone();
        for a in results.as_array_mut().unwrap() {
            if a["id"] == first["id"] {
                *a = updated.clone();
            }
        }
        results
    };
    // In the actor's own feed at once; in the follower's after the fan-out, where it was.
    let own = f
        .expect("get", "/feeds/user/usr_01?limit=100", reader, None, 200)
        .await;
    assert!(own["results"].as_array().unwrap().contains(&updated));
    drain_embedded(&f.queue, &f.fanout).await;
    let after = f.expect("get", "/feeds/flat", reader, None, 200).await;
    assert_eq!(after["results"], in_place(&before), "{before} then {after}");

    let unfollowed = f
        .expect("delete", "/follow/usr_02/usr_01", reader, None, 204)
        .await;
    assert_eq!(unfollowed, Value::Null);
    drain_embedded(&f.queue, &f.fanout).await;
    let flat = f.expect("get", "/feeds/flat", reader, None, 200).await;
    assert_eq!(flat, json!({"results": [], "next": null}));
    f.expect("delete", &format!("/activities/{id}"), author, None, 204)
        .await;
    drain_embedded(&f.queue, &f.fanout).await;
    let own = f
        .expect("get", "/feeds/user/usr_01", reader, None, 200)
        .await;
    let ids: Vec<&Value> = own["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["id"])
        .collect();
    assert_eq!(ids.len(), 2, "{own}");
    assert!(
        !ids.contains(&&first["id"]),
        "the deleted activity is gone: {own}"
    );
}

#[tokio::test]
async fn error_responses_have_the_documented_status_and_error_shape() {
    let f = fixture().await;
    let reader = token("usr_02");
    let author = token("usr_01");
    let (reader, author) = (Some(reader.as_str()), Some(author.as_str()));
    let posted = f
        .expect(
            "post",
            "/activities",
            author,
            Some(json!({"actor": "usr_01", "object": "obj_50"})),
            201,
        )
        .await;

    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "post",
            "/activities".into(),
            Some(json!({"actor": "usr_01", "object": "obj_50"})),
            403,
            "forbidden",
        ),
        (
            "post",
            "/activities".into(),
            Some(json!({"actor": "usr_02", "object": "obj_50", "colour": "red"})),
            400,
            "invalid_body",
        ),
        (
            "post",
            "/activities".into(),
            Some(json!({"actor": "usr_02", "object": "obj 50"})),
            400,
            "invalid_id",
        ),
        (
            "post",
            "/follow".into(),
            Some(json!({"follower": "usr_02", "following": "usr_02"})),
            400,
            "self_follow",
        ),
        (
            "post",
            "/follow".into(),
            Some(json!({"follower": "usr_01", "following": "usr_03"})),
            403,
            "forbidden",
        ),
        (
            "delete",
            "/follow/usr_01/usr_03".into(),
            None,
            403,
            "forbidden",
        ),
        (
            "delete",
            format!("/activities/{}", posted["id"].as_str().unwrap()),
            None,
            403,
            "forbidden",
        ),
        (
            "delete",
            format!("/activities/{UNKNOWN_ACTIVITY}"),
            None,
            404,
            "not_found",
        ),
        (
            "patch",
            format!("/activities/{}", posted["id"].as_str().unwrap()),
            Some(json!({"set": {"extra.likes": 1}})),
            403,
            "forbidden",
        ),
        (
            "patch",
            format!("/activities/{UNKNOWN_ACTIVITY}"),
            Some(json!({"set": {"extra.likes": 1}})),
            404,
            "not_found",
        ),
        (
            "patch",
            format!("/activities/{UNKNOWN_ACTIVITY}"),
            Some(json!({"set": {"verb": "like"}})),
            400,
            "invalid_patch",
        ),
        (
            "patch",
            format!("/activities/{UNKNOWN_ACTIVITY}"),
            Some(json!({"set": {"extra.likes": 1}, "colour": "red"})),
            400,
            "invalid_body",
        ),
        (
            "get",
            "/feeds/flat?limit=0".into(),
            None,
            400,
            "invalid_limit",
        ),
        (
            "get",
            "/feeds/aggregated?limit=101".into(),
            None,
            400,
            "invalid_limit",
        ),
        (
            "get",
            "/feeds/user/usr_01?cursor=altered".into(),
            None,
            400,
            "",
        ),
        (
            "get",
            "/users/usr%2001/followers".into(),
            None,
            400,
            "invalid_id",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let error = f.expect(method, &uri, reader, body, status).await;
        if !code.is_empty() {
            assert_eq!(error["error"]["code"], code, "{method} {uri}");
        }
    }

    let too_large = json!({"set": {"extra.big": "x".repeat(9 * 1024)}});
    let error = f
        .expect(
            "patch",
            &format!("/activities/{}", posted["id"].as_str().unwrap()),
            author,
            Some(too_large),
            400,
        )
        .await;
    assert_eq!(error["error"]["code"], "extra_too_large");

    let bearer = format!("Bearer {}", reader.unwrap());
    let answer = f
        .raw(
            "post",
            "/follow",
            Some(&bearer),
            Some("text/plain"),
            br#"{"follower": "usr_02", "following": "usr_01"}"#.to_vec(),
        )
        .await;
    assert_eq!(answer.status, 415, "{}", answer.body);
    documented("post", "/follow", &answer);
    let uri = format!("/activities/{}", posted["id"].as_str().unwrap());
    let answer = f
        .raw(
            "patch",
            &uri,
            Some(&bearer),
            Some("text/plain"),
            br#"{"set": {"extra.likes": 1}}"#.to_vec(),
        )
        .await;
    assert_eq!(answer.status, 415, "{}", answer.body);
    documented("patch", &uri, &answer);
    let oversized =
        json!({"actor": "usr_02", "object": "o", "extra": {"k": "x".repeat(70 * 1024)}});
    let answer = f
        .raw(
            "post",
            "/activities",
            Some(&bearer),
            Some("application/json"),
            serde_json::to_vec(&oversized).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    documented("post", "/activities", &answer);
    let answer = f
        .raw(
            "get",
            "/feeds/flat",
            Some("Bearer not-a-token"),
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    documented("get", "/feeds/flat", &answer);
}
