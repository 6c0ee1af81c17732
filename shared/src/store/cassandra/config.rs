//! Where the cluster is and how to talk to it: `FEEDS_CASSANDRA_*`, read and checked.

use std::time::Duration;

use super::errors::config_error;
use super::tls::TlsSettings;
use crate::settings::{Env, SettingsError};
use crate::store::StoreError;

/// Where the cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Lowercase letters, digits and `_`, starting with a letter; at most 48 characters.
    pub keyspace: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The `replication` map of `CREATE KEYSPACE`, e.g. `{'class': 'SingleRegionStrategy'}` on
    /// Amazon Keyspaces.
    pub replication: String,
    /// TLS towards the nodes (`None`: plain TCP): `FEEDS_CASSANDRA_TLS*`, see
    /// [`TlsSettings::read`].
    pub tls: Option<TlsSettings>,
    /// Amazon Keyspaces' SigV4 authentication in this region, with credentials from the standard
    /// AWS chain (`FEEDS_CASSANDRA_AUTH=sigv4`); `None`: user name and password, or nothing.
    pub sigv4_region: Option<String>,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "feeds".to_owned(),
            username: None,
            password: None,
            connect_timeout: Duration::from_millis(3000),
            request_timeout: Duration::from_millis(5000),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            tls: None,
            sigv4_region: None,
        }
    }
}

impl CassandraConfig {
    /// Reads `FEEDS_CASSANDRA_NODES` (comma-separated `host:port`), `FEEDS_CASSANDRA_KEYSPACE`,
    /// `FEEDS_CASSANDRA_USERNAME`, `FEEDS_CASSANDRA_PASSWORD`, `FEEDS_CASSANDRA_AUTH` (`sigv4`
    /// signs in `FEEDS_CASSANDRA_SIGV4_REGION`, else `AWS_REGION`),
    /// `FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS`, `FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS`,
    /// `FEEDS_CASSANDRA_REPLICATION` and the TLS variables; unset variables take the defaults of
    /// [`CassandraConfig::default`].
    pub fn read(env: &Env) -> Result<CassandraConfig, SettingsError> {
        let defaults = Self::default();
        let nodes = match env.get("FEEDS_CASSANDRA_NODES")? {
            None => defaults.nodes,
            Some(text) => {
                let nodes: Vec<String> =
                    text.split(',').map(str::trim).map(str::to_owned).collect();
                if nodes.iter().any(|n| !is_host_port(n)) {
                    return Err(SettingsError::expected(
                        "FEEDS_CASSANDRA_NODES",
                        "comma-separated host:port pairs",
                        &text,
                    ));
                }
                nodes
            }
        };
        let keyspace = env.string_or("FEEDS_CASSANDRA_KEYSPACE", &defaults.keyspace)?;
        check_keyspace_name("FEEDS_CASSANDRA_KEYSPACE", &keyspace)?;
        let replication = env.string_or("FEEDS_CASSANDRA_REPLICATION", &defaults.replication)?;
        check_replication("FEEDS_CASSANDRA_REPLICATION", &replication)?;
        let tls = TlsSettings::read(env, &nodes)?;
        let auth = env.get("FEEDS_CASSANDRA_AUTH")?;
        let needs = |what: &str| SettingsError::new("FEEDS_CASSANDRA_AUTH", what);
        let sigv4_region = match auth.as_deref() {
            None | Some("password") | Some("none") => None,
            Some("sigv4") => Some(
                match env.get("FEEDS_CASSANDRA_SIGV4_REGION")? {
                    Some(region) => Some(region),
                    None => env.get("AWS_REGION")?,
                }
                .ok_or_else(|| needs("sigv4 needs FEEDS_CASSANDRA_SIGV4_REGION or AWS_REGION"))?,
            ),
            Some(other) => {
                return Err(SettingsError::expected(
                    "FEEDS_CASSANDRA_AUTH",
                    "sigv4, password or none",
                    other,
                ))
            }
        };
        let username = env.get("FEEDS_CASSANDRA_USERNAME")?;
        let password = env.secret("FEEDS_CASSANDRA_PASSWORD")?;
        if auth.as_deref() == Some("password") && (username.is_none() || password.is_none()) {
            return Err(needs(
                "password needs FEEDS_CASSANDRA_USERNAME and FEEDS_CASSANDRA_PASSWORD",
            ));
        }
        Ok(CassandraConfig {
            nodes,
            keyspace,
            username,
            password,
            connect_timeout: env.millis_or(
                "FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS",
                defaults.connect_timeout,
            )?,
            request_timeout: env.millis_or(
                "FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS",
                defaults.request_timeout,
            )?,
            replication,
            tls,
            sigv4_region,
        })
    }

