//! Activity feeds: the model, authentication, the stores and the queue, fan-out on write, the
//! application service, and the HTTP API shared by the Lambda functions and the standalone server.
//!
//! # Layout
//!
//! From the core out; a module may use the ones above it, never one below.
//!
//! - [`settings`]: the one reader of environment variables and its [`settings::SettingsError`].
//! - [`model`]: activities, follow edges, ids, times and their validation
//!   ([`model::ValidationError`]). Uses nothing else of the crate.
//! - [`cursor`]: opaque, integrity-protected pagination cursors.
//! - [`trace`]: the trace context of the work under way (W3C `traceparent`, the X-Ray header, a
//!   request id), which every message a request causes carries on. Uses nothing else of the crate.
//! - [`metrics`]: metrics as CloudWatch embedded metric format lines. Uses `settings`, `trace`.
//! - [`auth`]: token verification ([`auth::Verifier`], [`auth::Principal`]) and its settings;
//!   development token minting behind the `dev` feature.
//! - [`store`]: the [`store::Store`] interface and its implementations, SQLite and Cassandra /
//!   Amazon Keyspaces (with its TLS, SigV4 and migration). Uses `model`, `settings`.
//! - [`queue`]: the fan-out queue's messages ([`queue::FanoutJob`]), its sending
//!   ([`queue::Queue`]) and receiving ([`queue::Consumer`]) interfaces, the embedded queue and SQS;
//!   each message carries the trace of the work that sent it. Uses `store` (the embedded queue
//!   lives in the SQLite file), `settings`, `trace`.
//! - [`aggregate`]: aggregated feeds. Uses `model`, `store`.
//! - [`limits`]: rate limits per principal for the whole deployment, counted in the store. Uses
//!   `store`.
//! - [`notify`]: notification feeds (a timeline per user under its own key, grouped by verb,
//!   object and day) and their unseen and unread groups. Uses `model`, `store`, `aggregate`.
//! - [`realtime`]: realtime messages, the connections recorded in the store, and pushing them
//!   through a [`realtime::Transport`] (API Gateway's Management API with feature `apigw`). Uses
//!   `model`, `notify`, `store`.
//! - [`fanout`]: runs fan-out jobs (pushing what they change to realtime connections) and the one
//!   in-process worker loop, each message within its trace. Uses `store`, `queue`, `aggregate`,
//!   `notify`, `realtime`, `trace`, `metrics`.
//! - [`error`]: the crate's one error for the service's operations ([`Error`]).
//! - [`service`]: each operation of the API, with its checks and the ordering (and undo) of its
//!   writes. Uses all of the above; knows no entry point.
//! - [`http`]: the axum router, extractors and thin handlers; maps every error to the contract's
//!   status and JSON body in one place ([`http::ApiError`]); runs each request within its trace
//!   and times feed reads. Uses `service`, `auth`, `cursor`, `trace`, `metrics`.
//! - [`admin`]: the operator's tools (`feeds-server admin`): counts, the repair of follow edges,
//!   the rebuild of a user's feeds. Uses `store`, `queue`, `aggregate`, `notify`, `fanout`.
//! - [`config`]: the typed [`config::Settings`], read once, and the one place the backends, the
//!   service and the HTTP app are built from them.
//! - `lambda` (feature `aws`): the Lambda entry points, the SQS event adapter (with the trace an
//!   event's attributes carry) and the WebSocket event handler of the realtime function.
//!
//! The entry points (the functions in `functions/`, the server in `server/`) depend on this crate
//! only, and share nothing else.

pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod config;
pub mod cursor;
pub mod error;
pub mod fanout;
pub mod http;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod queue;
pub mod realtime;
pub mod service;
pub mod settings;
pub mod store;
pub mod trace;
pub mod update;

pub use error::{Error, Result};

/// The error of entry points and tools, which only report it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
