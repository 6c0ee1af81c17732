//! SigV4 authentication for Amazon Keyspaces, as a `scylla` authenticator.
//!
//! Amazon Keyspaces names its authenticator `com.amazonaws.cassandra.DefaultAuthenticator` and
//! runs a two-step SASL-like exchange over the native protocol:
//!
//! 1. the client's initial `AUTH_RESPONSE` is the seven bytes `SigV4\0\0`;
//! 2. the server answers an `AUTH_CHALLENGE` carrying `nonce=<32 hex digits>`;
//! 3. the client answers
//!    `signature=<hex>,access_key=<id>,amzdate=<timestamp>[,session_token=<token>]`, where the
//!    signature is AWS Signature Version 4 over a fixed, presigned-URL-shaped request:
//!
//! ```text
//! PUT
//! /authenticate
//! X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<id>%2F<yyyymmdd>%2F<region>%2Fcassandra%2Faws4_request&X-Amz-Date=<timestamp, URI-encoded>&X-Amz-Expires=900
//! host:cassandra
//!
//! host
//! <lowercase hex SHA-256 of the nonce's text>
//! ```
//!
//! The timestamp is `yyyy-mm-ddThh:mm:ss.mmmZ` (extended ISO 8601, milliseconds, UTC) everywhere:
//! in `X-Amz-Date`, in the string to sign and in `amzdate`. The session token is not signed; it
//! is only appended to the answer. The signing key is the usual SigV4 derivation with the service
//! name `cassandra`.
//!
//! Credentials are resolved for every new connection, from any [`ProvideCredentials`] (normally
//! the default chain of `aws_config`), so rotated credentials (a Lambda role's, an instance
//! profile's) are picked up as the driver reconnects.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::sign::v4;
use chrono::{DateTime, Utc};
use scylla::authentication::{AuthError, AuthenticatorProvider, AuthenticatorSession};
use sha2::{Digest, Sha256};

/// The authenticator class Amazon Keyspaces announces in its `AUTHENTICATE` message.
pub const KEYSPACES_AUTHENTICATOR: &str = "com.amazonaws.cassandra.DefaultAuthenticator";

/// The client's first `AUTH_RESPONSE`: asks the server for a SigV4 challenge.
pub const INITIAL_RESPONSE: &[u8] = b"SigV4\0\0";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "cassandra";
const EXPIRES_SECONDS: u32 = 900;

/// Why a SigV4 exchange or its configuration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The server's challenge carried no bytes at all.
    #[error("the server sent an empty SigV4 challenge (expected `nonce=<hex>`)")]
    EmptyChallenge,
    /// The challenge has no `nonce=` field; carries (a printable excerpt of) the challenge.
    #[error("the SigV4 challenge has no `nonce=` field: {0:?}")]
    MissingNonce(String),
    /// The `nonce=` field is empty or holds bytes a nonce cannot hold.
    #[error("the SigV4 challenge's nonce is not valid: {0:?}")]
    InvalidNonce(String),
    /// No signing region is configured.
    #[error("no AWS region is configured for SigV4 authentication")]
    MissingRegion,
    /// No credentials provider is configured.
    #[error("no AWS credentials provider is configured for SigV4 authentication")]
    MissingCredentialsProvider,
}

/// Signs Amazon Keyspaces' SigV4 challenges for the `scylla` driver:
/// `SessionBuilder::authenticator_provider(Arc::new(SigV4AuthProvider::new(region, credentials)))`.
///
/// Credentials are resolved once per connection, when the server's challenge arrives.
#[derive(Debug, Clone)]
pub struct SigV4AuthProvider {
    region: String,
    credentials: Arc<dyn ProvideCredentials>,
}

impl SigV4AuthProvider {
    /// A provider signing for `region` (e.g. `us-east-1`, the region of the Keyspaces endpoint;
    /// trimmed and lowercased) with credentials from `credentials`, e.g. the
    /// `SharedCredentialsProvider` of `aws_config::load_defaults(..).await`.
    pub fn new(region: impl AsRef<str>, credentials: impl ProvideCredentials + 'static) -> Self {
        SigV4AuthProvider {
            region: region.as_ref().trim().to_ascii_lowercase(),
            credentials: Arc::new(credentials),
        }
    }

