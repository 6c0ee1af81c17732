//! Where verification keys come from and which claims are enforced, read from the environment.

use super::keys::{key_from_pem, keys_from_jwks};
use crate::settings::{Env, SettingsError};

/// Clock leeway applied to `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Upper bound for the leeway: a larger one would make expiry meaningless.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Verified tokens kept for reuse unless configured otherwise.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 4096;
/// How long a verified token is reused before it is verified again, unless configured otherwise.
pub const DEFAULT_TOKEN_CACHE_TTL_SECS: u64 = 300;
/// Upper bound for the cache TTL.
pub const MAX_TOKEN_CACHE_TTL_SECS: u64 = 3600;

pub(crate) const ENV_PUBLIC_KEY_FILE: &str = "FEEDS_JWT_PUBLIC_KEY_FILE";
pub(crate) const ENV_PUBLIC_KEY: &str = "FEEDS_JWT_PUBLIC_KEY";
pub(crate) const ENV_JWKS_FILE: &str = "FEEDS_JWKS_FILE";
pub(crate) const ENV_JWKS: &str = "FEEDS_JWKS";
const ENV_ISSUER: &str = "FEEDS_JWT_ISSUER";
const ENV_AUDIENCE: &str = "FEEDS_JWT_AUDIENCE";
pub(crate) const ENV_LEEWAY: &str = "FEEDS_JWT_LEEWAY_SECS";
const ENV_CACHE_SIZE: &str = "FEEDS_JWT_CACHE_SIZE";
pub(crate) const ENV_CACHE_TTL: &str = "FEEDS_JWT_CACHE_TTL_SECS";

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
    /// Verified tokens kept so that a token seen again skips the signature check; 0: none.
    pub token_cache_size: usize,
    /// Seconds a verified token is reused before it is verified again, at most
    /// [`MAX_TOKEN_CACHE_TTL_SECS`]; 0: no reuse. `exp` and `nbf` are checked at every use.
    pub token_cache_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key_pem: None,
            jwks_json: None,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            token_cache_size: DEFAULT_TOKEN_CACHE_SIZE,
            token_cache_ttl_secs: DEFAULT_TOKEN_CACHE_TTL_SECS,
        }
    }
}

impl AuthConfig {
    /// Reads `FEEDS_JWT_PUBLIC_KEY_FILE` (path to PEM), `FEEDS_JWT_PUBLIC_KEY` (PEM text),
    /// `FEEDS_JWKS_FILE` (path), `FEEDS_JWKS` (JSON text), `FEEDS_JWT_ISSUER`,
    /// `FEEDS_JWT_AUDIENCE`, `FEEDS_JWT_LEEWAY_SECS`, `FEEDS_JWT_CACHE_SIZE` and
    /// `FEEDS_JWT_CACHE_TTL_SECS`. With none of the key variables set it is
    /// an error, except that a build with the `dev` feature falls back, outside Lambda, to the
    /// committed development key and logs a warning.
    pub fn read(env: &Env) -> Result<Self, SettingsError> {
        // Parsed here as well so that a bad key names the variable (and file) it came from.
        let public_key_pem = checked_source(env, ENV_PUBLIC_KEY_FILE, ENV_PUBLIC_KEY, |pem| {
            key_from_pem(pem).map(drop)
        })?;
        let jwks_json = checked_source(env, ENV_JWKS_FILE, ENV_JWKS, |json| {
            keys_from_jwks(json).map(drop)
        })?;
        let public_key_pem = match (public_key_pem, &jwks_json) {
            (None, None) => Some(without_key(env)?),
            (public_key_pem, _) => public_key_pem,
        };
        Ok(Self {
            public_key_pem,
            jwks_json,
            issuer: env.get(ENV_ISSUER)?,
            audience: env.get(ENV_AUDIENCE)?,
            leeway_secs: seconds_up_to(env, ENV_LEEWAY, DEFAULT_LEEWAY_SECS, MAX_LEEWAY_SECS)?,
            token_cache_size: env.parse_or(
                ENV_CACHE_SIZE,
                "a whole number of tokens",
                DEFAULT_TOKEN_CACHE_SIZE,
            )?,
            token_cache_ttl_secs: seconds_up_to(
                env,
                ENV_CACHE_TTL,
                DEFAULT_TOKEN_CACHE_TTL_SECS,
                MAX_TOKEN_CACHE_TTL_SECS,
            )?,
        })
    }
}

