//! TLS towards the Cassandra nodes, as Amazon Keyspaces requires (port 9142).
//!
//! The `scylla` driver hands rustls the IP address it dials as the server name, while Keyspaces'
//! certificates (like most) name a DNS host, so a stock verifier refuses every one of them.
//! [`client_config`] builds a rustls configuration whose verifier checks the chain against the
//! configured CAs and the configured DNS name, whatever address the driver connected to; an error
//! says which check failed (name, unknown CA, expiry).
//!
//! The driver gives rustls only the dialed IP address, and rustls sends no SNI for an address, so
//! the handshake carries no SNI; the name is checked on the certificate instead.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::settings::{Env, SettingsError};
use crate::store::StoreError;

/// The root CAs that Amazon Keyspaces' certificates chain to (Amazon Root CA 1 to 4, Starfield
/// Services Root CA G2, Starfield Class 2): the default trust of [`TlsSettings`].
pub const AMAZON_ROOT_CAS: &str = include_str!("../../../../etc/certs/amazon-keyspaces-roots.pem");

/// The port Amazon Keyspaces serves CQL over TLS on: nodes on it get TLS unless told otherwise.
pub const KEYSPACES_TLS_PORT: u16 = 9142;

/// How the store talks TLS to the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CAs to trust; `None`: the bundled Amazon roots ([`AMAZON_ROOT_CAS`]).
    pub ca_file: Option<PathBuf>,
    /// The DNS name (or IP address) the nodes' certificates must be valid for.
    pub server_name: String,
}

impl TlsSettings {
    /// Reads `FEEDS_CASSANDRA_TLS` (`true` or `false`; default `true` when every node's port is
    /// 9142), `FEEDS_CASSANDRA_TLS_CA_FILE` (default: the bundled Amazon roots) and
    /// `FEEDS_CASSANDRA_TLS_SERVER_NAME` (default: see [`default_server_name`]). `None`: plain TCP.
    pub fn read(env: &Env, nodes: &[String]) -> Result<Option<Self>, SettingsError> {
        let enabled = match env.flag("FEEDS_CASSANDRA_TLS")? {
            Some(enabled) => enabled,
            None => {
                !nodes.is_empty() && nodes.iter().all(|n| port_of(n) == Some(KEYSPACES_TLS_PORT))
            }
        };
        if !enabled {
            return Ok(None);
        }
        const SERVER_NAME: &str = "FEEDS_CASSANDRA_TLS_SERVER_NAME";
        let server_name = match env.get(SERVER_NAME)? {
            Some(name) => {
                parse_server_name(&name).map_err(|e| SettingsError::new(SERVER_NAME, e))?;
                name
            }
            None => {
                default_server_name(nodes, env.get("AWS_REGION")?.as_deref()).ok_or_else(|| {
                    SettingsError::new(
                        SERVER_NAME,
                        "TLS is on but no server name can be derived from the nodes: set it",
                    )
                })?
            }
        };
        Ok(Some(TlsSettings {
            ca_file: env.get("FEEDS_CASSANDRA_TLS_CA_FILE")?.map(PathBuf::from),
            server_name,
        }))
    }

    /// The rustls configuration for these settings (reads the CA file, if one is configured).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, StoreError> {
        let ca_pem: Cow<'_, str> = match &self.ca_file {
            None => Cow::Borrowed(AMAZON_ROOT_CAS),
            Some(path) => Cow::Owned(std::fs::read_to_string(path).map_err(|e| {
                tls_config_error(format!(
                    "cannot read FEEDS_CASSANDRA_TLS_CA_FILE {}: {e}",
                    path.display()
                ))
            })?),
        };
        client_config(&ca_pem, &self.server_name)
    }
}

/// The server name TLS verifies when none is configured: the first node's host when it is a DNS
/// name outside `amazonaws.com`; otherwise, with `region` known, the Amazon Keyspaces endpoint
/// `cassandra.<region>.amazonaws.com` (a VPC endpoint's name or an address serves the same
/// certificate); otherwise the first node's host, DNS name or address.
pub fn default_server_name(nodes: &[String], region: Option<&str>) -> Option<String> {
    let host = host_of(nodes.first()?)?;
    let is_address = host.parse::<std::net::IpAddr>().is_ok();
    let amazon = {
        let lower = host.to_ascii_lowercase();
        lower.ends_with(".amazonaws.com") || lower.ends_with(".amazonaws.com.cn")
    };
    match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(region) if is_address || amazon => {
            let suffix = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            Some(format!("cassandra.{region}.{suffix}"))
        }
        _ => Some(host.to_owned()),
    }
}