    /// A provider using the region and the credentials provider of an `aws_config` configuration
    /// (`aws_config::load_defaults(BehaviorVersion::latest()).await`).
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Result<Self, SigV4Error> {
        let region = config
            .region()
            .map(|r| r.as_ref().trim())
            .filter(|r| !r.is_empty())
            .ok_or(SigV4Error::MissingRegion)?;
        let credentials = config
            .credentials_provider()
            .ok_or(SigV4Error::MissingCredentialsProvider)?;
        Ok(Self::new(region, credentials))
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }
}

#[async_trait]
impl AuthenticatorProvider for SigV4AuthProvider {
    async fn start_authentication_session(
        &self,
        authenticator_name: &str,
    ) -> Result<(Option<Vec<u8>>, Box<dyn AuthenticatorSession>), AuthError> {
        if authenticator_name != KEYSPACES_AUTHENTICATOR {
            tracing::debug!(
                authenticator = authenticator_name,
                "SigV4 authentication against a server that is not Amazon Keyspaces"
            );
        }
        let session = SigV4Session {
            region: self.region.clone(),
            credentials: Arc::clone(&self.credentials),
            answered_challenge: false,
        };
        Ok((Some(INITIAL_RESPONSE.to_vec()), Box::new(session)))
    }
}

/// One connection's exchange.
struct SigV4Session {
    region: String,
    credentials: Arc<dyn ProvideCredentials>,
    answered_challenge: bool,
}

#[async_trait]
impl AuthenticatorSession for SigV4Session {
    async fn evaluate_challenge(
        &mut self,
        token: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, AuthError> {
        let nonce = nonce_from_challenge(token).map_err(|e| format!("SigV4: {e}"))?;
        let credentials =
            self.credentials.provide_credentials().await.map_err(|e| {
                format!("SigV4: cannot resolve AWS credentials: {}", error_chain(&e))
            })?;
        let response = challenge_response(nonce, &credentials, &self.region, Utc::now());
        self.answered_challenge = true;
        Ok(Some(response.into_bytes()))
    }

    async fn success(&mut self, _token: Option<&[u8]>) -> Result<(), AuthError> {
        if self.answered_challenge {
            Ok(())
        } else {
            Err("SigV4: the server accepted the connection without sending a challenge".to_owned())
        }
    }
}

/// The nonce of a challenge `nonce=<value>` (one of its comma-separated `key=value` fields): a
/// non-empty run of printable ASCII without spaces, commas or `=`.
pub fn nonce_from_challenge(challenge: Option<&[u8]>) -> Result<&str, SigV4Error> {
    let challenge = match challenge {
        Some(c) if !c.is_empty() => c,
        _ => return Err(SigV4Error::EmptyChallenge),
    };
    let value = challenge
        .split(|&b| b == b',')
        .find_map(|field| {
            let at = field.iter().position(|&b| b == b'=')?;
            (field[..at].trim_ascii() == b"nonce").then(|| &field[at + 1..])
        })
        .ok_or_else(|| SigV4Error::MissingNonce(excerpt(challenge)))?;
    let valid = !value.is_empty() && value.iter().all(|&b| b.is_ascii_graphic() && b != b'=');
    match std::str::from_utf8(value) {
        Ok(nonce) if valid => Ok(nonce),
        _ => Err(SigV4Error::InvalidNonce(excerpt(value))),
    }
}

/// The answer to a challenge's `nonce`, signed with `credentials` for `region` at `time`:
/// `signature=<hex>,access_key=<id>,amzdate=<timestamp>[,session_token=<token>]`.
pub fn challenge_response(
    nonce: &str,
    credentials: &Credentials,
    region: &str,
    time: DateTime<Utc>,
) -> String {
    let signature = signature(
        nonce,
        credentials.access_key_id(),
        credentials.secret_access_key(),
        region,
        time,
    );
    let mut response = format!(
        "signature={signature},access_key={},amzdate={}",
        credentials.access_key_id(),
        timestamp(time)
    );
    if let Some(token) = credentials.session_token().filter(|t| !t.is_empty()) {
        response.push_str(",session_token=");
        response.push_str(token);
    }
    response
}

/// The lowercase hex signature of `nonce`.
fn signature(
    nonce: &str,
    access_key_id: &str,
    secret_access_key: &str,
    region: &str,
    time: DateTime<Utc>,
) -> String {
    let date = date_stamp(time);
    let scope = credential_scope(&date, region);
    let request = canonical_request(access_key_id, &scope, &timestamp(time), nonce);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        timestamp(time),
        hex(&Sha256::digest(request.as_bytes()))
    );
    // aws_sigv4 can't form Keyspaces' request (ms dates, nonce payload): used to key and sign only.
    let key = v4::generate_signing_key(secret_access_key, time.into(), region, SERVICE);
    v4::calculate_signature(key, string_to_sign.as_bytes())
}

