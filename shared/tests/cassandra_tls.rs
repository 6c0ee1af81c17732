//! TLS to Cassandra as the store does it for Amazon Keyspaces: the certificate names a DNS host
//! (`cassandra.test.local`) while the driver dials `127.0.0.1`, so every connection that succeeds
//! here was verified by name, not by address.
//!
//! The test CA and certificates come from `scripts/tls-test-certs.sh` (run here, into
//! `$FEEDS_STATE_DIR/tls`, default `.local/tls`, the directory `scripts/cassandra.sh` serves them
//! from). Two kinds of server:
//! - the real Cassandra with client encryption on (`FEEDS_CASSANDRA_TLS_TEST_NODE`, default the
//!   first of `FEEDS_CASSANDRA_NODES`, default `127.0.0.1:9042`), serving the good certificate:
//!   the Java TLS stack against the driver's;
//! - a TLS-terminating proxy started by the test on `127.0.0.1:<any>`, serving a chosen (good,
//!   wrong-name, unknown-CA or expired) certificate and forwarding plain CQL to the first of
//!   `FEEDS_CASSANDRA_NODES` (Cassandra's optional encryption takes plain connections too): the
//!   refusals, each with a control through the same proxy that succeeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use feeds::store::cassandra::tls::TlsSettings;
use feeds::store::cassandra::{connect, CassandraConfig};
use feeds::store::StoreError;
use scylla::client::session::Session;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

const NAME: &str = "cassandra.test.local";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

/// The test certificates, made (once per process, and only when missing or near expiry) by the
/// project's script.
fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let state = std::env::var_os("FEEDS_STATE_DIR")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".local"));
        let dir = state.join("tls");
        let status = Command::new("bash")
            .arg(root.join("scripts/tls-test-certs.sh"))
            .arg(&dir)
            .status()
            .expect("run scripts/tls-test-certs.sh");
        assert!(status.success(), "scripts/tls-test-certs.sh failed");
        dir
    })
}

fn env_node(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.split(',').next().map(|n| n.trim().to_owned()))
        .filter(|n| !n.is_empty())
}

/// Where Cassandra answers plain CQL.
fn plain_node() -> String {
    env_node("FEEDS_CASSANDRA_NODES").unwrap_or_else(|| "127.0.0.1:9042".to_owned())
}

/// Where Cassandra answers CQL over TLS with the good certificate.
fn tls_node() -> String {
    env_node("FEEDS_CASSANDRA_TLS_TEST_NODE").unwrap_or_else(plain_node)
}

fn config(node: String, server_name: &str, ca_file: PathBuf) -> CassandraConfig {
    CassandraConfig {
        nodes: vec![node],
        connect_timeout: Duration::from_secs(5),
        tls: Some(TlsSettings {
            ca_file: Some(ca_file),
            server_name: server_name.to_owned(),
        }),
        ..CassandraConfig::default()
    }
}

async fn release_version(session: &Session) -> String {
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", ())
        .await
        .expect("query over TLS")
        .into_rows_result()
        .expect("rows");
    let (version,): (String,) = rows.single_row().expect("one row");
    version
}

/// Connects, expecting a refusal, and answers the error's text.
async fn refusal(cfg: &CassandraConfig) -> String {
    match connect(cfg).await {
        Ok(_) => panic!(
            "connected to {} with server name {:?}: expected a refusal",
            cfg.nodes[0],
            cfg.tls.as_ref().map(|t| &t.server_name)
        ),
        Err(StoreError::Unavailable(text) | StoreError::Internal(text)) => {
            assert!(text.contains("TLS certificate check failed: "), "{text}");
            text
        }
    }
}

/// A TLS server on `127.0.0.1:<any>` with certificate `<name>.pem` / `<name>.key` of the test
/// directory, forwarding each connection's plain bytes to Cassandra. It lives as long as the
/// test's runtime.
async fn tls_proxy(name: &str) -> SocketAddr {
    let dir = certs();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key PEM");
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let upstream = plain_node();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // A refused handshake ends here: that is what most tests expect.
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let mut server = match TcpStream::connect(&upstream).await {
                    Ok(server) => server,
                    Err(e) => {
                        return eprintln!("tls proxy: cannot reach Cassandra at {upstream}: {e}")
                    }
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_right_name_connects_to_cassandra_over_tls_and_queries() {
    let node = tls_node();
    let cfg = config(node.clone(), NAME, certs().join("ca.pem"));
    let session = match connect(&cfg).await {
        Ok(session) => session,
        Err(e) => panic!(
            "no TLS connection to Cassandra at {node} for {NAME} ({e}).\nCassandra must run with \
             client encryption on (etc/cassandra.yaml client_encryption_options, certificates from \
             scripts/tls-test-certs.sh, as scripts/cassandra.sh starts it), or point \
             FEEDS_CASSANDRA_TLS_TEST_NODE at a node that does."
        ),
    };
    let version = release_version(&session).await;
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
}

#[tokio::test]
async fn the_right_name_connects_through_the_tls_proxy() {
    // The control for the refusals below: the same proxy with the good certificate works.
    let proxy = tls_proxy("server").await;
    let cfg = config(proxy.to_string(), NAME, certs().join("ca.pem"));
    let session = connect(&cfg).await.expect("TLS through the proxy");
    let version = release_version(&session).await;
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );
}

#[tokio::test]
async fn a_wrong_configured_name_is_refused() {
    let proxy = tls_proxy("server").await;
    let cfg = config(
        proxy.to_string(),
        "wrong-name.test.local",
        certs().join("ca.pem"),
    );
    let text = refusal(&cfg).await;
    assert!(
        text.contains(
            "certificate is not valid for wrong-name.test.local (it is valid for cassandra.test.local)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let proxy = tls_proxy("wrong-name").await;
    let cfg = config(proxy.to_string(), NAME, certs().join("ca.pem"));
    let text = refusal(&cfg).await;
    assert!(
        text.contains(
            "certificate is not valid for cassandra.test.local (it is valid for wrong-name.test.local)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let proxy = tls_proxy("unknown-ca").await;
    let cfg = config(proxy.to_string(), NAME, certs().join("ca.pem"));
    let text = refusal(&cfg).await;
    assert!(
        text.contains("certificate for cassandra.test.local is not signed by a trusted CA"),
        "{text}"
    );
}

#[tokio::test]
async fn the_bundled_amazon_roots_refuse_a_private_ca() {
    // The default trust (no CA file) is Amazon's roots only.
    let proxy = tls_proxy("server").await;
    let mut cfg = config(proxy.to_string(), NAME, PathBuf::new());
    cfg.tls.as_mut().unwrap().ca_file = None;
    let text = refusal(&cfg).await;
    assert!(
        text.contains("certificate for cassandra.test.local is not signed by a trusted CA"),
        "{text}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let proxy = tls_proxy("expired").await;
    let cfg = config(proxy.to_string(), NAME, certs().join("ca.pem"));
    let text = refusal(&cfg).await;
    assert!(
        text.contains("certificate for cassandra.test.local has expired: valid until 2020-12-31"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_a_configuration_error() {
    let cfg = config(tls_node(), NAME, certs().join("no-such-ca.pem"));
    match connect(&cfg).await {
        Err(StoreError::Internal(text)) => {
            assert!(text.contains("FEEDS_CASSANDRA_TLS_CA_FILE"), "{text}");
            assert!(text.contains("no-such-ca.pem"), "{text}");
        }
        Err(other) => panic!("a missing CA file is not transient: {other:?}"),
        Ok(_) => panic!("connected without a CA file"),
    }
}