/// A rustls client configuration (aws-lc-rs, TLS 1.2 and 1.3) that trusts the CAs of `ca_pem`
/// (one or more PEM certificates; text around them is ignored) and accepts a server only with a
/// certificate valid for `server_name` (a DNS name or an IP address), whichever address the
/// connection was made to.
pub fn client_config(ca_pem: &str, server_name: &str) -> Result<Arc<ClientConfig>, StoreError> {
    let server_name = parse_server_name(server_name)
        .map_err(|e| tls_config_error(format!("server name: {e}")))?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| {
            tls_config_error(format!("CA certificate {}: not valid PEM: {e}", i + 1))
        })?;
        roots.add(cert).map_err(|e| {
            tls_config_error(format!("CA certificate {}: not a usable CA: {e}", i + 1))
        })?;
    }
    if roots.is_empty() {
        return Err(tls_config_error(
            "the CA file holds no PEM certificate".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_config_error(format!("certificate verifier: {e}")))?;
    let verifier = NamedServerVerifier {
        inner,
        server_name,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_config_error(format!("protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls_config_error(message: String) -> StoreError {
    StoreError::Internal(format!("Cassandra TLS configuration: {message}"))
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address"))
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(node: &str) -> Option<&str> {
    let (host, _) = node.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

fn port_of(node: &str) -> Option<u16> {
    node.trim().rsplit_once(':')?.1.parse().ok()
}

/// Verifies the certificate chain for the configured name instead of the dialed address; signature
/// checks go to the crypto provider's algorithms.
#[derive(Debug)]
struct NamedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: ServerName<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialed: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(
                end_entity,
                intermediates,
                &self.server_name,
                ocsp_response,
                now,
            )
            .map_err(|e| explain(e, &self.server_name))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a server's certificate was refused, in words that name the failed check.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS certificate check failed: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Rewrites rustls' name, issuer and validity errors into messages that say which check failed
/// (as [`rustls::Error::Other`]: rustls prints a `CertificateError::Other` by its `Debug`); other
/// errors pass unchanged.
fn explain(err: rustls::Error, name: &ServerName<'_>) -> rustls::Error {
    let rustls::Error::InvalidCertificate(cert_err) = &err else {
        return err;
    };
    let name = name.to_str();
    let message = match cert_err {
        CertificateError::NotValidForName => format!("certificate is not valid for {name}"),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<&str> = presented.iter().map(|p| presented_name(p)).collect();
            if names.is_empty() {
                format!("certificate is not valid for {name} (it names no DNS name or address)")
            } else {
                format!(
                    "certificate is not valid for {name} (it is valid for {})",
                    names.join(", ")
                )
            }
        }
        CertificateError::UnknownIssuer => format!(
            "certificate for {name} is not signed by a trusted CA (unknown issuer: \
             check FEEDS_CASSANDRA_TLS_CA_FILE)"
        ),
        CertificateError::Expired => format!("certificate for {name} has expired"),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "certificate for {name} has expired: valid until {}, now {}",
            utc(not_after.as_secs()),
            utc(time.as_secs())
        ),
        CertificateError::NotValidYet => format!("certificate for {name} is not valid yet"),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "certificate for {name} is not valid yet: valid from {}, now {}",
            utc(not_before.as_secs()),
            utc(time.as_secs())
        ),
        _ => return err,
    };
    rustls::Error::Other(OtherError(Arc::new(Refused(message))))
}

/// `DnsName("a.example")` → `a.example`, `IpAddress(10.0.0.1)` → `10.0.0.1` (webpki's spelling).
fn presented_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

fn utc(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("{secs} s after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        pairs: &[(&str, &str)],
        nodes: &[&str],
    ) -> Result<Option<TlsSettings>, SettingsError> {
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        TlsSettings::read(&Env::from_pairs(pairs.to_vec()), &nodes)
    }

    #[test]
    fn the_bundled_amazon_roots_load() {
        let roots: Vec<_> = CertificateDer::pem_slice_iter(AMAZON_ROOT_CAS.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(roots.len(), 6);
        client_config(AMAZON_ROOT_CAS, "cassandra.us-east-1.amazonaws.com").unwrap();
    }

    #[test]
    fn a_bad_ca_bundle_or_name_is_a_configuration_error() {
        let err = client_config("no certificates here", "a.example").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = client_config(AMAZON_ROOT_CAS, "not a name").unwrap_err();
        assert!(err.to_string().contains("\"not a name\""), "{err}");
    }

    #[test]
    fn tls_is_on_by_default_only_on_port_9142() {
        assert_eq!(settings(&[], &["127.0.0.1:9042"]).unwrap(), None);
        assert_eq!(
            settings(&[], &["cassandra.eu-west-1.amazonaws.com:9142"]).unwrap(),
            Some(TlsSettings {
                ca_file: None,
                server_name: "cassandra.eu-west-1.amazonaws.com".to_owned()
            })
        );
        assert_eq!(
            settings(&[], &["a.example:9142", "b.example:9042"]).unwrap(),
            None
        );
        assert_eq!(
            settings(
                &[("FEEDS_CASSANDRA_TLS", "false")],
                &["cassandra.eu-west-1.amazonaws.com:9142"]
            )
            .unwrap(),
            None
        );
        let on = settings(
            &[
                ("FEEDS_CASSANDRA_TLS", "true"),
                ("FEEDS_CASSANDRA_TLS_CA_FILE", "/etc/ca.pem"),
                ("FEEDS_CASSANDRA_TLS_SERVER_NAME", "cassandra.test.local"),
            ],
            &["127.0.0.1:9042"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(on.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(on.server_name, "cassandra.test.local");

        for (name, value) in [
            ("FEEDS_CASSANDRA_TLS", "maybe"),
            ("FEEDS_CASSANDRA_TLS_SERVER_NAME", "bad name"),
        ] {
            let err =
                settings(&[("FEEDS_CASSANDRA_TLS", "true"), (name, value)], &["h:1"]).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}: {err}");
        }
        let nameless = settings(&[("FEEDS_CASSANDRA_TLS", "true")], &[]).unwrap_err();
        assert_eq!(nameless.variable, "FEEDS_CASSANDRA_TLS_SERVER_NAME");
    }

    #[test]
    fn the_server_name_defaults_to_the_keyspaces_endpoint_or_the_host() {
        let name = |node: &str, region: Option<&str>| {
            default_server_name(&[node.to_owned()], region).unwrap()
        };
        assert_eq!(
            name("10.0.0.7:9142", Some("us-east-1")),
            "cassandra.us-east-1.amazonaws.com"
        );
        assert_eq!(
            name(
                "vpce-0a1b-xyz.cassandra.us-east-1.vpce.amazonaws.com:9142",
                Some("us-east-1")
            ),
            "cassandra.us-east-1.amazonaws.com"
        );
        assert_eq!(
            name("10.0.0.7:9142", Some("cn-north-1")),
            "cassandra.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            name("db.example.com:9142", Some("us-east-1")),
            "db.example.com"
        );
        assert_eq!(name("10.0.0.7:9142", None), "10.0.0.7");
        assert_eq!(name("[::1]:9142", None), "::1");
        assert_eq!(default_server_name(&[], Some("us-east-1")), None);
    }

    #[test]
    fn refusals_name_the_failed_check() {
        let name = ServerName::try_from("cassandra.test.local").unwrap();
        let text =
            |e: CertificateError| explain(rustls::Error::InvalidCertificate(e), &name).to_string();
        let wrong = text(CertificateError::NotValidForNameContext {
            expected: name.to_owned(),
            presented: vec!["DnsName(\"wrong.test.local\")".to_owned()],
        });
        assert_eq!(
            wrong,
            "other error: TLS certificate check failed: certificate is not valid for \
             cassandra.test.local (it is valid for wrong.test.local)"
        );
        let unknown = text(CertificateError::UnknownIssuer);
        assert!(unknown.contains("not signed by a trusted CA"), "{unknown}");
        let expired = text(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_609_372_800)),
        });
        assert!(
            expired.contains("has expired: valid until 2020-12-31T00:00:00Z, now 2023-11-14"),
            "{expired}"
        );
        let other = explain(rustls::Error::DecryptError, &name);
        assert_eq!(other, rustls::Error::DecryptError);
    }
}