    /// The keyspace name, checked: it is spliced into CQL text.
    pub(super) fn checked_keyspace(&self) -> Result<&str, StoreError> {
        check_keyspace_name("the keyspace", &self.keyspace).map_err(unusable)?;
        Ok(&self.keyspace)
    }

    /// The replication map, checked: it is spliced into CQL text.
    pub(super) fn checked_replication(&self) -> Result<&str, StoreError> {
        check_replication("the replication", &self.replication).map_err(unusable)?;
        Ok(self.replication.trim())
    }
}

/// A configuration built in code (not read) that fails a check.
fn unusable(err: SettingsError) -> StoreError {
    config_error(err.to_string())
}

fn is_host_port(node: &str) -> bool {
    match node.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn check_keyspace_name(what: &str, name: &str) -> Result<(), SettingsError> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SettingsError::expected(
            what,
            "1 to 48 characters of a-z 0-9 _ starting with a letter",
            name,
        ))
    }
}

fn check_replication(what: &str, replication: &str) -> Result<(), SettingsError> {
    let text = replication.trim();
    if text.starts_with('{') && text.ends_with('}') && !text.contains(';') {
        Ok(())
    } else {
        Err(SettingsError::expected(
            what,
            "a CQL replication map such as {'class': 'SimpleStrategy', 'replication_factor': 1}",
            replication,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_environment_and_names_a_bad_variable() {
        let env = |pairs: &[(&str, &str)]| CassandraConfig::read(&Env::from_pairs(pairs.to_vec()));
        assert_eq!(env(&[]).unwrap(), CassandraConfig::default());
        let cfg = env(&[
            (
                "FEEDS_CASSANDRA_NODES",
                "10.0.0.1:9042, cassandra.local:9142",
            ),
            ("FEEDS_CASSANDRA_KEYSPACE", "feeds_prod"),
            ("FEEDS_CASSANDRA_USERNAME", "svc"),
            ("FEEDS_CASSANDRA_PASSWORD", "s3cret"),
            ("FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS", "1500"),
            ("FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS", "2500"),
            (
                "FEEDS_CASSANDRA_REPLICATION",
                "{'class': 'SingleRegionStrategy'}",
            ),
        ])
        .unwrap();
        assert_eq!(cfg.nodes, ["10.0.0.1:9042", "cassandra.local:9142"]);
        assert_eq!(cfg.keyspace, "feeds_prod");
        assert_eq!(
            (cfg.username.as_deref(), cfg.password.as_deref()),
            (Some("svc"), Some("s3cret"))
        );
        assert_eq!(cfg.connect_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.request_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.replication, "{'class': 'SingleRegionStrategy'}");

        for (name, value) in [
            ("FEEDS_CASSANDRA_NODES", "localhost"),
            ("FEEDS_CASSANDRA_NODES", "a:9042,,b:9042"),
            ("FEEDS_CASSANDRA_KEYSPACE", "feeds-prod"),
            ("FEEDS_CASSANDRA_CONNECT_TIMEOUT_MS", "3s"),
            ("FEEDS_CASSANDRA_REQUEST_TIMEOUT_MS", "0"),
            ("FEEDS_CASSANDRA_REPLICATION", "SimpleStrategy"),
            ("FEEDS_CASSANDRA_AUTH", "kerberos"),
            // Service-specific credentials asked for, but none given.
            ("FEEDS_CASSANDRA_AUTH", "password"),
            // SigV4 asked for, but no region given.
            ("FEEDS_CASSANDRA_AUTH", "sigv4"),
        ] {
            let err = env(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn sigv4_takes_its_own_region_or_the_aws_one() {
        let region = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push(("FEEDS_CASSANDRA_AUTH", "sigv4"));
            CassandraConfig::read(&Env::from_pairs(pairs))
                .unwrap()
                .sigv4_region
        };
        assert_eq!(
            region(&[("AWS_REGION", "eu-west-1")]).as_deref(),
            Some("eu-west-1")
        );
        let both = [
            ("AWS_REGION", "eu-west-1"),
            ("FEEDS_CASSANDRA_SIGV4_REGION", "us-east-1"),
        ];
        assert_eq!(region(&both).as_deref(), Some("us-east-1"));
    }

    #[test]
    fn a_built_configuration_is_checked_before_it_reaches_cql() {
        let cfg = CassandraConfig {
            keyspace: "feeds; DROP".to_owned(),
            replication: "{'class': 'SimpleStrategy'}; DROP".to_owned(),
            ..CassandraConfig::default()
        };
        let err = cfg.checked_keyspace().unwrap_err().to_string();
        assert!(
            err.starts_with("Cassandra configuration: the keyspace"),
            "{err}"
        );
        let err = cfg.checked_replication().unwrap_err().to_string();
        assert!(err.contains("the replication"), "{err}");
    }
}
