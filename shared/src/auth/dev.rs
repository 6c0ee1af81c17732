//! Development tokens: minting, and the committed development key pair. Built only with the `dev`
//! feature, so that the Lambda functions ship neither the minting code nor the committed key.

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::keys::single_pem_label;

/// Key id under which the development key is published in `etc/dev-keys/dev-jwks.json`.
pub const DEV_KEY_ID: &str = "dev-1";
/// The committed development private key (ES256). Anyone can read it: never trust it in production.
pub const DEV_PRIVATE_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-private.pem");
/// The committed development public key, used when no key is configured.
pub const DEV_PUBLIC_KEY_PEM: &str = include_str!("../../../etc/dev-keys/dev-public.pem");
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
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use chrono::Duration;
    use jsonwebtoken::jwk::AlgorithmParameters;
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::pkcs1::EncodeRsaPublicKey;

    use super::super::test_support::*;
    use super::super::{AuthConfig, AuthError, Principal, ADMIN_SCOPE};
    use super::*;

    fn in_one_hour() -> DateTime<Utc> {
        Utc::now() + Duration::hours(1)
    }

    /// A development token as `mint-token` makes it.
    fn minted(sub: &str, scopes: &[&str]) -> String {
        mint_token(DEV_PRIVATE_KEY_PEM, sub, scopes, in_one_hour(), None, None).unwrap()
    }

    #[test]
    fn committed_dev_jwks_matches_the_dev_key() {
        let verifier = verifier(AuthConfig {
            jwks_json: Some(DEV_JWKS_JSON.to_owned()),
            ..AuthConfig::default()
        });
        let token = minted("usr_01", &[]);
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
    fn minted_tokens_carry_scopes_issuer_audience_and_expiry() {
        let verifier = verifier(AuthConfig {
            public_key_pem: Some(DEV_PUBLIC_KEY_PEM.to_owned()),
            issuer: Some("https://auth.example".to_owned()),
            audience: Some("feeds-api".to_owned()),
            ..AuthConfig::default()
        });
        let (iss, aud) = (Some("https://auth.example"), Some("feeds-api"));
        let mint = |scopes: &[&str], exp| {
            mint_token(DEV_PRIVATE_KEY_PEM, "svc_fanout", scopes, exp, iss, aud).unwrap()
        };
        let admin = mint(&["feeds:read", ADMIN_SCOPE], in_one_hour());
        assert_eq!(
            verifier.verify_token(&admin),
            Ok(Principal {
                sub: "svc_fanout".to_owned(),
                admin: true
            })
        );
        assert!(
            !verifier
                .verify_token(&mint(&[], in_one_hour()))
                .unwrap()
                .admin
        );
        let expired = Utc::now() - Duration::minutes(5);
        assert_eq!(
            verifier.verify_token(&mint(&[], expired)),
            Err(AuthError::Expired)
        );
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
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
}
