//! What the benchmark shares with the project's tests: a Lambda Runtime API to start the function
//! binaries against.

pub mod runtime_api;
