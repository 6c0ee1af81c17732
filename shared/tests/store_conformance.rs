//! The store conformance suite (`feeds_testkit::conformance`) on both stores: SQLite in memory,
//! and Cassandra in a fresh keyspace of its own (`FEEDS_CASSANDRA_NODES`; `scripts/test.sh` starts
//! the node), dropped afterwards when the node allows.

use std::sync::Arc;

use feeds::store::cassandra::{connect, migrate, CassandraConfig, CassandraStore};
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds_testkit::{conformance, unique};

#[tokio::test]
async fn sqlite_store_passes_the_conformance_suite() {
    let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
    conformance::run(&store).await;
}

#[tokio::test]
async fn cassandra_store_passes_the_conformance_suite() {
    let mut cfg = CassandraConfig::read(&feeds::settings::Env::process())
        .expect("FEEDS_CASSANDRA_* variables");
    cfg.keyspace = unique("feeds_conformance");
    let session = match connect(&cfg).await {
        Ok(session) => Arc::new(session),
        Err(e) => panic!(
            "Cassandra is not reachable at {} ({e}).\nStart it with `scripts/cassandra.sh start` \
             (or point FEEDS_CASSANDRA_NODES at a running node).",
            cfg.nodes.join(",")
        ),
    };
    migrate(&session, &cfg).await.expect("migrate");
    migrate(&session, &cfg)
        .await
        .expect("migrate is idempotent");
    let store = CassandraStore::new(session.clone(), &cfg)
        .await
        .expect("prepare statements");
    conformance::run(&store).await;
    // Best effort: a schema change may time out on a node that other tests keep busy.
    let drop = format!("DROP KEYSPACE {}", cfg.keyspace);
    if let Err(e) = session.query_unpaged(drop, ()).await {
        eprintln!("could not drop keyspace {}: {e}", cfg.keyspace);
    }
}
