//! Tokens signed with the committed development key, which the server accepts when no other key
//! is configured.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{Duration, Utc};
use feeds::auth::{mint_token, DEV_PRIVATE_KEY_PEM};
use feeds::settings::Env;

/// Panics unless the development key verifies tokens: no other key is configured.
pub fn assert_dev_key() {
    let env = Env::process();
    for name in [
        "FEEDS_JWT_PUBLIC_KEY",
        "FEEDS_JWT_PUBLIC_KEY_FILE",
        "FEEDS_JWKS",
        "FEEDS_JWKS_FILE",
    ] {
        assert!(
            matches!(env.get(name), Ok(None)),
            "{name} is set: these tests use tokens signed with the development key"
        );
    }
}

/// A token for `sub` with `scopes`, valid for `lifetime`.
pub fn mint(sub: &str, scopes: &[&str], lifetime: Duration) -> String {
    mint_token(
        DEV_PRIVATE_KEY_PEM,
        sub,
        scopes,
        Utc::now() + lifetime,
        None,
        None,
    )
    .unwrap()
}

/// A token for `sub`, valid for an hour; minted once per user (signing is slow in debug builds).
pub fn token(sub: &str) -> String {
    static TOKENS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut tokens = TOKENS.lock().unwrap();
    tokens
        .get_or_insert_with(HashMap::new)
        .entry(sub.to_owned())
        .or_insert_with(|| mint(sub, &[], Duration::hours(1)))
        .clone()
}

/// A `feeds:admin` service's token (it may act for any user), valid for an hour.
pub fn admin_token() -> String {
    mint("svc_tests", &["feeds:admin"], Duration::hours(1))
}
