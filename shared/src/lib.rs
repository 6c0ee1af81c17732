//! Activity feeds: the model, authentication, the stores and the queue, fan-out on write, and the
//! HTTP API shared by the Lambda functions and the standalone server.

pub mod aggregate;
pub mod auth;
pub mod config;
pub mod cursor;
pub mod error;
pub mod fanout;
pub mod http;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod model;
pub mod queue;
pub mod settings;
pub mod store;

/// The error of entry points and tools that only report what went wrong.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
