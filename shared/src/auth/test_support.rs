//! Keys, tokens and verifiers for the unit tests; tokens are signed with jsonwebtoken directly, so
//! that verification is tested with and without the `dev` feature.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::Utc;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};

use super::{AuthConfig, Verifier};

#[cfg(feature = "dev")]
pub(crate) use super::dev::{DEV_KEY_ID, DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM};
#[cfg(not(feature = "dev"))]
pub(crate) const DEV_KEY_ID: &str = "dev-1";
#[cfg(not(feature = "dev"))]
pub(crate) const DEV_PRIVATE_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-private.pem");
#[cfg(not(feature = "dev"))]
pub(crate) const DEV_PUBLIC_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-public.pem");
pub(crate) const DEV_JWKS_JSON: &str = include_str!("../../../etc/dev-keys/dev-jwks.json");

pub(crate) fn verifier(cfg: AuthConfig) -> Verifier {
    Verifier::new(&cfg).expect("valid test configuration")
}

pub(crate) fn pem_verifier(public_key_pem: &str) -> Verifier {
    verifier(AuthConfig {
        public_key_pem: Some(public_key_pem.to_owned()),
        ..AuthConfig::default()
    })
}

pub(crate) fn dev_verifier() -> Verifier {
    pem_verifier(DEV_PUBLIC_KEY_PEM)
}

pub(crate) fn jwks_verifier(keys: &[Value]) -> Verifier {
    verifier(AuthConfig {
        jwks_json: Some(json!({ "keys": keys }).to_string()),
        ..AuthConfig::default()
    })
}

pub(crate) fn now() -> i64 {
    Utc::now().timestamp()
}

/// Signs `claims` (ES256) with an EC private key, labelled with `kid`.
pub(crate) fn sign(private_pem: &str, kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Signs arbitrary claims with the development key.
pub(crate) fn sign_dev(claims: &Value) -> String {
    sign(DEV_PRIVATE_KEY_PEM, None, claims)
}

/// A token valid for an hour, shaped as the development tokens are: the dev key id, `scope` joined.
pub(crate) fn dev_token(sub: &str, scopes: &[&str]) -> String {
    let mut claims = json!({ "sub": sub, "exp": now() + 3600, "iat": now() });
    if !scopes.is_empty() {
        claims["scope"] = json!(scopes.join(" "));
    }
    sign(DEV_PRIVATE_KEY_PEM, Some(DEV_KEY_ID), &claims)
}

/// Signs with `private_pem` but labels the token with `kid`.
pub(crate) fn token_with_kid(private_pem: &str, kid: Option<&str>) -> String {
    sign(
        private_pem,
        kid,
        &json!({ "sub": "usr_01", "exp": now() + 3600 }),
    )
}

pub(crate) fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A fresh P-256 key pair as (PKCS#8 private PEM, SPKI public PEM).
pub(crate) fn fresh_p256() -> (String, String) {
    use p256::elliptic_curve::Generate;
    let secret = p256::SecretKey::generate();
    let private = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = secret
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (private, public)
}

/// One 2048-bit RSA key per test run: generation is slow in debug builds.
pub(crate) fn rsa_key() -> &'static rsa::PrivateKey {
    static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut rng = p256::elliptic_curve::common::getrandom::SysRng;
        rsa::PrivateKey::new(&mut rng, 2048).unwrap()
    })
}

/// A JWKS entry for `public_pem` (an EC public key) under `kid`.
pub(crate) fn ec_jwk(public_pem: &str, kid: &str) -> Value {
    let key = DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap();
    let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::ES256)).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}
