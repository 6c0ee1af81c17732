//! Bearer-token authentication: verifies asymmetric JWTs against configured public keys and
//! turns them into a [`Principal`].

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Scope that marks a token as a service principal allowed to act for any user.
pub const ADMIN_SCOPE: &str = "feeds:admin";
/// Key id under which the development key is published in `etc/dev-keys/dev-jwks.json`.
pub const DEV_KEY_ID: &str = "dev-1";
/// The committed development private key (ES256). Anyone can read it: never trust it in production.
pub const DEV_PRIVATE_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-private.pem");
/// The committed development public key, used when no key is configured.
pub const DEV_PUBLIC_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-public.pem");
/// Clock leeway applied to `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Upper bound for the leeway: a larger one would make expiry meaningless.
pub const MAX_LEEWAY_SECS: u64 = 300;

const ENV_PUBLIC_KEY_FILE: &str = "FEEDS_JWT_PUBLIC_KEY_FILE";
const ENV_PUBLIC_KEY: &str = "FEEDS_JWT_PUBLIC_KEY";
const ENV_JWKS_FILE: &str = "FEEDS_JWKS_FILE";
const ENV_JWKS: &str = "FEEDS_JWKS";
const ENV_ISSUER: &str = "FEEDS_JWT_ISSUER";
const ENV_AUDIENCE: &str = "FEEDS_JWT_AUDIENCE";
const ENV_LEEWAY: &str = "FEEDS_JWT_LEEWAY_SECS";

