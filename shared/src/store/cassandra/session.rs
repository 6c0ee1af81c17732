//! The session: built once with TLS and SigV4 as configured, replaced when its connections die.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::errors::{config_error, connection_lost, store_error};
use super::sigv4::SigV4AuthProvider;
use super::CassandraConfig;
use crate::store::StoreError;

/// Builds the one session a process uses: known nodes, optional plain-text credentials, no
/// schema metadata (a fast cold start; the store prepares its statements with qualified names),
/// short connect timeout, TCP and CQL keepalives, and a default profile of `LOCAL_QUORUM` /
/// `LOCAL_SERIAL` with the configured request timeout.
pub async fn connect(cfg: &CassandraConfig) -> Result<Session, StoreError> {
    if cfg.nodes.is_empty() {
        return Err(config_error("no Cassandra nodes are configured".to_owned()));
    }
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(cfg.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .connection_timeout(cfg.connect_timeout)
        .hostname_resolution_timeout(Some(cfg.connect_timeout))
        .fetch_schema_metadata(false)
        .fetch_full_schema_metadata(false)
        .tcp_nodelay(true)
        .tcp_keepalive_interval(Duration::from_secs(30))
        .keepalive_interval(Duration::from_secs(30))
        .keepalive_timeout(Duration::from_secs(10))
        .default_execution_profile_handle(profile.into_handle());
    // TLS: the chain and the configured DNS name are verified, not the dialed address.
    if let Some(tls) = &cfg.tls {
        builder = builder.tls_context(Some(tls.client_config()?));
    }
    // One authenticator slot: SigV4 (Amazon Keyspaces with IAM) or user name and password.
    if let Some(region) = &cfg.sigv4_region {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let credentials = sdk.credentials_provider().ok_or_else(|| {
            config_error("SigV4: no AWS credentials provider is configured".to_owned())
        })?;
        builder =
            builder.authenticator_provider(Arc::new(SigV4AuthProvider::new(region, credentials)));
    } else if let Some(username) = &cfg.username {
        builder = builder.user(username, cfg.password.as_deref().unwrap_or_default());
    }
    builder
        .build()
        .await
        .map_err(|e| store_error(&format!("connect to {}", cfg.nodes.join(",")), e))
}

/// The session a store runs on, replaced by a fresh one when its connections died (a Lambda
/// environment thawed after a freeze, a restarted node).
pub(super) struct LiveSession {
    session: RwLock<Arc<Session>>,
    /// One reconnection at a time; when it last failed.
    reconnecting: tokio::sync::Mutex<Option<Instant>>,
    cfg: CassandraConfig,
}

impl LiveSession {
    pub(super) fn new(session: Arc<Session>, cfg: &CassandraConfig) -> Self {
        LiveSession {
            session: RwLock::new(session),
            reconnecting: tokio::sync::Mutex::new(None),
            cfg: cfg.clone(),
        }
    }

    /// The session in use now.
    pub(super) fn current(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `request` on the current session; an idempotent statement whose connection was lost
    /// gets one more try on a fresh session.
    pub(super) async fn run<T, F, Fut>(
        &self,
        op: &str,
        statement: &PreparedStatement,
        request: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, ExecutionError>>,
    {
        let session = self.current();
        match request(Arc::clone(&session)).await {
            Err(e) if statement.get_is_idempotent() && connection_lost(&e) => {
                self.reconnect(op, &session, &e).await?;
                request(self.current()).await
            }
            result => result,
        }
        .map_err(|e| store_error(op, e))
    }

    /// Replaces `failed` with a new session, unless another request already did, or failed to
    /// within the last second (then the cluster is down, and the caller answers `503`).
    async fn reconnect(
        &self,
        op: &str,
        failed: &Arc<Session>,
        cause: &ExecutionError,
    ) -> Result<(), StoreError> {
        let mut last_failure = self.reconnecting.lock().await;
        if !Arc::ptr_eq(&self.current(), failed) {
            return Ok(());
        }
        if last_failure.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err(store_error(op, cause.clone()));
        }
        tracing::warn!(op, error = %cause, "Cassandra connection lost: reconnecting");
        match connect(&self.cfg).await {
            Ok(fresh) => {
                *self.session.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                *last_failure = None;
                Ok(())
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `connect` fails for `cfg`.
    async fn refusal(cfg: CassandraConfig) -> StoreError {
        match connect(&cfg).await {
            Err(e) => e,
            Ok(_) => panic!("no session for {:?}", cfg.nodes),
        }
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable() {
        let err = refusal(CassandraConfig {
            nodes: vec!["127.0.0.1:9".to_owned()],
            connect_timeout: Duration::from_millis(500),
            ..CassandraConfig::default()
        })
        .await;
        let transient = matches!(&err, StoreError::Unavailable(m) if m.contains("127.0.0.1:9"));
        assert!(transient, "a refused connection is transient: {err:?}");
    }

    #[tokio::test]
    async fn no_nodes_is_a_configuration_error() {
        let err = refusal(CassandraConfig {
            nodes: Vec::new(),
            ..CassandraConfig::default()
        })
        .await;
        let config = matches!(&err, StoreError::Internal(m) if m.contains("no Cassandra nodes"));
        assert!(config, "{err:?}");
    }
}
