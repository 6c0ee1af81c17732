//! Settings: every environment variable the service reads, read once at start-up.

mod env;

pub use env::{Env, SettingsError};