/// Tokens longer than this are refused before any decoding work.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Smallest RSA modulus accepted for verification keys.
const MIN_RSA_BITS: usize = 2048;
const RSA_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub` claim.
    pub sub: String,
    /// Whether the token carries the [`ADMIN_SCOPE`] scope.
    pub admin: bool,
}

impl Principal {
    /// Whether this principal may read or write on behalf of `user`.
    pub fn may_act_for(&self, user: &str) -> bool {
        self.admin || self.sub == user
    }
}

/// Why a request was not authenticated. The HTTP layer answers every variant with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    MissingHeader,
    #[error("unsupported Authorization scheme; expected Bearer")]
    BadScheme,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0:?} is not accepted")]
    DisallowedAlgorithm(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("no configured key can verify this token")]
    UnknownKey,
    #[error("token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    #[error("token claim `{0}` has an invalid value")]
    InvalidClaim(&'static str),
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
}

impl AuthError {
    /// Stable machine-readable code for error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_authorization",
            Self::BadScheme => "unsupported_auth_scheme",
            Self::Malformed(_) => "malformed_token",
            Self::DisallowedAlgorithm(_) => "disallowed_algorithm",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::BadSignature => "invalid_signature",
            Self::UnknownKey => "unknown_key",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::WrongIssuer => "invalid_issuer",
            Self::WrongAudience => "invalid_audience",
        }
    }
}

/// Why the authentication configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} and {1} are both set; set only one of them")]
    Conflict(&'static str, &'static str),
    #[error("{name}: {reason}")]
    InvalidValue { name: &'static str, reason: String },
    #[error("{origin}: {reason}")]
    InvalidKey { origin: String, reason: String },
    #[error("no verification key configured: set a public key PEM or a JWKS")]
    NoKey,
}

/// Why [`mint_token`] could not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("unusable private key: {0}")]
    InvalidKey(String),
    #[error("the subject must not be empty")]
    EmptySubject,
    #[error("invalid scope {0:?}: a scope is non-empty and contains no whitespace")]
    InvalidScope(String),
    #[error("cannot sign token: {0}")]
    Signing(String),
}

/// Where verification keys come from and which claims are enforced.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// PEM text of one public key: RSA (SPKI or PKCS#1), EC P-256/P-384 or Ed25519 (SPKI).
    pub public_key_pem: Option<String>,
    /// Text of a JWKS document.
    pub jwks_json: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key_pem: None,
            jwks_json: None,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

impl AuthConfig {
    /// Reads `FEEDS_JWT_PUBLIC_KEY_FILE` (path to PEM), `FEEDS_JWT_PUBLIC_KEY` (PEM text),
    /// `FEEDS_JWKS_FILE` (path), `FEEDS_JWKS` (JSON text), `FEEDS_JWT_ISSUER`,
    /// `FEEDS_JWT_AUDIENCE` and `FEEDS_JWT_LEEWAY_SECS`. With none of the key variables set, falls
    /// back to the committed development key and logs a warning, except in Lambda, where it is an
    /// error. An empty variable counts as unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::InvalidValue {
                name,
                reason: "is not valid UTF-8".to_owned(),
            }),
        })
    }

    fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let public_key = read_source(&lookup, ENV_PUBLIC_KEY_FILE, ENV_PUBLIC_KEY)?;
        let jwks = read_source(&lookup, ENV_JWKS_FILE, ENV_JWKS)?;
        // Parsed here as well so that a bad key names the variable or file it came from.
        if let Some((pem, origin)) = &public_key {
            key_from_pem(pem, origin)?;
        }
        if let Some((json, origin)) = &jwks {
            keys_from_jwks(json, origin)?;
        }
        let (public_key_pem, jwks_json) = match (public_key, jwks) {
            // In Lambda a deployment without a key is refused: the development key would let
            // anyone mint tokens.
            (None, None) if lookup("AWS_LAMBDA_FUNCTION_NAME")?.is_some() => {
                return Err(ConfigError::NoKey);
            }
            (None, None) => {
                tracing::warn!(
                    "none of {ENV_PUBLIC_KEY_FILE}, {ENV_PUBLIC_KEY}, {ENV_JWKS_FILE}, {ENV_JWKS} \
                     is set: verifying tokens with the committed development key, which anyone \
                     can use to mint tokens"
                );
                (Some(DEV_PUBLIC_KEY_PEM.to_owned()), None)
            }
            (public_key, jwks) => (public_key.map(|(pem, _)| pem), jwks.map(|(json, _)| json)),
        };
        let leeway_secs = match non_empty(lookup(ENV_LEEWAY)?) {
            None => DEFAULT_LEEWAY_SECS,
            Some(text) => parse_leeway(&text).ok_or_else(|| ConfigError::InvalidValue {
                name: ENV_LEEWAY,
                reason: format!("expected whole seconds from 0 to {MAX_LEEWAY_SECS}, got {text:?}"),
            })?,
        };
        Ok(Self {
            public_key_pem,
            jwks_json,
            issuer: non_empty(lookup(ENV_ISSUER)?),
            audience: non_empty(lookup(ENV_AUDIENCE)?),
            leeway_secs,
        })
    }
}

/// Reads a value given either as a file path or inline, with a description of where it came from.
fn read_source(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    file_var: &'static str,
    text_var: &'static str,
) -> Result<Option<(String, String)>, ConfigError> {
    // Empty counts as unset: CloudFormation passes an unused parameter as "".
    let set = |name| -> Result<Option<String>, ConfigError> {
        Ok(lookup(name)?.filter(|v| !v.trim().is_empty()))
    };
    match (set(file_var)?, set(text_var)?) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict(file_var, text_var)),
        (Some(path), None) => {
            let path = path.trim();
            let origin = format!("{file_var} ({path})");
            match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some((text, origin))),
                Err(source) => Err(ConfigError::Read { origin, source }),
            }
        }
        (None, Some(text)) => Ok(Some((text, text_var.to_owned()))),
        (None, None) => Ok(None),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn parse_leeway(text: &str) -> Option<u64> {
    text.trim()
        .parse()
        .ok()
        .filter(|secs| *secs <= MAX_LEEWAY_SECS)
}

/// Verifies bearer tokens. Built once at start-up; cloning is cheap.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

#[derive(Debug)]
struct VerifierInner {
    keys: Vec<VerificationKey>,
    /// Claim rules shared by all tokens; `algorithms` is set per token.
    validation: Validation,
}

#[derive(Debug)]
struct VerificationKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerificationKey {
    /// Keys without a kid (e.g. from a PEM file) are candidates for any token; otherwise kids must agree.
    fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (self.kid.as_deref(), kid) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            }
    }
}

impl Verifier {
    /// Loads and checks every configured key; fails if none is usable.
    pub fn new(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(pem) = &cfg.public_key_pem {
            keys.push(key_from_pem(pem, "public key PEM")?);
        }
        if let Some(json) = &cfg.jwks_json {
            keys.extend(keys_from_jwks(json, "JWKS")?);
        }
        if keys.is_empty() {
            return Err(ConfigError::NoKey);
        }
        if cfg.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::InvalidValue {
                name: "leeway_secs",
                reason: format!("must be at most {MAX_LEEWAY_SECS}"),
            });
        }

        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = cfg.leeway_secs;
        validation.validate_nbf = true;
        // jsonwebtoken skips the iss/aud checks when the claim is absent, so configured ones are required.
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &cfg.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            inner: Arc::new(VerifierInner { keys, validation }),
        })
    }

    /// Authenticates a request from its raw `Authorization` header value, if any.
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .ok_or(AuthError::MissingHeader)?;
        let (scheme, token) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        // `JWT` is the legacy scheme some older clients still send.
        if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("jwt") {
            return Err(AuthError::BadScheme);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed("empty token".to_owned()));
        }
        self.verify_token(token)
    }

    /// Verifies a compact JWS token and returns its principal.
    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token is too long".to_owned()));
        }
        let header = peek_header(token)?;
        let alg = accepted_algorithm(&header.alg)
            .ok_or_else(|| AuthError::DisallowedAlgorithm(header.alg.clone()))?;
        let mut validation = self.inner.validation.clone();
        validation.algorithms = vec![alg];

        let mut outcome = AuthError::UnknownKey;
        for key in self
            .inner
            .keys
            .iter()
            .filter(|key| key.fits(alg, header.kid.as_deref()))
        {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(&data.claims),
                // Another key of the same kind may still match; claim errors are final.
                Err(err) => match auth_error(&err) {
                    AuthError::BadSignature => outcome = AuthError::BadSignature,
                    other => return Err(other),
                },
            }
        }
        Err(outcome)
    }
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Loosely typed so that jsonwebtoken's claim validation reports precise errors first.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    scope: Option<Value>,
}

fn peek_header(token: &str) -> Result<TokenHeader, AuthError> {
    let mut segments = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthError::Malformed(
            "expected three dot-separated segments".to_owned(),
        ));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url".to_owned()))?;
    serde_json::from_slice(&json)
        .map_err(|err| AuthError::Malformed(format!("header is not a JWS header: {err}")))
}

/// Only asymmetric algorithms: HMAC would let anyone holding the public key forge tokens.
fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn principal(claims: &Claims) -> Result<Principal, AuthError> {
    let sub = claims
        .sub
        .as_ref()
        .and_then(Value::as_str)
        .ok_or(AuthError::MissingClaim("sub"))?;
    if sub.trim().is_empty() {
        return Err(AuthError::InvalidClaim("sub"));
    }
    let admin = claims
        .scope
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|scopes| scopes.split_ascii_whitespace().any(|s| s == ADMIN_SCOPE));
    Ok(Principal {
        sub: sub.to_owned(),
        admin,
    })
}

fn auth_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        // Keys are checked at start-up; one that still cannot be used simply does not verify.
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim_name(claim)),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim_name(claim)),
        _ => AuthError::Malformed(err.to_string()),
    }
}

fn claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "sub" => "sub",
        "iss" => "iss",
        "aud" => "aud",
        _ => "unknown",
    }
}

fn key_from_pem(pem: &str, origin: &str) -> Result<VerificationKey, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidKey {
        origin: origin.to_owned(),
        reason,
    };
    let label = single_pem_label(pem).map_err(invalid)?;
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(invalid(format!(
            "expected a PUBLIC KEY or RSA PUBLIC KEY block, found {label}"
        )));
    }
    let bytes = pem.as_bytes();
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let alg = key
            .try_get_as_bytes()
            .ok()
            .and_then(ec_algorithm)
            .ok_or_else(|| invalid("EC key is neither P-256 nor P-384".to_owned()))?;
        (key, vec![alg])
    } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        (key, vec![Algorithm::EdDSA])
    } else if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        (key, RSA_ALGORITHMS.to_vec())
    } else {
        return Err(invalid(
            "not an RSA, EC P-256/P-384 or Ed25519 public key".to_owned(),
        ));
    };
    check_key(&key, algorithms[0]).map_err(invalid)?;
    Ok(VerificationKey {
        kid: None,
        algorithms,
        key,
    })
}

fn keys_from_jwks(json: &str, origin: &str) -> Result<Vec<VerificationKey>, ConfigError> {
    let invalid = |reason: String| ConfigError::InvalidKey {
        origin: origin.to_owned(),
        reason,
    };
    let set: JwkSet =
        serde_json::from_str(json).map_err(|err| invalid(format!("not a JWKS document: {err}")))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{index}"),
        };
        match key_from_jwk(jwk) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {
                tracing::debug!(origin, key = %name, "skipping JWKS key not usable for token signatures");
            }
            Err(reason) => return Err(invalid(format!("{name}: {reason}"))),
        }
    }
    if keys.is_empty() {
        return Err(invalid(
            "contains no usable signature verification key".to_owned(),
        ));
    }
    Ok(keys)
}

/// `Ok(None)` for keys that are not meant for, or not accepted for, verifying token signatures.
fn key_from_jwk(jwk: &Jwk) -> Result<Option<VerificationKey>, String> {
    if matches!(&jwk.common.public_key_use, Some(key_use) if *key_use != PublicKeyUse::Signature) {
        return Ok(None);
    }
    if matches!(&jwk.common.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return Ok(None);
    }
    let mut algorithms = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        match Algorithm::try_from(declared) {
            Ok(alg) if algorithms.contains(&alg) => algorithms = vec![alg],
            _ => return Ok(None),
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|err| err.to_string())?;
    check_key(&key, algorithms[0])?;
    Ok(Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    }))
}

/// Rejects key material at start-up that would otherwise only fail (or panic) at request time.
fn check_key(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    match alg.family() {
        AlgorithmFamily::Rsa => {
            let bits = rsa_modulus_bits(key)?;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus has {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            Ok(())
        }
        AlgorithmFamily::Ec => {
            let point = key.try_get_as_bytes().map_err(|err| err.to_string())?;
            if ec_algorithm(point) != Some(alg) {
                return Err(format!("EC point does not fit {alg:?}"));
            }
            probe(key, alg)
        }
        AlgorithmFamily::Ed => {
            // jsonwebtoken slices the first 32 bytes unchecked, so the length is checked first.
            let point = key.try_get_as_bytes().map_err(|err| err.to_string())?;
            if point.len() != 32 {
                return Err("Ed25519 public key must be 32 bytes".to_owned());
            }
            probe(key, alg)
        }
        AlgorithmFamily::Hmac => Err("symmetric keys are not accepted".to_owned()),
    }
}

/// Fails when jsonwebtoken cannot build a verifier from `key`, e.g. for a point off the curve.
fn probe(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    jsonwebtoken::crypto::verify("", b"", key, alg)
        .map(drop)
        .map_err(|err| format!("unusable {alg:?} key: {err}"))
}

fn ec_algorithm(point: &[u8]) -> Option<Algorithm> {
    match (point.first(), point.len()) {
        (Some(4), 65) | (Some(2 | 3), 33) => Some(Algorithm::ES256),
        (Some(4), 97) | (Some(2 | 3), 49) => Some(Algorithm::ES384),
        _ => None,
    }
}

fn rsa_modulus_bits(key: &DecodingKey) -> Result<usize, String> {
    let modulus = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => n.clone(),
        DecodingKeyKind::SecretOrDer(der) => {
            let provider = CryptoProvider::try_get_default()
                .ok_or_else(|| "no jsonwebtoken crypto provider available".to_owned())?;
            let (n, _) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|err| format!("invalid RSA public key: {err}"))?;
            n
        }
    };
    let significant = modulus
        .iter()
        .position(|byte| *byte != 0)
        .map_or(&[][..], |first| &modulus[first..]);
    Ok(significant.first().map_or(0, |top| {
        significant.len() * 8 - top.leading_zeros() as usize
    }))
}

/// The label of the only PEM block in `text`, e.g. `PUBLIC KEY`.
fn single_pem_label(text: &str) -> Result<&str, String> {
    const BEGIN: &str = "-----BEGIN ";
    let mut blocks = text.match_indices(BEGIN);
    let (start, _) = blocks
        .next()
        .ok_or_else(|| "no PEM block found".to_owned())?;
    if blocks.next().is_some() {
        return Err("expected exactly one PEM block".to_owned());
    }
    text[start + BEGIN.len()..]
        .split_once("-----")
        .map(|(label, _)| label.trim())
        .ok_or_else(|| "unterminated PEM header".to_owned())
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Mints a token for local use. The algorithm follows the key: ES256/ES384 for EC P-256/P-384,
/// `EdDSA` for Ed25519 and RS256 for RSA (PKCS#8 or PKCS#1 PEM). Tokens signed with
/// [`DEV_PRIVATE_KEY_PEM`] carry the key id [`DEV_KEY_ID`].
pub fn mint_token(
    private_key_pem: &str,
    sub: &str,
    scopes: &[&str],
    expires_at: DateTime<Utc>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    if sub.trim().is_empty() {
        return Err(MintError::EmptySubject);
    }
    if let Some(bad) = scopes
        .iter()
        .find(|scope| scope.is_empty() || scope.contains(char::is_whitespace))
    {
        return Err(MintError::InvalidScope((*bad).to_owned()));
    }
    let (key, alg) = signing_key(private_key_pem)?;
    let mut header = Header::new(alg);
    // Only the development key is published under a key id; other keys are matched by algorithm.
    if private_key_pem
        .split_whitespace()
        .eq(DEV_PRIVATE_KEY_PEM.split_whitespace())
    {
        header.kid = Some(DEV_KEY_ID.to_owned());
    }
    let claims = MintClaims {
        sub,
        exp: expires_at.timestamp(),
        iat: Utc::now().timestamp(),
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        iss: issuer,
        aud: audience,
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|err| MintError::Signing(err.to_string()))
}

fn signing_key(pem: &str) -> Result<(EncodingKey, Algorithm), MintError> {
    let label = single_pem_label(pem).map_err(MintError::InvalidKey)?;
    if label != "PRIVATE KEY" && label != "RSA PRIVATE KEY" {
        return Err(MintError::InvalidKey(format!(
            "expected a PKCS#8 PRIVATE KEY or an RSA PRIVATE KEY block, found {label}"
        )));
    }
    let bytes = pem.as_bytes();
    if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
        // The curve is not exposed; deriving the public key succeeds only for the right one.
        let alg = [Algorithm::ES256, Algorithm::ES384]
            .into_iter()
            .find(|alg| Jwk::from_encoding_key(&key, *alg).is_ok())
            .ok_or_else(|| MintError::InvalidKey("EC key is neither P-256 nor P-384".to_owned()))?;
        return Ok((key, alg));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(bytes) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
        return Ok((key, Algorithm::RS256));
    }
    Err(MintError::InvalidKey(
        "not an RSA, EC P-256/P-384 or Ed25519 private key".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    use base64::engine::general_purpose::STANDARD;
    use chrono::Duration;
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::pkcs1::EncodeRsaPublicKey;
    use serde_json::json;

    use super::*;

    const DEV_JWKS_JSON: &str = include_str!("../../../etc/dev-keys/dev-jwks.json");

    fn verifier(cfg: AuthConfig) -> Verifier {
        Verifier::new(&cfg).expect("valid test configuration")
    }

    fn pem_verifier(public_key_pem: &str) -> Verifier {
        verifier(AuthConfig {
            public_key_pem: Some(public_key_pem.to_owned()),
            ..AuthConfig::default()
        })
    }

    fn dev_verifier() -> Verifier {
        pem_verifier(DEV_PUBLIC_KEY_PEM)
    }

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    fn in_one_hour() -> DateTime<Utc> {
        Utc::now() + Duration::hours(1)
    }

    fn dev_token(sub: &str, scopes: &[&str]) -> String {
        mint_token(DEV_PRIVATE_KEY_PEM, sub, scopes, in_one_hour(), None, None).unwrap()
    }

    /// Signs arbitrary claims with the development key.
    fn sign_dev(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(DEV_PRIVATE_KEY_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    fn b64_json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
    }

    /// A fresh P-256 key pair as (PKCS#8 private PEM, SPKI public PEM).
    fn fresh_p256() -> (String, String) {
        let secret = p256::SecretKey::generate();
        let private = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (private, public)
    }

    /// A fresh Ed25519 key pair as (PKCS#8 private PEM, SPKI public PEM).
    fn fresh_ed25519() -> (String, String) {
        // Fixed RFC 8410 DER prefixes for Ed25519 PKCS#8 and SPKI.
        const PKCS8_PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        const SPKI_PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let seed = <[u8; 32]>::generate();
        let private_der = [&PKCS8_PREFIX[..], &seed].concat();
        let jwk = Jwk::from_encoding_key(&EncodingKey::from_ed_der(&private_der), Algorithm::EdDSA)
            .unwrap();
        let AlgorithmParameters::OctetKeyPair(okp) = jwk.algorithm else {
            panic!("Ed25519 JWK expected");
        };
        let public_der = [&SPKI_PREFIX[..], &URL_SAFE_NO_PAD.decode(okp.x).unwrap()].concat();
        (
            pem("PRIVATE KEY", &private_der),
            pem("PUBLIC KEY", &public_der),
        )
    }

    /// One 2048-bit RSA key per test run: generation is slow in debug builds.
    fn rsa_key() -> &'static rsa::PrivateKey {
        static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut rng = p256::elliptic_curve::common::getrandom::SysRng;
            rsa::PrivateKey::new(&mut rng, 2048).unwrap()
        })
    }

    /// A JWKS entry for `public_pem` (an EC public key) under `kid`.
    fn ec_jwk(public_pem: &str, kid: &str) -> Value {
        let key = DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
        let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::ES256)).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).unwrap()
    }

    fn jwks_verifier(keys: &[Value]) -> Verifier {
        verifier(AuthConfig {
            jwks_json: Some(json!({ "keys": keys }).to_string()),
            ..AuthConfig::default()
        })
    }

    /// Mints with `private_pem` but labels the token with `kid`.
    fn token_with_kid(private_pem: &str, kid: Option<&str>) -> String {
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        let claims = json!({ "sub": "usr_01", "exp": now() + 3600 });
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn lookup(
        vars: &[(&'static str, &str)],
    ) -> impl Fn(&'static str) -> Result<Option<String>, ConfigError> {
        let vars: HashMap<&'static str, String> = vars
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        move |name| Ok(vars.get(name).cloned())
    }

    #[test]
    fn valid_es256_token_is_accepted() {
        let token = dev_token("usr_01", &[]);
        let principal = dev_verifier()
            .verify_header(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(
            principal,
            Principal {
                sub: "usr_01".to_owned(),
                admin: false
            }
        );
    }

    #[test]
    fn admin_scope_makes_a_service_principal() {
        let token = dev_token("svc_fanout", &["feeds:read", ADMIN_SCOPE]);
        let principal = dev_verifier().verify_token(&token).unwrap();
        assert!(principal.admin);
        assert!(principal.may_act_for("usr_someone_else"));
    }

    #[test]
    fn similar_scopes_do_not_grant_admin() {
        let token = dev_token("usr_01", &["feeds:administrator", "feeds:admin:read"]);
        assert!(!dev_verifier().verify_token(&token).unwrap().admin);
        let array_scope = sign_dev(&json!({
            "sub": "usr_01", "exp": now() + 3600, "scope": [ADMIN_SCOPE]
        }));
        assert!(!dev_verifier().verify_token(&array_scope).unwrap().admin);
    }

    #[test]
    fn legacy_jwt_scheme_is_accepted() {
        let token = dev_token("usr_01", &[]);
        let principal = dev_verifier()
            .verify_header(Some(&format!("JWT {token}")))
            .unwrap();
        assert_eq!(principal.sub, "usr_01");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let token = dev_token("usr_01", &[]);
        for scheme in ["bearer", "BEARER", "BeArEr", "jwt", "Jwt"] {
            let header = format!("{scheme}  {token} ");
            assert!(
                dev_verifier().verify_header(Some(&header)).is_ok(),
                "{scheme}"
            );
        }
    }

    #[test]
    fn other_schemes_are_rejected() {
        let token = dev_token("usr_01", &[]);
        for header in [
            format!("Basic {token}"),
            token.clone(),
            format!("Token {token}"),
        ] {
            assert_eq!(
                dev_verifier().verify_header(Some(&header)),
                Err(AuthError::BadScheme)
            );
        }
    }

    #[test]
    fn missing_header_is_rejected() {
        for header in [None, Some(""), Some("   ")] {
            assert_eq!(
                dev_verifier().verify_header(header),
                Err(AuthError::MissingHeader)
            );
        }
    }

    #[test]
    fn scheme_without_token_is_rejected() {
        let err = dev_verifier().verify_header(Some("Bearer ")).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn alg_none_is_rejected() {
        let claims = json!({ "sub": "usr_01", "exp": now() + 3600 });
        for alg in ["none", "None", "NONE"] {
            let header = json!({ "alg": alg, "typ": "JWT" });
            let token = format!("{}.{}.", b64_json(&header), b64_json(&claims));
            assert_eq!(
                dev_verifier().verify_token(&token),
                Err(AuthError::DisallowedAlgorithm(alg.to_owned()))
            );
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_rejected() {
        let secret = DEV_PUBLIC_KEY_PEM.as_bytes();
        let claims = json!({ "sub": "usr_01", "exp": now() + 3600 });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        // The forgery is genuine: a verifier that trusted the header's alg would accept it.
        let naive = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_secret(secret).unwrap(),
            &Validation::new(Algorithm::HS256),
        );
        assert!(naive.is_ok());
        assert_eq!(
            dev_verifier().verify_token(&token),
            Err(AuthError::DisallowedAlgorithm("HS256".to_owned()))
        );
    }

    #[test]
    fn hmac_and_pss_algorithms_are_rejected() {
        let claims = b64_json(&json!({ "sub": "usr_01", "exp": now() + 3600 }));
        for alg in [
            "HS256", "HS384", "HS512", "PS256", "PS384", "PS512", "ES512", "",
        ] {
            let token = format!("{}.{claims}.c2ln", b64_json(&json!({ "alg": alg })));
            assert_eq!(
                dev_verifier().verify_token(&token),
                Err(AuthError::DisallowedAlgorithm(alg.to_owned()))
            );
        }
    }

    #[test]
    fn expired_token_is_rejected() {
        let expired = Utc::now() - Duration::minutes(5);
        let token = mint_token(DEV_PRIVATE_KEY_PEM, "usr_01", &[], expired, None, None).unwrap();
        assert_eq!(dev_verifier().verify_token(&token), Err(AuthError::Expired));
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let just_expired = Utc::now() - Duration::seconds(10);
        let token =
            mint_token(DEV_PRIVATE_KEY_PEM, "usr_01", &[], just_expired, None, None).unwrap();
        assert!(dev_verifier().verify_token(&token).is_ok());
        let strict = verifier(AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            leeway_secs: 0,
            ..AuthConfig::default()
        });
        assert_eq!(strict.verify_token(&token), Err(AuthError::Expired));
    }

    #[test]
    fn token_signed_by_another_key_is_rejected() {
        let (other_private, _) = fresh_p256();
        let token = mint_token(&other_private, "usr_01", &[], in_one_hour(), None, None).unwrap();
        assert_eq!(
            dev_verifier().verify_token(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let token = dev_token("usr_01", &[]);
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        signature[10] ^= 0x01;
        let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
        assert_eq!(
            dev_verifier().verify_token(&tampered),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let token = dev_token("usr_01", &[]);
        let forged = b64_json(&json!({
            "sub": "usr_01", "exp": now() + 3600, "scope": ADMIN_SCOPE
        }));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged;
        assert_eq!(
            dev_verifier().verify_token(&parts.join(".")),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn missing_sub_is_rejected() {
        let token = sign_dev(&json!({ "exp": now() + 3600 }));
        assert_eq!(
            dev_verifier().verify_token(&token),
            Err(AuthError::MissingClaim("sub"))
        );
        let numeric = sign_dev(&json!({ "sub": 42, "exp": now() + 3600 }));
        assert_eq!(
            dev_verifier().verify_token(&numeric),
            Err(AuthError::MissingClaim("sub"))
        );
    }

    #[test]
    fn empty_sub_is_rejected() {
        for sub in ["", "   "] {
            let token = sign_dev(&json!({ "sub": sub, "exp": now() + 3600 }));
            assert_eq!(
                dev_verifier().verify_token(&token),
                Err(AuthError::InvalidClaim("sub"))
            );
        }
    }

    #[test]
    fn missing_exp_is_rejected() {
        let token = sign_dev(&json!({ "sub": "usr_01" }));
        assert_eq!(
            dev_verifier().verify_token(&token),
            Err(AuthError::MissingClaim("exp"))
        );
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let valid = dev_token("usr_01", &[]);
        let (header, rest) = valid.split_once('.').unwrap();
        let (payload, _) = rest.split_once('.').unwrap();
        let cases = [
            "garbage".to_owned(),
            format!("{header}.{payload}"),
            format!("{valid}.extra"),
            format!("!!!.{payload}.c2ln"),
            format!("{}.{payload}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{header}.{payload}.not*base64"),
            sign_dev(&json!("claims that are not an object")),
            format!("{header}.{}.c2ln", "a".repeat(MAX_TOKEN_LEN)),
        ];
        for token in cases {
            let err = dev_verifier().verify_token(&token).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{token}: {err:?}");
        }
    }

    #[test]
    fn wrong_issuer_is_rejected_when_configured() {
        let verifier = verifier(AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            issuer: Some("https://auth.example".to_owned()),
            ..AuthConfig::default()
        });
        let mint = |iss| mint_token(DEV_PRIVATE_KEY_PEM, "usr_01", &[], in_one_hour(), iss, None);
        assert!(verifier
            .verify_token(&mint(Some("https://auth.example")).unwrap())
            .is_ok());
        assert_eq!(
            verifier.verify_token(&mint(Some("https://evil.example")).unwrap()),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            verifier.verify_token(&mint(None).unwrap()),
            Err(AuthError::MissingClaim("iss"))
        );
    }

    #[test]
    fn wrong_audience_is_rejected_when_configured() {
        let verifier = verifier(AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            audience: Some("feeds-api".to_owned()),
            ..AuthConfig::default()
        });
        let mint = |aud| mint_token(DEV_PRIVATE_KEY_PEM, "usr_01", &[], in_one_hour(), None, aud);
        assert!(verifier
            .verify_token(&mint(Some("feeds-api")).unwrap())
            .is_ok());
        assert_eq!(
            verifier.verify_token(&mint(Some("billing-api")).unwrap()),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            verifier.verify_token(&mint(None).unwrap()),
            Err(AuthError::MissingClaim("aud"))
        );
        let listed = sign_dev(&json!({
            "sub": "usr_01", "exp": now() + 3600, "aud": ["billing-api", "feeds-api"]
        }));
        assert!(verifier.verify_token(&listed).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_ignored_when_not_configured() {
        let token = mint_token(
            DEV_PRIVATE_KEY_PEM,
            "usr_01",
            &[],
            in_one_hour(),
            Some("https://anyone.example"),
            Some("anything"),
        )
        .unwrap();
        assert!(dev_verifier().verify_token(&token).is_ok());
    }

    #[test]
    fn future_nbf_is_rejected() {
        let token = sign_dev(&json!({
            "sub": "usr_01", "exp": now() + 3600, "nbf": now() + 600
        }));
        assert_eq!(
            dev_verifier().verify_token(&token),
            Err(AuthError::NotYetValid)
        );
        let recent = sign_dev(&json!({ "sub": "usr_01", "exp": now() + 3600, "nbf": now() }));
        assert!(dev_verifier().verify_token(&recent).is_ok());
    }

    #[test]
    fn jwks_selects_the_key_by_kid() {
        let (other_private, other_public) = fresh_p256();
        let verifier = jwks_verifier(&[
            ec_jwk(DEV_PUBLIC_KEY_PEM, DEV_KEY_ID),
            ec_jwk(&other_public, "other-1"),
        ]);
        let token = token_with_kid(&other_private, Some("other-1"));
        assert_eq!(verifier.verify_token(&token).unwrap().sub, "usr_01");
        assert!(verifier.verify_token(&dev_token("usr_01", &[])).is_ok());
        // Only the key named by the kid is tried, even if another listed key would verify.
        let mislabelled = token_with_kid(&other_private, Some(DEV_KEY_ID));
        assert_eq!(
            verifier.verify_token(&mislabelled),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn jwks_unknown_kid_is_rejected() {
        let verifier = jwks_verifier(&[ec_jwk(DEV_PUBLIC_KEY_PEM, DEV_KEY_ID)]);
        let token = token_with_kid(DEV_PRIVATE_KEY_PEM, Some("retired-7"));
        assert_eq!(verifier.verify_token(&token), Err(AuthError::UnknownKey));
    }

    #[test]
    fn jwks_token_without_kid_tries_keys_whose_algorithm_fits() {
        let (other_private, other_public) = fresh_p256();
        let verifier = jwks_verifier(&[
            ec_jwk(DEV_PUBLIC_KEY_PEM, DEV_KEY_ID),
            ec_jwk(&other_public, "other-1"),
        ]);
        assert!(verifier
            .verify_token(&token_with_kid(&other_private, None))
            .is_ok());
        let (stranger, _) = fresh_p256();
        assert_eq!(
            verifier.verify_token(&token_with_kid(&stranger, None)),
            Err(AuthError::BadSignature)
        );
        // Once a key verifies the signature, its claim errors are reported, not later keys' mismatches.
        let expired = sign_dev(&json!({ "sub": "usr_01", "exp": now() - 3600 }));
        assert_eq!(verifier.verify_token(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn committed_dev_jwks_matches_the_dev_key() {
        let verifier = verifier(AuthConfig {
            jwks_json: Some(DEV_JWKS_JSON.to_owned()),
            ..AuthConfig::default()
        });
        let token = dev_token("usr_01", &[]);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(DEV_KEY_ID));
        assert_eq!(verifier.verify_token(&token).unwrap().sub, "usr_01");
        let (other_private, _) = fresh_p256();
        let other = token_with_kid(&other_private, Some(DEV_KEY_ID));
        assert_eq!(verifier.verify_token(&other), Err(AuthError::BadSignature));
    }

    #[test]
    fn tokens_from_other_keys_carry_no_dev_kid() {
        let (other_private, _) = fresh_p256();
        let token = mint_token(&other_private, "usr_01", &[], in_one_hour(), None, None).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid, None);
    }

    #[test]
    fn rs256_token_is_verified_with_an_rsa_pem() {
        let private = rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = rsa_key().to_public_key();
        let token = mint_token(&private, "usr_01", &[], in_one_hour(), None, None).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            Algorithm::RS256
        );
        let spki = public.to_public_key_pem(LineEnding::LF).unwrap();
        let pkcs1 = public.to_pkcs1_pem(LineEnding::LF).unwrap();
        for public_pem in [spki, pkcs1] {
            assert_eq!(
                pem_verifier(&public_pem).verify_token(&token).unwrap().sub,
                "usr_01"
            );
        }
    }

    #[test]
    fn rsa_key_never_verifies_an_ec_token() {
        let public = rsa_key()
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(
            pem_verifier(&public).verify_token(&dev_token("usr_01", &[])),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn p256_key_never_verifies_other_algorithms() {
        let token = dev_token("usr_01", &[]);
        let (_, rest) = token.split_once('.').unwrap();
        for alg in ["ES384", "RS256", "EdDSA"] {
            let relabelled = format!("{}.{rest}", b64_json(&json!({ "alg": alg })));
            assert_eq!(
                dev_verifier().verify_token(&relabelled),
                Err(AuthError::UnknownKey),
                "{alg}"
            );
        }
    }

    #[test]
    fn eddsa_token_is_verified_with_an_ed25519_pem() {
        let (private, public) = fresh_ed25519();
        let token = mint_token(&private, "usr_01", &[], in_one_hour(), None, None).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().alg,
            Algorithm::EdDSA
        );
        assert_eq!(
            pem_verifier(&public).verify_token(&token).unwrap().sub,
            "usr_01"
        );
        let (_, other_public) = fresh_ed25519();
        assert_eq!(
            pem_verifier(&other_public).verify_token(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn verifier_requires_a_key() {
        assert!(matches!(
            Verifier::new(&AuthConfig::default()),
            Err(ConfigError::NoKey)
        ));
    }

    #[test]
    fn verifier_rejects_unusable_keys() {
        let small_rsa = {
            let mut rng = p256::elliptic_curve::common::getrandom::SysRng;
            let key = rsa::PrivateKey::new(&mut rng, 1024).unwrap();
            key.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        let two_keys = format!("{DEV_PUBLIC_KEY_PEM}{}", fresh_p256().1);
        for pem in [
            DEV_PRIVATE_KEY_PEM,
            "not a pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            small_rsa.as_str(),
            two_keys.as_str(),
        ] {
            let cfg = AuthConfig {
                public_key_pem: Some(pem.to_owned()),
                ..AuthConfig::default()
            };
            assert!(
                matches!(Verifier::new(&cfg), Err(ConfigError::InvalidKey { .. })),
                "{pem}"
            );
        }
    }

    #[test]
    fn verifier_rejects_jwks_without_usable_keys() {
        let hmac_only = json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0", "alg": "HS256" }] });
        let mut encryption_key = ec_jwk_fields();
        encryption_key.insert("use".to_owned(), json!("enc"));
        let encryption_only = json!({ "keys": [encryption_key] });
        let off_curve = json!({ "keys": [{
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])
        }] });
        for jwks in [hmac_only, encryption_only, off_curve, json!({ "keys": [] })] {
            let cfg = AuthConfig {
                jwks_json: Some(jwks.to_string()),
                ..AuthConfig::default()
            };
            assert!(
                matches!(Verifier::new(&cfg), Err(ConfigError::InvalidKey { .. })),
                "{jwks}"
            );
        }
    }

    /// Dev key JWK fields as a JSON object, for composing variants.
    fn ec_jwk_fields() -> serde_json::Map<String, Value> {
        match ec_jwk(DEV_PUBLIC_KEY_PEM, DEV_KEY_ID) {
            Value::Object(fields) => fields,
            other => panic!("JWK object expected, got {other}"),
        }
    }

    #[test]
    fn verifier_rejects_excessive_leeway() {
        let cfg = AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            leeway_secs: MAX_LEEWAY_SECS + 1,
            ..AuthConfig::default()
        };
        assert!(matches!(
            Verifier::new(&cfg),
            Err(ConfigError::InvalidValue { .. })
        ));
    }

    #[test]
    fn from_env_falls_back_to_the_dev_key() {
        let cfg = AuthConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(cfg.public_key_pem.as_deref(), Some(DEV_PUBLIC_KEY_PEM));
        assert_eq!(cfg.jwks_json, None);
        assert_eq!(cfg.leeway_secs, DEFAULT_LEEWAY_SECS);
        assert!(verifier(cfg)
            .verify_token(&dev_token("usr_01", &[]))
            .is_ok());
    }

    #[test]
    fn from_env_reads_keys_claims_and_leeway() {
        let path = std::env::temp_dir().join(format!("feeds-auth-test-{}.pem", std::process::id()));
        let (_, public) = fresh_p256();
        std::fs::write(&path, &public).unwrap();
        let cfg = AuthConfig::from_lookup(lookup(&[
            (ENV_PUBLIC_KEY_FILE, path.to_str().unwrap()),
            (ENV_JWKS, DEV_JWKS_JSON),
            (ENV_ISSUER, "https://auth.example"),
            (ENV_AUDIENCE, " feeds-api "),
            (ENV_LEEWAY, "5"),
        ]));
        std::fs::remove_file(&path).unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(cfg.public_key_pem.as_deref(), Some(public.as_str()));
        assert_eq!(cfg.jwks_json.as_deref(), Some(DEV_JWKS_JSON));
        assert_eq!(cfg.issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(cfg.audience.as_deref(), Some("feeds-api"));
        assert_eq!(cfg.leeway_secs, 5);
    }

    #[test]
    fn from_env_rejects_bad_settings_naming_the_variable() {
        let missing_file = "/nonexistent/feeds/key.pem";
        let cases: [(&[(&'static str, &str)], &str); 6] = [
            (
                &[
                    (ENV_PUBLIC_KEY_FILE, missing_file),
                    (ENV_PUBLIC_KEY, DEV_PUBLIC_KEY_PEM),
                ],
                "FEEDS_JWT_PUBLIC_KEY_FILE and FEEDS_JWT_PUBLIC_KEY are both set",
            ),
            (
                &[(ENV_PUBLIC_KEY_FILE, missing_file)],
                "cannot read FEEDS_JWT_PUBLIC_KEY_FILE (/nonexistent/feeds/key.pem)",
            ),
            (
                &[(ENV_PUBLIC_KEY, "  "), ("AWS_LAMBDA_FUNCTION_NAME", "follow")],
                "no verification key configured",
            ),
            (
                &[(ENV_PUBLIC_KEY, DEV_PRIVATE_KEY_PEM)],
                "FEEDS_JWT_PUBLIC_KEY: expected a PUBLIC KEY or RSA PUBLIC KEY block, found PRIVATE KEY",
            ),
            (
                &[(ENV_JWKS, "{\"keys\": 3}")],
                "FEEDS_JWKS: not a JWKS document",
            ),
            (
                &[(ENV_LEEWAY, "3600")],
                "FEEDS_JWT_LEEWAY_SECS: expected whole seconds",
            ),
        ];
        for (vars, message) in cases {
            let err = AuthConfig::from_lookup(lookup(vars)).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }

    #[test]
    fn mint_token_rejects_bad_input() {
        let mint = |key, sub, scopes: &[&str]| {
            mint_token(key, sub, scopes, in_one_hour(), None, None).unwrap_err()
        };
        assert!(matches!(
            mint(DEV_PRIVATE_KEY_PEM, " ", &[]),
            MintError::EmptySubject
        ));
        assert!(matches!(
            mint(DEV_PRIVATE_KEY_PEM, "usr_01", &["feeds:admin feeds:read"]),
            MintError::InvalidScope(_)
        ));
        assert!(matches!(
            mint(DEV_PUBLIC_KEY_PEM, "usr_01", &[]),
            MintError::InvalidKey(_)
        ));
    }

    #[test]
    fn may_act_for_self_or_as_admin_only() {
        let user = Principal {
            sub: "usr_01".to_owned(),
            admin: false,
        };
        assert!(user.may_act_for("usr_01"));
        assert!(!user.may_act_for("usr_02"));
        let service = Principal {
            sub: "svc".to_owned(),
            admin: true,
        };
        assert!(service.may_act_for("usr_02"));
    }

    #[test]
    fn error_codes_are_distinct() {
        let errors = [
            AuthError::MissingHeader,
            AuthError::BadScheme,
            AuthError::Malformed(String::new()),
            AuthError::DisallowedAlgorithm(String::new()),
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::UnknownKey,
            AuthError::MissingClaim("sub"),
            AuthError::InvalidClaim("sub"),
            AuthError::WrongIssuer,
            AuthError::WrongAudience,
        ];
        let codes: HashSet<&str> = errors.iter().map(AuthError::code).collect();
        assert_eq!(codes.len(), errors.len());
    }

    #[test]
    fn verifier_is_shareable_across_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Verifier>();
    }
}
