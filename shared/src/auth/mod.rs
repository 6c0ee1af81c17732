//! Bearer-token authentication: verifies asymmetric JWTs against configured public keys and
//! turns them into a [`Principal`].
//!
//! `config` reads where the keys come from, `keys` parses and checks them, `verify` checks tokens
//! and `cache` keeps the ones it verified; with the `dev` feature, `dev` mints tokens with the
//! committed development key.

mod cache;
mod config;
#[cfg(feature = "dev")]
mod dev;
mod keys;
#[cfg(test)]
mod test_support;
mod verify;

pub use config::{
    AuthConfig, DEFAULT_LEEWAY_SECS, DEFAULT_TOKEN_CACHE_SIZE, DEFAULT_TOKEN_CACHE_TTL_SECS,
    MAX_LEEWAY_SECS, MAX_TOKEN_CACHE_TTL_SECS,
};
#[cfg(feature = "dev")]
pub use dev::{mint_token, MintError, DEV_KEY_ID, DEV_PRIVATE_KEY_PEM, DEV_PUBLIC_KEY_PEM};
pub use verify::{AuthError, Principal, Verifier, ADMIN_SCOPE};
