//! Service-specific credentials (a user name and password, as Amazon Keyspaces issues them for an
//! IAM user) against a real node with `PasswordAuthenticator` and `CassandraAuthorizer` on: the
//! second local node of `scripts/cassandra-auth.sh` (127.0.0.2:9042, superuser cassandra/cassandra;
//! `FEEDS_CASSANDRA_AUTH_NODES` points elsewhere).

use std::sync::Arc;

use feeds::model::FollowEdge;
use feeds::store::cassandra::{self, CassandraConfig, CassandraStore};
use feeds::store::Store;
use scylla::client::session::Session;

const KEYSPACE: &str = "feeds_password_test";

fn config(username: Option<&str>, password: Option<&str>) -> CassandraConfig {
    let nodes = std::env::var("FEEDS_CASSANDRA_AUTH_NODES").unwrap_or("127.0.0.2:9042".into());
    CassandraConfig {
        nodes: vec![nodes],
        keyspace: KEYSPACE.into(),
        username: username.map(str::to_owned),
        password: password.map(str::to_owned),
        ..CassandraConfig::default()
    }
}

async fn superuser() -> Session {
    cassandra::connect(&config(Some("cassandra"), Some("cassandra")))
        .await
        .expect("the node with PasswordAuthenticator (scripts/cassandra-auth.sh start)")
}

/// A login role with a password and exactly `grants` (CQL `GRANT … TO <role>` tails).
async fn role(admin: &Session, name: &str, password: &str, grants: &[&str]) {
    admin
        .query_unpaged(format!("DROP ROLE IF EXISTS {name}"), ())
        .await
        .unwrap();
    admin
        .query_unpaged(
            format!("CREATE ROLE {name} WITH PASSWORD = '{password}' AND LOGIN = true"),
            (),
        )
        .await
        .unwrap();
    for grant in grants {
        admin
            .query_unpaged(format!("GRANT {grant} TO {name}"), ())
            .await
            .unwrap();
    }
}

fn edge(follower: &str, following: &str) -> FollowEdge {
    FollowEdge {
        follower: follower.into(),
        following: following.into(),
        created_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_credentials_log_in_and_the_store_works_within_the_roles_grants() {
    let admin = superuser().await;
    admin
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {KEYSPACE}"), ())
        .await
        .unwrap();
    // The migrate command's role creates the keyspace (and so owns it); the functions' role may
    // only read and write its tables.
    role(
        &admin,
        "feeds_migrate",
        "migrate-secret",
        &["CREATE ON ALL KEYSPACES"],
    )
    .await;
    let cfg = config(Some("feeds_migrate"), Some("migrate-secret"));
    let session = cassandra::connect(&cfg)
        .await
        .expect("feeds_migrate logs in");
    cassandra::migrate(&session, &cfg)
        .await
        .expect("feeds_migrate creates the schema");
    role(
        &admin,
        "feeds_app",
        "app-secret",
        &[
            &format!("SELECT ON KEYSPACE {KEYSPACE}"),
            &format!("MODIFY ON KEYSPACE {KEYSPACE}"),
        ],
    )
    .await;
    role(
        &admin,
        "feeds_reader",
        "reader-secret",
        &[&format!("SELECT ON KEYSPACE {KEYSPACE}")],
    )
    .await;

    let cfg = config(Some("feeds_app"), Some("app-secret"));
    let session = cassandra::connect(&cfg).await.expect("feeds_app logs in");
    let store = CassandraStore::new(Arc::new(session), &cfg)
        .await
        .expect("feeds_app prepares the store's statements");
    let (_, created) = store.follow(&edge("usr_a", "usr_b")).await.unwrap();
    assert!(created);
    assert!(store.is_following("usr_a", "usr_b").await.unwrap());
    let followers = store.followers("usr_b", None, 10).await.unwrap();
    assert_eq!(followers.len(), 1);
    assert_eq!(followers[0].user, "usr_a");

    // A role that may only read: reads work, a write is refused and changes nothing.
    let cfg = config(Some("feeds_reader"), Some("reader-secret"));
    let session = cassandra::connect(&cfg)
        .await
        .expect("feeds_reader logs in");
    let reader = CassandraStore::new(Arc::new(session), &cfg).await.unwrap();
    assert!(reader.is_following("usr_a", "usr_b").await.unwrap());
    let err = reader
        .follow(&edge("usr_c", "usr_b"))
        .await
        .expect_err("feeds_reader has no MODIFY permission");
    let text = err.to_string();
    assert!(
        text.contains("MODIFY"),
        "the error names the permission: {text}"
    );
    assert!(!store.is_following("usr_c", "usr_b").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_with_an_error_that_says_so() {
    let _ = superuser().await;
    let err = cassandra::connect(&config(Some("cassandra"), Some("not-the-password")))
        .await
        .expect_err("a wrong password is refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("127.0.0.2:9042") || text.contains("connect to"),
        "{text}"
    );
    assert!(
        text.contains("password") || text.contains("authentication"),
        "the error says the login failed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_is_refused_with_an_error_that_says_so() {
    let _ = superuser().await;
    let err = cassandra::connect(&config(None, None))
        .await
        .expect_err("a node with PasswordAuthenticator refuses an anonymous client");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("authenticat"),
        "the error says the node wants credentials: {text}"
    );
}