/// `yyyy-mm-ddThh:mm:ss.mmmZ`, milliseconds truncated.
fn timestamp(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `yyyymmdd`.
fn date_stamp(time: DateTime<Utc>) -> String {
    time.format("%Y%m%d").to_string()
}

fn credential_scope(date: &str, region: &str) -> String {
    format!("{date}/{region}/{SERVICE}/aws4_request")
}

fn canonical_request(access_key_id: &str, scope: &str, timestamp: &str, nonce: &str) -> String {
    let mut query = [
        format!("X-Amz-Algorithm={ALGORITHM}"),
        format!(
            "X-Amz-Credential={}",
            uri_encode(&format!("{access_key_id}/{scope}"))
        ),
        format!("X-Amz-Date={}", uri_encode(timestamp)),
        format!("X-Amz-Expires={EXPIRES_SECONDS}"),
    ];
    query.sort();
    format!(
        "PUT\n/authenticate\n{}\nhost:{SERVICE}\n\nhost\n{}",
        query.join("&"),
        hex(&Sha256::digest(nonce.as_bytes()))
    )
}

/// SigV4 URI encoding: everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// At most 64 bytes of `bytes`, lossily decoded, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        text.push('…');
    }
    text
}

fn error_chain(err: &dyn StdError) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::future;
    use chrono::{NaiveDateTime, TimeZone};
    use scylla::client::session_builder::SessionBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    // The published test vectors of aws-sigv4-auth-cassandra-gocql-driver-plugin
    // (sigv4/internal/crypt_test.go), also used by the Python plugin's tests.
    const NONCE: &str = "91703fdc2ef562e19fbdab0f58e42fe5";
    const REGION: &str = "us-west-2";
    const ACCESS_KEY_ID: &str = "UserID-1";
    const SECRET: &str = "UserSecretKey-1";
    const SCOPE: &str = "20200609/us-west-2/cassandra/aws4_request";
    const CANONICAL_REQUEST: &str = "PUT\n\
        /authenticate\n\
        X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=UserID-1%2F20200609%2Fus-west-2%2Fcassandra%2Faws4_request&X-Amz-Date=2020-06-09T22%3A41%3A51.000Z&X-Amz-Expires=900\n\
        host:cassandra\n\
        \n\
        host\n\
        ddf250111597b3f35e51e649f59e3f8b30ff5b247166d709dc1b1e60bd927070";
    const SIGNING_KEY: &str = "7fb139473f153aec1b05747b0cd5cd77a1186d22ae895a3a0128e699d72e1aba";
    const SIGNATURE: &str = "7f3691c18a81b8ce7457699effbfae5b09b4e0714ab38c1292dbdf082c9ddd87";

    /// 2020-06-09T22:41:51Z
    fn vector_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2020, 6, 9, 22, 41, 51).unwrap()
    }

    fn credentials(session_token: Option<&str>) -> Credentials {
        Credentials::new(
            ACCESS_KEY_ID,
            SECRET,
            session_token.map(str::to_owned),
            None,
            "test",
        )
    }

    #[test]
    fn vector_scope_and_canonical_request() {
        assert_eq!(credential_scope(&date_stamp(vector_time()), REGION), SCOPE);
        let request = canonical_request(ACCESS_KEY_ID, SCOPE, &timestamp(vector_time()), NONCE);
        assert_eq!(request, CANONICAL_REQUEST);
    }

    #[test]
    fn vector_signing_key() {
        let key = v4::generate_signing_key(SECRET, vector_time().into(), REGION, SERVICE);
        assert_eq!(hex(key.as_ref()), SIGNING_KEY);
    }

    #[test]
    fn vector_response_without_session_token() {
        assert_eq!(
            signature(NONCE, ACCESS_KEY_ID, SECRET, REGION, vector_time()),
            SIGNATURE
        );
        assert_eq!(
            challenge_response(NONCE, &credentials(None), REGION, vector_time()),
            format!("signature={SIGNATURE},access_key=UserID-1,amzdate=2020-06-09T22:41:51.000Z")
        );
        // An empty token is no token.
        assert_eq!(
            challenge_response(NONCE, &credentials(Some("")), REGION, vector_time()),
            format!("signature={SIGNATURE},access_key=UserID-1,amzdate=2020-06-09T22:41:51.000Z")
        );
    }

    #[test]
    fn vector_response_with_session_token() {
        // The token is not signed: the signature is the same as without it.
        assert_eq!(
            challenge_response(
                NONCE,
                &credentials(Some("sess-token-1")),
                REGION,
                vector_time()
            ),
            format!(
                "signature={SIGNATURE},access_key=UserID-1,amzdate=2020-06-09T22:41:51.000Z,\
                 session_token=sess-token-1"
            )
        );
    }

    #[test]
    fn timestamps_have_exactly_three_truncated_fractional_digits() {
        let t = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let cases = [
            (0, "2025-01-01T00:00:00.000Z"),
            (500_000, "2025-01-01T00:00:00.000Z"),
            (999_000_000, "2025-01-01T00:00:00.999Z"),
            (999_999_999, "2025-01-01T00:00:00.999Z"),
        ];
        for (nanos, expected) in cases {
            let time = t + chrono::Duration::nanoseconds(nanos);
            assert_eq!(timestamp(time), expected, "{nanos} ns");
            assert_eq!(date_stamp(time), "20250101");
        }
        // The signature depends on the milliseconds.
        let later = vector_time() + chrono::Duration::milliseconds(1);
        assert_ne!(
            signature(NONCE, ACCESS_KEY_ID, SECRET, REGION, later),
            SIGNATURE
        );
    }

    #[test]
    fn nonce_is_parsed_from_the_challenge() {
        assert_eq!(
            nonce_from_challenge(Some(format!("nonce={NONCE}").as_bytes())),
            Ok(NONCE)
        );
        assert_eq!(nonce_from_challenge(Some(b"nonce=1256")), Ok("1256"));
        assert_eq!(
            nonce_from_challenge(Some(b"realm=keyspaces, nonce=abc123,extra=1")),
            Ok("abc123")
        );
    }

    #[test]
    fn challenge_without_a_valid_nonce_is_a_clear_error() {
        assert_eq!(nonce_from_challenge(None), Err(SigV4Error::EmptyChallenge));
        assert_eq!(
            nonce_from_challenge(Some(b"")),
            Err(SigV4Error::EmptyChallenge)
        );
        for garbage in [
            &b"n1256"[..],
            b"garbage",
            b"nonce",
            b"xnonce=abc",
            b"\xff\xfe\x00",
        ] {
            let err = nonce_from_challenge(Some(garbage)).unwrap_err();
            assert!(
                matches!(err, SigV4Error::MissingNonce(_)),
                "{garbage:?}: {err:?}"
            );
            assert!(err.to_string().contains("no `nonce=` field"), "{err}");
        }
        for bad in [
            &b"nonce="[..],
            b"nonce=,x=1",
            b"nonce=ab cd",
            b"nonce=\xff\xfe",
            b"nonce=a=b",
        ] {
            let err = nonce_from_challenge(Some(bad)).unwrap_err();
            assert!(
                matches!(err, SigV4Error::InvalidNonce(_)),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains("nonce is not valid"), "{err}");
        }
        let long = vec![b'x'; 1000];
        let err = nonce_from_challenge(Some(&long)).unwrap_err();
        assert!(err.to_string().len() < 200, "excerpt is bounded: {err}");
    }

    /// What the server side checks in an answer; answers the signed time.
    fn verify_response(
        response: &[u8],
        nonce: &str,
        region: &str,
        expected: &Credentials,
    ) -> Result<DateTime<Utc>, String> {
        let text = std::str::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
        let fields: Vec<(&str, &str)> = text
            .split(',')
            .map(|f| f.split_once('=').ok_or(format!("field without `=`: {f:?}")))
            .collect::<Result<_, _>>()?;
        let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        let expected_keys: &[&str] = match expected.session_token() {
            Some(_) => &["signature", "access_key", "amzdate", "session_token"],
            None => &["signature", "access_key", "amzdate"],
        };
        if keys != expected_keys {
            return Err(format!("fields {keys:?}, expected {expected_keys:?}"));
        }
        let (signature_hex, access_key, amzdate) = (fields[0].1, fields[1].1, fields[2].1);
        if access_key != expected.access_key_id() {
            return Err(format!("access_key {access_key:?}"));
        }
        if fields.get(3).map(|(_, v)| *v) != expected.session_token() {
            return Err(format!("session_token {:?}", fields.get(3)));
        }
        let time = NaiveDateTime::parse_from_str(amzdate, "%Y-%m-%dT%H:%M:%S%.3fZ")
            .map_err(|e| format!("amzdate {amzdate:?}: {e}"))?
            .and_utc();
        if timestamp(time) != amzdate {
            return Err(format!("amzdate {amzdate:?} is not in canonical form"));
        }
        if (Utc::now() - time).abs() > chrono::Duration::minutes(5) {
            return Err(format!("amzdate {amzdate:?} is not now"));
        }
        let secret = expected.secret_access_key();
        let recomputed = signature(nonce, access_key, secret, region, time);
        if signature_hex != recomputed {
            return Err(format!("signature {signature_hex}, expected {recomputed}"));
        }
        Ok(time)
    }

    fn random_nonce() -> String {
        hex(&rand::random::<[u8; 16]>())
    }

    #[tokio::test]
    async fn scripted_exchange_signs_the_servers_nonce() {
        let creds = credentials(Some("IQoJb3JpZ2luX2VjE+/token=="));
        let provider = SigV4AuthProvider::new(" US-West-2 ", creds.clone());
        assert_eq!(provider.region(), "us-west-2");

        let (initial, mut session) = provider
            .start_authentication_session(KEYSPACES_AUTHENTICATOR)
            .await
            .unwrap();
        assert_eq!(initial.as_deref(), Some(&b"SigV4\0\0"[..]));

        let nonce = random_nonce();
        let challenge = format!("nonce={nonce}");
        let response = session
            .evaluate_challenge(Some(challenge.as_bytes()))
            .await
            .unwrap()
            .expect("an answer to the challenge");
        verify_response(&response, &nonce, "us-west-2", &creds).unwrap();
        // A signature over another nonce, or for another region, does not verify.
        assert!(verify_response(&response, &random_nonce(), "us-west-2", &creds).is_err());
        assert!(verify_response(&response, &nonce, "us-east-1", &creds).is_err());

        session.success(None).await.unwrap();
    }

    #[tokio::test]
    async fn scripted_exchange_without_session_token() {
        let creds = credentials(None);
        let provider = SigV4AuthProvider::new(REGION, creds.clone());
        let (_, mut session) = provider
            .start_authentication_session(KEYSPACES_AUTHENTICATOR)
            .await
            .unwrap();
        let nonce = random_nonce();
        let response = session
            .evaluate_challenge(Some(format!("nonce={nonce}").as_bytes()))
            .await
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&response).contains("session_token"));
        verify_response(&response, &nonce, REGION, &creds).unwrap();
        session.success(Some(b"")).await.unwrap();
    }

    #[tokio::test]
    async fn garbage_challenge_fails_the_exchange() {
        let provider = SigV4AuthProvider::new(REGION, credentials(None));
        let (_, mut session) = provider
            .start_authentication_session(KEYSPACES_AUTHENTICATOR)
            .await
            .unwrap();
        let err = session
            .evaluate_challenge(Some(b"hello"))
            .await
            .unwrap_err();
        assert!(err.contains("SigV4") && err.contains("nonce"), "{err}");
        let err = session.evaluate_challenge(None).await.unwrap_err();
        assert!(err.contains("empty SigV4 challenge"), "{err}");
    }

    #[tokio::test]
    async fn success_without_a_challenge_is_refused() {
        let provider = SigV4AuthProvider::new(REGION, credentials(None));
        let (_, mut session) = provider
            .start_authentication_session(KEYSPACES_AUTHENTICATOR)
            .await
            .unwrap();
        let err = session.success(None).await.unwrap_err();
        assert!(err.contains("without sending a challenge"), "{err}");
    }

    /// Hands out `key-1`, `key-2`, … : each call is a rotation.
    #[derive(Debug, Default)]
    struct RotatingCredentials {
        calls: AtomicUsize,
    }

    impl ProvideCredentials for RotatingCredentials {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let creds = Credentials::new(
                format!("key-{n}"),
                format!("secret-{n}"),
                Some(format!("token-{n}")),
                None,
                "rotating",
            );
            future::ProvideCredentials::ready(Ok(creds))
        }
    }

    #[tokio::test]
    async fn credentials_are_resolved_for_each_connection() {
        let rotating = Arc::new(RotatingCredentials::default());
        let provider = SigV4AuthProvider::new(
            REGION,
            aws_credential_types::provider::SharedCredentialsProvider::from(
                Arc::clone(&rotating) as Arc<dyn ProvideCredentials>
            ),
        );
        assert_eq!(rotating.calls.load(Ordering::SeqCst), 0);
        for n in 1..=2 {
            let (_, mut session) = provider
                .start_authentication_session(KEYSPACES_AUTHENTICATOR)
                .await
                .unwrap();
            let nonce = random_nonce();
            let response = session
                .evaluate_challenge(Some(format!("nonce={nonce}").as_bytes()))
                .await
                .unwrap()
                .unwrap();
            let expected = Credentials::new(
                format!("key-{n}"),
                format!("secret-{n}"),
                Some(format!("token-{n}")),
                None,
                "expected",
            );
            verify_response(&response, &nonce, REGION, &expected).unwrap();
        }
        assert_eq!(rotating.calls.load(Ordering::SeqCst), 2);
    }

    #[derive(Debug)]
    struct NoCredentials;

    impl ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no credentials in the environment",
            )))
        }
    }

    #[tokio::test]
    async fn missing_credentials_fail_the_exchange_clearly() {
        let provider = SigV4AuthProvider::new(REGION, NoCredentials);
        let (_, mut session) = provider
            .start_authentication_session(KEYSPACES_AUTHENTICATOR)
            .await
            .unwrap();
        let err = session
            .evaluate_challenge(Some(format!("nonce={NONCE}").as_bytes()))
            .await
            .unwrap_err();
        assert!(err.contains("cannot resolve AWS credentials"), "{err}");
        assert!(err.contains("no credentials in the environment"), "{err}");
    }

    #[test]
    fn from_sdk_config_needs_a_region_and_credentials() {
        let empty = aws_config::SdkConfig::builder().build();
        assert_eq!(
            SigV4AuthProvider::from_sdk_config(&empty).unwrap_err(),
            SigV4Error::MissingRegion
        );
        let region_only = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        assert_eq!(
            SigV4AuthProvider::from_sdk_config(&region_only).unwrap_err(),
            SigV4Error::MissingCredentialsProvider
        );
        let full = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(credentials(None)),
            )
            .build();
        assert_eq!(
            SigV4AuthProvider::from_sdk_config(&full).unwrap().region(),
            "eu-west-1"
        );
    }

    // A fake Amazon Keyspaces node: just enough of native protocol v4 to authenticate.

    const OP_ERROR: u8 = 0x00;
    const OP_STARTUP: u8 = 0x01;
    const OP_AUTHENTICATE: u8 = 0x03;
    const OP_OPTIONS: u8 = 0x05;
    const OP_SUPPORTED: u8 = 0x06;
    const OP_AUTH_CHALLENGE: u8 = 0x0E;
    const OP_AUTH_RESPONSE: u8 = 0x0F;
    const OP_AUTH_SUCCESS: u8 = 0x10;

    async fn read_frame(socket: &mut TcpStream) -> std::io::Result<(i16, u8, Vec<u8>)> {
        let mut header = [0u8; 9];
        socket.read_exact(&mut header).await?;
        if header[0] != 0x04 {
            return Err(std::io::Error::other(format!("version {:#x}", header[0])));
        }
        let stream = i16::from_be_bytes([header[2], header[3]]);
        let length = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let mut body = vec![0; length as usize];
        socket.read_exact(&mut body).await?;
        Ok((stream, header[4], body))
    }

    async fn write_frame(
        socket: &mut TcpStream,
        stream: i16,
        opcode: u8,
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut frame = vec![0x84, 0];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.push(opcode);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        socket.write_all(&frame).await
    }

    fn cql_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn cql_bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
        out.extend_from_slice(b);
    }

    /// The `[bytes]` body of an AUTH_RESPONSE (`None` for null).
    fn auth_response_token(body: &[u8]) -> Result<Option<&[u8]>, String> {
        let (len, rest) = body
            .split_first_chunk::<4>()
            .ok_or("AUTH_RESPONSE body too short")?;
        match usize::try_from(i32::from_be_bytes(*len)) {
            Err(_) => Ok(None),
            Ok(n) => rest.get(..n).map(Some).ok_or("truncated".to_owned()),
        }
    }

    /// Serves one connection: `Ok(true)` once it verified an answer to its challenge, `Ok(false)`
    /// if the client left before answering, `Err` for anything wrong in the exchange.
    async fn serve(mut socket: TcpStream, creds: Credentials) -> Result<bool, String> {
        let mut nonce: Option<String> = None;
        loop {
            let Ok((stream, opcode, body)) = read_frame(&mut socket).await else {
                return Ok(false);
            };
            let io = |e: std::io::Error| e.to_string();
            match opcode {
                OP_OPTIONS => {
                    let mut supported = 1u16.to_be_bytes().to_vec();
                    cql_string(&mut supported, "CQL_VERSION");
                    supported.extend_from_slice(&1u16.to_be_bytes());
                    cql_string(&mut supported, "3.4.4");
                    write_frame(&mut socket, stream, OP_SUPPORTED, &supported)
                        .await
                        .map_err(io)?;
                }
                OP_STARTUP => {
                    let mut authenticate = Vec::new();
                    cql_string(&mut authenticate, KEYSPACES_AUTHENTICATOR);
                    write_frame(&mut socket, stream, OP_AUTHENTICATE, &authenticate)
                        .await
                        .map_err(io)?;
                }
                OP_AUTH_RESPONSE => {
                    let token = auth_response_token(&body)?;
                    match &nonce {
                        None => {
                            if token != Some(INITIAL_RESPONSE) {
                                return Err(format!("initial response {token:?}"));
                            }
                            let fresh = random_nonce();
                            let mut challenge = Vec::new();
                            cql_bytes(&mut challenge, format!("nonce={fresh}").as_bytes());
                            write_frame(&mut socket, stream, OP_AUTH_CHALLENGE, &challenge)
                                .await
                                .map_err(io)?;
                            nonce = Some(fresh);
                        }
                        Some(nonce) => {
                            let token = token.ok_or("null answer to the challenge")?;
                            if let Err(e) = verify_response(token, nonce, REGION, &creds) {
                                let mut error = 0x0100i32.to_be_bytes().to_vec();
                                cql_string(&mut error, "Authentication failure");
                                let _ = write_frame(&mut socket, stream, OP_ERROR, &error).await;
                                return Err(e);
                            }
                            let null = (-1i32).to_be_bytes();
                            write_frame(&mut socket, stream, OP_AUTH_SUCCESS, &null)
                                .await
                                .map_err(io)?;
                            // Authenticated: this fake serves nothing more.
                            return Ok(true);
                        }
                    }
                }
                other => return Err(format!("unexpected opcode {other:#04x} before auth")),
            }
        }
    }

    #[tokio::test]
    async fn session_builder_authenticates_against_a_fake_keyspaces_node() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let creds = credentials(Some("session-token-for-the-fake-node"));
        let (reports, mut seen) = mpsc::unbounded_channel();
        let server_creds = creds.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let reports = reports.clone();
                let creds = server_creds.clone();
                tokio::spawn(async move {
                    let _ = reports.send(serve(socket, creds).await);
                });
            }
        });

        let provider = SigV4AuthProvider::new(REGION, creds);
        let builder = SessionBuilder::new()
            .known_node(addr.to_string())
            .connection_timeout(Duration::from_secs(5))
            .fetch_schema_metadata(false)
            .authenticator_provider(Arc::new(provider));
        // The fake closes every connection once authenticated, so the session cannot be built.
        let built = tokio::time::timeout(Duration::from_secs(30), builder.build()).await;
        assert!(
            !matches!(built, Ok(Ok(_))),
            "the fake node serves no queries"
        );

        let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the driver connected to the fake node")
            .expect("a report");
        assert_eq!(first, Ok(true), "the fake node verified the exchange");
        while let Ok(report) = seen.try_recv() {
            assert!(report.is_ok(), "every exchange verifies: {report:?}");
        }
        server.abort();
    }
}
