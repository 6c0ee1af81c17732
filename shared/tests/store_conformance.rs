//! The store conformance suite (`feeds_testkit::conformance`) on both stores: SQLite in memory,
//! and Cassandra in a fresh keyspace of its own (`FEEDS_CASSANDRA_NODES`; `scripts/test.sh` starts
//! the node), dropped afterwards when the node allows. That migrating twice changes nothing is
//! checked by the Cassandra store's own tests.

use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds_testkit::{conformance, services, unique};

#[tokio::test]
async fn sqlite_store_passes_the_conformance_suite() {
    let store = SqliteStore::new(SqliteDb::open(":memory:").unwrap());
    conformance::run(&store).await;
}

#[tokio::test]
async fn cassandra_store_passes_the_conformance_suite() {
    let keyspace = unique("feeds_conformance");
    let store = services::cassandra_store(&keyspace).await;
    conformance::run(store.as_ref()).await;
    // Best effort: a schema change may time out on a node that other tests keep busy.
    let drop = format!("DROP KEYSPACE {keyspace}");
    if let Err(e) = store.session().query_unpaged(drop, ()).await {
        eprintln!("could not drop keyspace {keyspace}: {e}");
    }
}
