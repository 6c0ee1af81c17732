//! The Cassandra / ScyllaDB / Amazon Keyspaces store, through the `scylla` driver.
//!
//! Tables are in `etc/schema.cql`. Every statement is prepared once, in [`CassandraStore::new`],
//! with keyspace-qualified table names, so the session itself never needs a current keyspace.
//! All requests run at `LOCAL_QUORUM` (lightweight transactions at `LOCAL_SERIAL`), the levels
//! Amazon Keyspaces accepts for writes.

mod config;
mod errors;
mod migrate;
mod rows;
mod session;
pub mod sigv4;
mod store;
mod tally;
pub mod tls;

pub use config::CassandraConfig;
pub use migrate::{migrate, CLIENT_SIDE_TIMESTAMP_TABLES};
pub use session::connect;
pub use store::CassandraStore;
pub use tally::{StatementCount, Tally};