/// Whole seconds from 0 to `max`, or `default` when unset.
fn seconds_up_to(env: &Env, name: &str, default: u64, max: u64) -> Result<u64, SettingsError> {
    match env.get(name)? {
        None => Ok(default),
        Some(text) => text
            .parse()
            .ok()
            .filter(|secs| *secs <= max)
            .ok_or_else(|| {
                SettingsError::expected(name, &format!("whole seconds from 0 to {max}"), &text)
            }),
    }
}

/// A key source's text, refused with the variable (and file) it came from when `check` fails.
fn checked_source(
    env: &Env,
    file_var: &str,
    text_var: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Option<String>, SettingsError> {
    let Some((text, _)) = env.file_or_text(file_var, text_var)? else {
        return Ok(None);
    };
    match check(&text) {
        Ok(()) => Ok(Some(text)),
        Err(reason) => Err(match env.get(file_var)? {
            Some(path) => SettingsError::new(file_var, format!("{path}: {reason}")),
            None => SettingsError::new(text_var, reason),
        }),
    }
}

/// No key is configured: names every variable a key can be set in.
pub(crate) fn no_key() -> SettingsError {
    SettingsError::new(
        format!("{ENV_PUBLIC_KEY_FILE}, {ENV_PUBLIC_KEY}, {ENV_JWKS_FILE} or {ENV_JWKS}"),
        "no verification key configured: set a public key PEM or a JWKS",
    )
}

/// With no key configured, a development build outside Lambda verifies with the development key.
#[cfg(feature = "dev")]
fn without_key(env: &Env) -> Result<String, SettingsError> {
    // In Lambda a deployment without a key is refused: the development key would let anyone mint
    // tokens.
    if env.get("AWS_LAMBDA_FUNCTION_NAME")?.is_some() {
        return Err(no_key());
    }
    tracing::warn!(
        "none of {ENV_PUBLIC_KEY_FILE}, {ENV_PUBLIC_KEY}, {ENV_JWKS_FILE}, {ENV_JWKS} is set: \
         verifying tokens with the committed development key, which anyone can use to mint tokens"
    );
    Ok(super::dev::DEV_PUBLIC_KEY_PEM.to_owned())
}

/// Without the `dev` feature there is no development key to fall back to.
#[cfg(not(feature = "dev"))]
fn without_key(_env: &Env) -> Result<String, SettingsError> {
    Err(no_key())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    /// Nothing set: no key configured.
    fn unset() -> Env {
        Env::from_pairs::<&str, &str>([])
    }

    #[cfg(feature = "dev")]
    #[test]
    fn read_falls_back_to_the_dev_key() {
        let cfg = AuthConfig::read(&unset()).unwrap();
        assert_eq!(cfg.public_key_pem.as_deref(), Some(DEV_PUBLIC_KEY_PEM));
        assert_eq!(cfg.jwks_json, None);
        assert_eq!(cfg.leeway_secs, DEFAULT_LEEWAY_SECS);
        assert_eq!(cfg.token_cache_size, DEFAULT_TOKEN_CACHE_SIZE);
        assert_eq!(cfg.token_cache_ttl_secs, DEFAULT_TOKEN_CACHE_TTL_SECS);
        assert!(verifier(cfg)
            .verify_token(&dev_token("usr_01", &[]))
            .is_ok());
    }

    #[cfg(not(feature = "dev"))]
    #[test]
    fn read_without_a_key_is_an_error_outside_lambda_too() {
        assert_eq!(AuthConfig::read(&unset()).unwrap_err(), no_key());
    }

    #[test]
    fn read_takes_keys_claims_and_leeway() {
        let path = std::env::temp_dir().join(format!("feeds-auth-test-{}.pem", std::process::id()));
        let (_, public) = fresh_p256();
        std::fs::write(&path, &public).unwrap();
        let cfg = AuthConfig::read(&Env::from_pairs([
            (ENV_PUBLIC_KEY_FILE, path.to_str().unwrap()),
            (ENV_JWKS, DEV_JWKS_JSON),
            (ENV_ISSUER, "https://auth.example"),
            (ENV_AUDIENCE, " feeds-api "),
            (ENV_LEEWAY, "5"),
            (ENV_CACHE_SIZE, "100"),
            (ENV_CACHE_TTL, "0"),
        ]));
        std::fs::remove_file(&path).unwrap();
        let cfg = cfg.unwrap();
        assert_eq!(cfg.public_key_pem.as_deref(), Some(public.as_str()));
        // Inline values are trimmed, as every variable is.
        assert_eq!(cfg.jwks_json.as_deref(), Some(DEV_JWKS_JSON.trim()));
        assert_eq!(cfg.issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(cfg.audience.as_deref(), Some("feeds-api"));
        assert_eq!(cfg.leeway_secs, 5);
        assert_eq!(cfg.token_cache_size, 100);
        assert_eq!(cfg.token_cache_ttl_secs, 0);
    }

    #[test]
    fn read_rejects_bad_settings_naming_the_variable() {
        let missing_file = "/nonexistent/feeds/key.pem";
        let private_file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../etc/dev-keys/dev-private.pem"
        );
        let no_key_variable = no_key().variable;
        // The variables set, the variable named, and how the message begins.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, String);
        let cases: [Case; 9] = [
            (
                &[
                    (ENV_PUBLIC_KEY_FILE, missing_file),
                    (ENV_PUBLIC_KEY, DEV_PUBLIC_KEY_PEM),
                ],
                "FEEDS_JWT_PUBLIC_KEY_FILE and FEEDS_JWT_PUBLIC_KEY",
                "both are set".to_owned(),
            ),
            (
                &[(ENV_PUBLIC_KEY_FILE, missing_file)],
                "FEEDS_JWT_PUBLIC_KEY_FILE",
                "cannot read /nonexistent/feeds/key.pem".to_owned(),
            ),
            (
                &[
                    (ENV_PUBLIC_KEY, "  "),
                    ("AWS_LAMBDA_FUNCTION_NAME", "follow"),
                ],
                &no_key_variable,
                "no verification key configured".to_owned(),
            ),
            (
                &[(ENV_PUBLIC_KEY, DEV_PRIVATE_KEY_PEM)],
                "FEEDS_JWT_PUBLIC_KEY",
                "expected a PUBLIC KEY or RSA PUBLIC KEY block, found PRIVATE KEY".to_owned(),
            ),
            (
                &[(ENV_PUBLIC_KEY_FILE, private_file)],
                "FEEDS_JWT_PUBLIC_KEY_FILE",
                format!("{private_file}: expected a PUBLIC KEY or RSA PUBLIC KEY block"),
            ),
            (
                &[(ENV_JWKS, "{\"keys\": 3}")],
                "FEEDS_JWKS",
                "not a JWKS document".to_owned(),
            ),
            (
                &[(ENV_PUBLIC_KEY, DEV_PUBLIC_KEY_PEM), (ENV_LEEWAY, "3600")],
                "FEEDS_JWT_LEEWAY_SECS",
                "expected whole seconds".to_owned(),
            ),
            (
                &[(ENV_PUBLIC_KEY, DEV_PUBLIC_KEY_PEM), (ENV_CACHE_SIZE, "-1")],
                "FEEDS_JWT_CACHE_SIZE",
                "expected a whole number of tokens".to_owned(),
            ),
            (
                &[
                    (ENV_PUBLIC_KEY, DEV_PUBLIC_KEY_PEM),
                    (ENV_CACHE_TTL, "86400"),
                ],
                "FEEDS_JWT_CACHE_TTL_SECS",
                "expected whole seconds from 0 to 3600".to_owned(),
            ),
        ];
        for (vars, variable, message) in cases {
            let err = AuthConfig::read(&Env::from_pairs(vars.iter().copied())).unwrap_err();
            assert_eq!(err.variable, variable, "{err}");
            assert!(err.message.starts_with(&message), "{err}");
        }
    }
}
