//! Verifying bearer tokens: the `Authorization` header, the token's signature and its claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::cache::TokenCache;
use super::config::{
    no_key, AuthConfig, ENV_CACHE_TTL, ENV_JWKS, ENV_JWKS_FILE, ENV_LEEWAY, ENV_PUBLIC_KEY,
    ENV_PUBLIC_KEY_FILE, MAX_LEEWAY_SECS, MAX_TOKEN_CACHE_TTL_SECS,
};
use super::keys::{key_from_pem, keys_from_jwks, VerificationKey};
use crate::settings::SettingsError;

/// Scope that marks a token as a service principal allowed to act for any user.
pub const ADMIN_SCOPE: &str = "feeds:admin";

/// Tokens longer than this are refused before any decoding work.
const MAX_TOKEN_LEN: usize = 8 * 1024;

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
    /// Tokens these keys and rules verified; `None` when caching is off.
    cache: Option<TokenCache>,
}

impl Verifier {
    /// Loads and checks every configured key; fails if none is usable. Errors name the variables.
    pub fn new(cfg: &AuthConfig) -> Result<Self, SettingsError> {
        let mut keys = Vec::new();
        if let Some(pem) = &cfg.public_key_pem {
            keys.push(key_from_pem(pem).map_err(|reason| {
                SettingsError::new(format!("{ENV_PUBLIC_KEY_FILE} or {ENV_PUBLIC_KEY}"), reason)
            })?);
        }
        if let Some(json) = &cfg.jwks_json {
            keys.extend(keys_from_jwks(json).map_err(|reason| {
                SettingsError::new(format!("{ENV_JWKS_FILE} or {ENV_JWKS}"), reason)
            })?);
        }
        if keys.is_empty() {
            return Err(no_key());
        }
        if cfg.leeway_secs > MAX_LEEWAY_SECS {
            return Err(SettingsError::new(
                ENV_LEEWAY,
                format!("must be at most {MAX_LEEWAY_SECS}"),
            ));
        }
        if cfg.token_cache_ttl_secs > MAX_TOKEN_CACHE_TTL_SECS {
            return Err(SettingsError::new(
                ENV_CACHE_TTL,
                format!("must be at most {MAX_TOKEN_CACHE_TTL_SECS}"),
            ));
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

        let cache = TokenCache::new(
            cfg.token_cache_size,
            Duration::from_secs(cfg.token_cache_ttl_secs),
            cfg.leeway_secs,
        );
        Ok(Self {
            inner: Arc::new(VerifierInner {
                keys,
                validation,
                cache,
            }),
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

    /// Authenticates a WebSocket connection: from its `Authorization` header when it has one,
    /// else from its `?token=` query parameter.
    pub fn verify_header_or_token(
        &self,
        authorization: Option<&str>,
        token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match (authorization, token) {
            (None, Some(token)) => self.verify_token(token),
            (header, _) => self.verify_header(header),
        }
    }

    /// Verifies a compact JWS token and returns its principal. A token this verifier already
    /// verified is taken from its cache while its `exp`, `nbf` and the cache's TTL allow.
    pub fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token is too long".to_owned()));
        }
        let Some(cache) = &self.inner.cache else {
            return self.verify_signed(token).map(|(principal, _)| principal);
        };
        let (now, at) = (jsonwebtoken::get_current_timestamp(), Instant::now());
        if let Some(principal) = cache.get(token, now, at) {
            return Ok(principal);
        }
        let (principal, claims) = self.verify_signed(token)?;
        // Both are numbers once the token verified; a form not read the same way is not kept.
        if let Some(exp) = claims.exp.as_ref().and_then(numeric_date) {
            match claims.nbf.as_ref().map(numeric_date) {
                None => cache.insert(token, &principal, exp, None, at),
                Some(Some(nbf)) => cache.insert(token, &principal, exp, Some(nbf), at),
                Some(None) => {}
            }
        }
        Ok(principal)
    }

    /// Checks the token's signature and claims, and answers its principal and claims.
    fn verify_signed(&self, token: &str) -> Result<(Principal, Claims), AuthError> {
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
                Ok(data) => return Ok((principal(&data.claims)?, data.claims)),
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

#[cfg(test)]
impl Verifier {
    fn cache_len(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TokenCache::len)
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
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
}

/// `exp` or `nbf` in seconds, read as jsonwebtoken reads it: a whole number, or a fraction rounded.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < u64::MAX as f64)
            .map(|v| v.round() as u64)
    })
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use jsonwebtoken::{DecodingKey, EncodingKey, Header};
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    use serde_json::json;

    use super::super::test_support::*;
    use super::*;

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
        let token = sign_dev(&json!({ "sub": "usr_01", "exp": now() - 5 * 60 }));
        assert_eq!(dev_verifier().verify_token(&token), Err(AuthError::Expired));
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let token = sign_dev(&json!({ "sub": "usr_01", "exp": now() - 10 }));
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
        let token = token_with_kid(&other_private, None);
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
        let with_iss = |iss| sign_dev(&json!({ "sub": "usr_01", "exp": now() + 3600, "iss": iss }));
        assert!(verifier
            .verify_token(&with_iss("https://auth.example"))
            .is_ok());
        assert_eq!(
            verifier.verify_token(&with_iss("https://evil.example")),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            verifier.verify_token(&dev_token("usr_01", &[])),
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
        let with_aud = |aud| sign_dev(&json!({ "sub": "usr_01", "exp": now() + 3600, "aud": aud }));
        assert!(verifier.verify_token(&with_aud("feeds-api")).is_ok());
        assert_eq!(
            verifier.verify_token(&with_aud("billing-api")),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            verifier.verify_token(&dev_token("usr_01", &[])),
            Err(AuthError::MissingClaim("aud"))
        );
        let listed = sign_dev(&json!({
            "sub": "usr_01", "exp": now() + 3600, "aud": ["billing-api", "feeds-api"]
        }));
        assert!(verifier.verify_token(&listed).is_ok());
    }

    #[test]
    fn issuer_and_audience_are_ignored_when_not_configured() {
        let token = sign_dev(&json!({
            "sub": "usr_01", "exp": now() + 3600,
            "iss": "https://anyone.example", "aud": "anything"
        }));
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
    fn verifier_requires_a_key() {
        assert_eq!(Verifier::new(&AuthConfig::default()).unwrap_err(), no_key());
    }

    #[test]
    fn verifier_rejects_excessive_leeway() {
        let cfg = AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            leeway_secs: MAX_LEEWAY_SECS + 1,
            ..AuthConfig::default()
        };
        assert_eq!(
            Verifier::new(&cfg).unwrap_err().variable,
            "FEEDS_JWT_LEEWAY_SECS"
        );
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
    fn a_verified_token_is_cached_and_answers_the_same_principal() {
        let verifier = dev_verifier();
        let token = dev_token("svc_fanout", &[ADMIN_SCOPE]);
        let first = verifier.verify_token(&token).unwrap();
        assert_eq!(verifier.cache_len(), 1);
        assert_eq!(verifier.verify_token(&token).unwrap(), first);
        assert!(first.admin);
        assert_eq!(verifier.cache_len(), 1);
    }

    #[test]
    fn an_altered_token_is_refused_while_the_original_is_cached() {
        let verifier = dev_verifier();
        let token = dev_token("usr_01", &[]);
        assert!(verifier.verify_token(&token).is_ok());
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[10] ^= 0x01;
        let flipped = format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(
            verifier.verify_token(&flipped),
            Err(AuthError::BadSignature)
        );
        let forged = b64_json(&json!({
            "sub": "usr_01", "exp": now() + 3600, "scope": ADMIN_SCOPE
        }));
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &forged;
        assert_eq!(
            verifier.verify_token(&parts.join(".")),
            Err(AuthError::BadSignature)
        );
        let truncated = &token[..token.len() - 1];
        assert!(verifier.verify_token(truncated).is_err());
        assert!(verifier.verify_token(&format!("{token}A")).is_err());
        // Only the token that verified is kept.
        assert_eq!(verifier.cache_len(), 1);
        assert!(verifier.verify_token(&token).is_ok());
    }

    #[test]
    fn a_cached_token_is_refused_once_past_its_exp() {
        let verifier = verifier(AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            leeway_secs: 0,
            ..AuthConfig::default()
        });
        let exp = jsonwebtoken::get_current_timestamp() + 1;
        let token = sign_dev(&json!({ "sub": "usr_01", "exp": exp }));
        assert!(verifier.verify_token(&token).is_ok());
        assert_eq!(verifier.cache_len(), 1);
        while jsonwebtoken::get_current_timestamp() <= exp {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(verifier.verify_token(&token), Err(AuthError::Expired));
        assert_eq!(verifier.cache_len(), 0);
    }

    #[test]
    fn a_token_cached_by_one_key_set_is_refused_by_another() {
        let token = dev_token("usr_01", &[]);
        assert!(dev_verifier().verify_token(&token).is_ok());
        let (_, other_public) = fresh_p256();
        assert_eq!(
            pem_verifier(&other_public).verify_token(&token),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn caching_can_be_turned_off() {
        for (size, ttl) in [(0, 300), (4096, 0)] {
            let verifier = verifier(AuthConfig {
                public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
                token_cache_size: size,
                token_cache_ttl_secs: ttl,
                ..AuthConfig::default()
            });
            let token = dev_token("usr_01", &[]);
            assert!(verifier.verify_token(&token).is_ok());
            assert!(verifier.verify_token(&token).is_ok());
            assert_eq!(verifier.cache_len(), 0);
        }
    }

    #[test]
    fn verifier_rejects_an_excessive_cache_ttl() {
        let cfg = AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            token_cache_ttl_secs: MAX_TOKEN_CACHE_TTL_SECS + 1,
            ..AuthConfig::default()
        };
        assert_eq!(
            Verifier::new(&cfg).unwrap_err().variable,
            "FEEDS_JWT_CACHE_TTL_SECS"
        );
    }

    #[test]
    fn numeric_dates_are_read_as_jsonwebtoken_reads_them() {
        assert_eq!(numeric_date(&json!(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(numeric_date(&json!(1_700_000_000.5)), Some(1_700_000_001));
        assert_eq!(numeric_date(&json!(1_700_000_000.4)), Some(1_700_000_000));
        for refused in [
            json!(-1),
            json!(-0.5),
            json!("1700000000"),
            json!(null),
            json!(1e30),
        ] {
            assert_eq!(numeric_date(&refused), None, "{refused}");
        }
    }

    #[test]
    fn verifier_is_shareable_across_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Verifier>();
    }
}
