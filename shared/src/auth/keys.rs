//! Verification keys: PEM and JWKS parsing, and the checks that refuse unusable keys at start-up.

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Smallest RSA modulus accepted for verification keys.
const MIN_RSA_BITS: usize = 2048;
const RSA_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// A checked public key, with the algorithms it may verify and its key id, if any.
#[derive(Debug)]
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerificationKey {
    /// Keys without a kid (e.g. from a PEM file) are candidates for any token; otherwise kids must agree.
    pub(crate) fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.algorithms.contains(&alg)
            && match (self.kid.as_deref(), kid) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            }
    }
}

/// One public key from PEM text; the error says why it is unusable.
pub(crate) fn key_from_pem(pem: &str) -> Result<VerificationKey, String> {
    let label = single_pem_label(pem)?;
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!(
            "expected a PUBLIC KEY or RSA PUBLIC KEY block, found {label}"
        ));
    }
    let bytes = pem.as_bytes();
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let alg = key
            .try_get_as_bytes()
            .ok()
            .and_then(ec_algorithm)
            .ok_or_else(|| "EC key is neither P-256 nor P-384".to_owned())?;
        (key, vec![alg])
    } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        (key, vec![Algorithm::EdDSA])
    } else if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        (key, RSA_ALGORITHMS.to_vec())
    } else {
        return Err("not an RSA, EC P-256/P-384 or Ed25519 public key".to_owned());
    };
    check_key(&key, algorithms[0])?;
    Ok(VerificationKey {
        kid: None,
        algorithms,
        key,
    })
}

/// The signature verification keys of a JWKS document; an error if there is none.
pub(crate) fn keys_from_jwks(json: &str) -> Result<Vec<VerificationKey>, String> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|err| format!("not a JWKS document: {err}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key #{index}"),
        };
        match key_from_jwk(jwk) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {
                tracing::debug!(key = %name, "skipping JWKS key not usable for token signatures");
            }
            Err(reason) => return Err(format!("{name}: {reason}")),
        }
    }
    if keys.is_empty() {
        return Err("contains no usable signature verification key".to_owned());
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
pub(crate) fn single_pem_label(text: &str) -> Result<&str, String> {
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

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    use serde_json::{json, Value};

    use super::super::test_support::*;
    use super::super::{AuthConfig, Verifier};

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
            assert_eq!(
                Verifier::new(&cfg).unwrap_err().variable,
                "FEEDS_JWT_PUBLIC_KEY_FILE or FEEDS_JWT_PUBLIC_KEY",
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
            assert_eq!(
                Verifier::new(&cfg).unwrap_err().variable,
                "FEEDS_JWKS_FILE or FEEDS_JWKS",
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
}
